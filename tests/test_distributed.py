"""Two processes on localhost (jax.distributed + gloo), 2 CPU devices each,
train exactly as one process with 4 devices: each process feeds its own half
of every batch, and the checkpoint they write together resumes."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

from lmjax.data import bert_examples

from conftest import replace

REPO = Path(__file__).parent.parent


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _recipe(cfg, path: Path) -> str:
  path.write_text(
      "import json\nfrom lmjax.config import Config\n\n\n"
      f"def get_config(arg=None):\n  return Config.from_dict(json.loads({json.dumps(json.dumps(cfg.to_dict()))}))\n")
  return str(path)


def _env(devices: int) -> dict:
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["JAX_PLATFORMS"] = "cpu"
  return env


def _losses(workdir: Path) -> list[float]:
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  return [r["loss"] for r in map(json.loads, lines) if r["split"] == "train"]


def _single_and_two_processes(cfg, tmp_path: Path) -> tuple[Path, Path]:
  """Runs `cfg` through train.py as one process with 4 devices and as two processes with 2 each."""
  recipe = _recipe(cfg, tmp_path / "recipe.py")
  single = tmp_path / "single"
  one = subprocess.run([sys.executable, "train.py", "--config", recipe, "--workdir", str(single)],
                       cwd=REPO, env=_env(4), capture_output=True, text=True, timeout=300)
  assert one.returncode == 0, one.stderr[-3000:]

  multi = tmp_path / "multi"
  port = _free_port()
  procs = [subprocess.Popen(
      [sys.executable, "train.py", "--config", recipe, "--workdir", str(multi),
       "--set", "mesh.distributed=true", "--set", f"mesh.coordinator_address=127.0.0.1:{port}",
       "--set", "mesh.num_processes=2", "--set", f"mesh.process_id={i}"],
      cwd=REPO, env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
  outs = []
  try:
    for p in procs:
      outs.append(p.communicate(timeout=300))
  finally:
    for p in procs:
      p.kill()
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  return single, multi


def test_two_processes_equal_one(tiny_cfg, tmp_path):
  # Two corpus parts: each process tokenizes and reads its own, and one process reading both has the same stream.
  cfg = replace(tiny_cfg, train=dict(steps=4, eval_every=2), checkpoint=dict(every=2, async_save=False),
                logging=dict(tensorboard=False), data=dict(shards=2))
  # Prepare corpus and tokenizer once, as a shared cache would hold them.
  bert_examples.pretraining_examples(cfg, tmp_path / "prep")
  single, multi = _single_and_two_processes(cfg, tmp_path)
  np.testing.assert_allclose(_losses(multi), _losses(single), rtol=1e-5)
  assert sorted(d.name for d in (multi / "checkpoints").iterdir() if d.name.isdigit()) == ["2", "4"]


def test_two_processes_evaluate_seq2seq_by_decoding_as_one(tmp_path, cache_dir):
  """A seq2seq run's evaluation decodes the validation split with its parameters split over both
  processes' devices: the same losses, scores and test report as one process."""
  from test_seq2seq import _write_pairs  # noqa: PLC0415

  from lmjax.config import (CheckpointConfig, Config, DataConfig, DecodeConfig, LoggingConfig,  # noqa: PLC0415
                            MeshConfig, TrainConfig)
  from lmjax.models.t5 import T5Config  # noqa: PLC0415
  files = {name: _write_pairs(tmp_path / f"{name}.tsv", n, seed)
           for name, n, seed in (("train", 120, 0), ("validation", 12, 1), ("test", 12, 2))}
  cfg = Config(
      model=T5Config.preset("t5-tiny", dropout_rate=0.0),
      data=DataConfig(dataset="pair_files", train_file=str(files["train"]), validation_file=str(files["validation"]),
                      test_file=str(files["test"]), input_column="src", target_column="tgt",
                      cache_dir=str(cache_dir), max_seq_len=32, max_target_len=16),
      train=TrainConfig(objective="seq2seq", steps=4, batch_size=8, learning_rate=3e-3, warmup_steps=1,
                        eval_every=2, eval_batches=1),
      mesh=MeshConfig(data=-1, tensor=2),
      checkpoint=CheckpointConfig(every=2, async_save=False),
      decode=DecodeConfig(num_beams=2, max_new_tokens=6, batch_size=8),
      logging=LoggingConfig(every=1, tensorboard=False, progress_bar=False))
  single, multi = _single_and_two_processes(cfg, tmp_path)

  def records(workdir):
    keep = ("loss", "exact_match", "bleu", "chrf", "examples")
    return [{k: r[k] for k in keep if k in r} | {"split": r["split"], "step": r["step"]}
            for r in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())]
  one, two = records(single), records(multi)
  assert [r["split"] for r in two] == [r["split"] for r in one] and one[-1]["split"] == "test"
  for a, b in zip(one, two):
    assert a.keys() == b.keys() and a["step"] == b["step"]
    for k in a:
      if isinstance(a[k], float):
        np.testing.assert_allclose(b[k], a[k], rtol=1e-4, atol=1e-6)
      else:
        assert a[k] == b[k]
