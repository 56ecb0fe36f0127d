"""T5 family: parity with transformers' T5ForConditionalGeneration (T5 and T5.1.1),
relative position buckets, import / export, FLOPs, presets."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from lmjax import models
from lmjax.convert import t5 as convert
from lmjax.convert.common import merge_into
from lmjax.errors import LmjaxError
from lmjax.generate import Generator, Sampling
from lmjax.models import t5
from lmjax.models.family import Workload

from conftest import assert_logical_axes_known

FLAVOURS = {
    "t5": dict(feed_forward_proj="relu", tie_word_embeddings=True),
    "t5.1.1": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False),
}


def _hf_config(flavour):
  # heads * d_kv (3 x 8 = 24) differs from d_model (32), as in T5.1.1 small
  return dict(model_type="t5", vocab_size=97, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=3,
              num_heads=3, relative_attention_num_buckets=8, relative_attention_max_distance=20,
              layer_norm_epsilon=1e-6, dropout_rate=0.0, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
              **FLAVOURS[flavour])


def _hf_model(flavour, tmp_path):
  """A transformers T5 with every tensor randomised (norm scales too), saved as safetensors."""
  from safetensors.torch import save_file
  from transformers import T5Config as HFConfig
  from transformers import T5ForConditionalGeneration as HFT5

  raw = _hf_config(flavour)
  tmp_path.mkdir(parents=True, exist_ok=True)
  torch.manual_seed(0)
  hf = HFT5(HFConfig(**{k: v for k, v in raw.items() if k != "model_type"})).eval()
  if not raw["tie_word_embeddings"]:
    hf.lm_head.weight = torch.nn.Parameter(torch.empty_like(hf.lm_head.weight))  # its own tensor
  g = torch.Generator().manual_seed(1)
  with torch.no_grad():
    for name, p in hf.named_parameters():
      if name.endswith("layer_norm.weight"):
        p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
      else:
        p.copy_(0.3 * torch.randn(p.shape, generator=g))
  tensors = {k: v.detach().clone().contiguous() for k, v in hf.state_dict().items()
             if k not in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
             and (k != "lm_head.weight" or not raw["tie_word_embeddings"])}
  save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
  (tmp_path / "config.json").write_text(json.dumps(raw))
  return hf


def _lmjax(model_dir):
  cfg, loaded = convert.load_pretrained(model_dir)
  model = t5.T5ForConditionalGeneration(cfg, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  params = merge_into(nnx.to_pure_dict(state), loaded)
  return cfg, graphdef, params


def _inputs():
  rng = np.random.default_rng(0)
  ids = rng.integers(2, 97, (2, 9)).astype(np.int32)
  mask = np.ones((2, 9), np.int32)
  mask[1, 6:] = 0
  ids[1, 6:] = 0
  dec = rng.integers(2, 97, (2, 6)).astype(np.int32)
  dec[:, 0] = 0  # decoder start token
  return ids, mask, dec


def _logits(graphdef, params, ids, mask, dec):
  return np.asarray(nnx.merge(graphdef, params)(jnp.asarray(ids), jnp.asarray(dec), jnp.asarray(mask)))


def _greedy(graphdef, params, ids, mask, steps):
  forward = jax.jit(lambda p, i, d, m: nnx.merge(graphdef, p)(i, d, m))
  dec = np.zeros((ids.shape[0], 1), np.int32)
  for _ in range(steps):
    nxt = np.asarray(forward(params, jnp.asarray(ids), jnp.asarray(dec), jnp.asarray(mask)))[:, -1].argmax(-1)
    dec = np.concatenate([dec, nxt[:, None].astype(np.int32)], axis=1)
  return dec[:, 1:]


@pytest.mark.parametrize("flavour", list(FLAVOURS))
def test_parity_with_transformers_logits_and_greedy(flavour, tmp_path):
  hf = _hf_model(flavour, tmp_path)
  cfg, graphdef, params = _lmjax(tmp_path)
  assert cfg.tie_embeddings == (flavour == "t5") and cfg.mlp == ("relu" if flavour == "t5" else "gated-gelu")
  ids, mask, dec = _inputs()
  with torch.no_grad():
    want = hf(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask, dtype=torch.long),
              decoder_input_ids=torch.tensor(dec, dtype=torch.long)).logits.numpy()
  got = _logits(graphdef, params, ids, mask, dec)
  np.testing.assert_allclose(got[0], want[0], atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(got[1], want[1], atol=1e-4, rtol=1e-4)  # the padded row
  # Greedy continuation by full recomputation on both sides (transformers 5.x's generate() trips over its
  # own cache when the decoder has more layers than the encoder, as here).
  hf_dec = torch.zeros((2, 1), dtype=torch.long)
  with torch.no_grad():
    for _ in range(8):
      nxt = hf(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask, dtype=torch.long),
               decoder_input_ids=hf_dec).logits[:, -1].argmax(-1)
      hf_dec = torch.cat([hf_dec, nxt[:, None]], dim=1)
  np.testing.assert_array_equal(_greedy(graphdef, params, ids, mask, 8), hf_dec.numpy()[:, 1:])
  # lmjax.generate with its KV cache (self-attention slots, cross-attention keys/values computed once)
  # writes the same tokens, with and without the cache.
  inputs = [list(ids[0]), list(ids[1, :6])]
  gen = Generator(cfg, params)
  for use_cache in (True, False):
    out = gen.generate(inputs=inputs, sampling=Sampling(8, temperature=0.0), use_cache=use_cache)
    np.testing.assert_array_equal(np.asarray(out.tokens), hf_dec.numpy()[:, 1:])


def test_wrong_relative_buckets_break_parity(tmp_path, monkeypatch):
  """The parity test can fail for the right reason: buckets that ignore the direction."""
  hf = _hf_model("t5", tmp_path)
  _, graphdef, params = _lmjax(tmp_path)
  ids, mask, dec = _inputs()
  with torch.no_grad():
    want = hf(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask, dtype=torch.long),
              decoder_input_ids=torch.tensor(dec, dtype=torch.long)).logits.numpy()
  right = t5.relative_position_buckets
  monkeypatch.setattr(t5, "relative_position_buckets",
                      lambda rel, **kw: right(jnp.abs(rel) if kw["bidirectional"] else rel, **kw))
  assert np.abs(_logits(graphdef, params, ids, mask, dec) - want).max() > 1e-2


@pytest.mark.parametrize("bidirectional", [True, False])
def test_relative_position_buckets_match_transformers(bidirectional):
  from transformers.models.t5.modeling_t5 import T5Attention
  rel = np.arange(-300, 301)[None, :] - np.zeros((1, 1), np.int64)
  for buckets, distance in ((32, 128), (8, 20)):
    want = T5Attention._relative_position_bucket(torch.tensor(rel), bidirectional=bidirectional,
                                                 num_buckets=buckets, max_distance=distance).numpy()
    got = t5.relative_position_buckets(jnp.asarray(rel, jnp.int32), bidirectional=bidirectional,
                                       num_buckets=buckets, max_distance=distance)
    np.testing.assert_array_equal(np.asarray(got), want)


@pytest.mark.parametrize("flavour", list(FLAVOURS))
def test_export_round_trips_through_transformers(flavour, tmp_path):
  from transformers import T5ForConditionalGeneration as HFT5
  _hf_model(flavour, tmp_path / "src")
  cfg, graphdef, params = _lmjax(tmp_path / "src")
  convert.save_pretrained(tmp_path / "out", cfg, params)
  hf = HFT5.from_pretrained(tmp_path / "out").eval()
  ids, mask, dec = _inputs()
  with torch.no_grad():
    want = hf(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask, dtype=torch.long),
              decoder_input_ids=torch.tensor(dec, dtype=torch.long)).logits.numpy()
  np.testing.assert_allclose(_logits(graphdef, params, ids, mask, dec), want, atol=1e-4, rtol=1e-4)
  again_cfg, again = convert.load_pretrained(tmp_path / "out")
  assert again_cfg == cfg
  for path, value in again.items():
    node = params
    for key in path:
      node = node[key]
    np.testing.assert_array_equal(np.asarray(node), value)


def test_refuses_unsupported_variants(tmp_path):
  with pytest.raises(LmjaxError, match="feed_forward_proj='gated-silu' is not supported"):
    convert.config_from_hf({**_hf_config("t5"), "feed_forward_proj": "gated-silu"})
  with pytest.raises(LmjaxError, match="not T5"):
    convert.config_from_hf({"model_type": "bart"})
  with pytest.raises(LmjaxError, match="model.mlp='swiglu'"):
    t5.T5Config(mlp="swiglu")
  with pytest.raises(LmjaxError, match="unknown T5 preset"):
    t5.T5Config.preset("t5-huge")
  assert models.for_hf_model_type("t5") is t5.FAMILY


def test_flops_match_xla_cost_analysis():
  cfg = t5.T5Config.preset("t5-tiny", vocab_size=512, dropout_rate=0.0)
  b, s, tt = 2, 64, 32
  model = t5.T5ForConditionalGeneration(cfg, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model)
  fn = jax.jit(lambda p, i, d: nnx.merge(graphdef, p)(i, d))
  compiled = fn.lower(params, jnp.ones((b, s), jnp.int32), jnp.ones((b, tt), jnp.int32)).compile()
  cost = compiled.cost_analysis()
  xla = float((cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"])
  ours = cfg.flops_per_token(Workload(s, target_len=tt), training=False) * b * s
  masked_half = cfg.num_decoder_layers * b * tt * 2 * 2 * tt * cfg.inner_dim / 2  # XLA computes the causal half too
  assert 0.97 < xla / (ours + masked_half) < 1.08, xla / (ours + masked_half)


@pytest.mark.parametrize("preset, expected", [("t5-small", 60_506_624), ("t5-base", 222_903_552),
                                              ("t5.1.1-small", 76_961_152), ("t5.1.1-base", 247_577_856)])
def test_presets_have_the_published_parameter_counts(preset, expected):
  abstract = nnx.eval_shape(lambda: t5.T5ForConditionalGeneration(t5.T5Config.preset(preset), rngs=nnx.Rngs(0)))
  n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
  assert n == expected


def test_every_parameter_has_logical_axes_known_to_every_rule_set():
  for flavour in ("t5-tiny", "t5.1.1-small"):
    cfg = t5.T5Config.preset(flavour, vocab_size=64, hidden_size=32, head_dim=8, mlp_dim=32, num_layers=1,
                             num_decoder_layers=1)
    assert_logical_axes_known(t5.T5ForConditionalGeneration(cfg, rngs=nnx.Rngs(0)))


def test_padding_does_not_change_real_positions_and_decoder_is_causal():
  cfg = t5.T5Config.preset("t5-tiny", dropout_rate=0.0)
  model = t5.T5ForConditionalGeneration(cfg, rngs=nnx.Rngs(0))
  ids = jnp.asarray([[5, 6, 7, 8, 0, 0]])
  mask = jnp.asarray([[1, 1, 1, 1, 0, 0]])
  dec = jnp.asarray([[0, 9, 10, 11]])
  base = model(ids, dec, mask)
  np.testing.assert_allclose(model(ids.at[0, 4:].set(42), dec, mask), base, atol=1e-5)  # padding ignored
  changed = model(ids, dec.at[0, 3].set(50), mask)
  np.testing.assert_allclose(changed[:, :3], base[:, :3], atol=1e-5)  # later targets do not reach earlier ones
  assert np.abs(np.asarray(changed[:, 3] - base[:, 3])).max() > 1e-4


def test_the_run_loader_opens_a_hugging_face_t5_directory(tmp_path):
  from lmjax import runs
  _hf_model("t5.1.1", tmp_path)
  src = runs.inspect(tmp_path)
  assert src.kind == "huggingface" and src.family is t5.FAMILY and src.model.mlp == "gated-gelu"
  run = runs.open_run(tmp_path, tokenizer=False)
  _, _, params = _lmjax(tmp_path)
  for a, b in zip(jax.tree.leaves(run.params), jax.tree.leaves(params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_cached_decoding_steps_equal_teacher_forcing():
  """Decoding token by token through the cache gives the teacher-forced logits (padded inputs)."""
  cfg = t5.T5Config.preset("t5-tiny", dropout_rate=0.0)
  model = t5.T5ForConditionalGeneration(cfg, rngs=nnx.Rngs(3))
  rng = np.random.default_rng(1)
  ids = rng.integers(5, 256, (2, 11)).astype(np.int32)
  seg = np.ones((2, 11), np.int32)
  seg[1, 7:] = 0
  dec = rng.integers(5, 256, (2, 9)).astype(np.int32)
  dec[:, 0] = 0
  full = np.asarray(model(jnp.asarray(ids), jnp.asarray(dec), jnp.asarray(seg)))
  cache = model.start_decoding(jnp.asarray(ids), jnp.asarray(seg), t5.init_cache(cfg, 2, 16))
  steps = []
  for i in range(9):
    logits, cache = model.decode_step(jnp.asarray(dec[:, i:i + 1]), jnp.full((2, 1), i), cache)
    steps.append(np.asarray(logits))
  np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=2e-5)


def test_packed_rows_equal_each_example_alone():
  """Two examples packed into one row (segment ids in both stacks) give the logits each gives alone."""
  cfg = t5.T5Config.preset("t5-tiny", dropout_rate=0.0)
  model = t5.T5ForConditionalGeneration(cfg, rngs=nnx.Rngs(4))
  rng = np.random.default_rng(2)
  xs = [rng.integers(5, 256, n).astype(np.int32) for n in (5, 8)]
  ys = [rng.integers(5, 256, n).astype(np.int32) for n in (4, 6)]
  ids, seg = np.zeros((1, 16), np.int32), np.zeros((1, 16), np.int32)
  dec, dseg = np.zeros((1, 12), np.int32), np.zeros((1, 12), np.int32)
  at_in = at_out = 0
  for k, (x, y) in enumerate(zip(xs, ys), 1):
    ids[0, at_in:at_in + len(x)], seg[0, at_in:at_in + len(x)] = x, k
    dec[0, at_out + 1:at_out + len(y)], dseg[0, at_out:at_out + len(y)] = y[:-1], k
    at_in, at_out = at_in + len(x), at_out + len(y)
  packed = np.asarray(model(jnp.asarray(ids), jnp.asarray(dec), jnp.asarray(seg), jnp.asarray(dseg)))
  at_out = 0
  for x, y in zip(xs, ys):
    alone = np.asarray(model(jnp.asarray(x[None]), jnp.asarray(np.concatenate([[0], y[:-1]])[None].astype(np.int32))))
    np.testing.assert_allclose(packed[0, at_out:at_out + len(y)], alone[0], atol=2e-5)
    at_out += len(y)
