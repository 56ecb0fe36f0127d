"""The shared blocks: one attention and one MLP serve every family."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lmjax import layers as L


def _x(shape, seed=0):
  return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


def test_grouped_kv_heads_equal_multi_head_with_shared_keys():
  """K kv heads serving groups of N / K query heads = multi-head attention whose
  key/value weights repeat each kv head G times."""
  grouped = L.Attention(32, 4, kv_heads=2, init_std=0.2, rngs=nnx.Rngs(0))
  full = L.Attention(32, 4, init_std=0.2, rngs=nnx.Rngs(1))
  full.q_dnh[...] = grouped.q_dnh[...]
  full.out_nhd[...] = grouped.out_nhd[...]
  for name in ("k_dkh", "v_dkh"):
    getattr(full, name)[...] = jnp.repeat(getattr(grouped, name)[...], 2, axis=1)
  for name in ("k_bias", "v_bias"):
    getattr(full, name)[...] = jnp.repeat(getattr(grouped, name)[...], 2, axis=0)
  for name in ("q_bias", "out_bias"):
    getattr(full, name)[...] = getattr(grouped, name)[...]
  x = _x((2, 5, 32))
  causal = L.mask_to_bias(jnp.tril(jnp.ones((5, 5), bool))[None, None])
  np.testing.assert_allclose(grouped(x, causal)[0], full(x, causal)[0], atol=1e-5)


def test_cross_attention_and_per_head_bias():
  att = L.Attention(16, 2, init_std=0.3, rngs=nnx.Rngs(0))
  x, memory = _x((2, 3, 16)), _x((2, 7, 16), seed=1)
  no_mask = jnp.zeros((1, 1, 1, 1))
  # keys from the memory: a change in the memory changes the output, the query length stays 3
  y, _ = att(x, no_mask, kv_bsd=memory)
  assert y.shape == (2, 3, 16)
  assert not np.allclose(y, att(x, no_mask, kv_bsd=memory * 2)[0])
  np.testing.assert_allclose(att(x, no_mask, kv_bsd=x)[0], att(x, no_mask)[0], atol=1e-6)
  # a per-head bias [1, N, T, S] (relative positions): masking key 0 for head 0 only
  bias = jnp.zeros((1, 2, 3, 7)).at[0, 0, :, 0].set(L.NEG_INF)
  masked = att(x, bias, kv_bsd=memory)[0]
  assert not np.allclose(masked, y)
  grouped = L.Attention(16, 2, kv_heads=1, init_std=0.3, rngs=nnx.Rngs(0))
  assert grouped(x, bias, kv_bsd=memory)[0].shape == (2, 3, 16)


def test_padding_keys_are_ignored():
  att = L.Attention(16, 4, init_std=0.3, rngs=nnx.Rngs(0))
  x = _x((1, 6, 16))
  mask = jnp.asarray([[1, 1, 1, 1, 0, 0]])
  y = att(x, L.padding_bias(mask))[0]
  changed = x.at[:, 4:].set(_x((1, 2, 16), seed=3))
  np.testing.assert_allclose(att(changed, L.padding_bias(mask))[0][:, :4], y[:, :4], atol=1e-6)


@pytest.mark.parametrize("activation, gated", [("gelu", False), ("gelu_tanh", False), ("relu", False),
                                               ("silu", True), ("gelu_tanh", True)])
def test_mlp_activations(activation, gated):
  mlp = L.Mlp(8, 12, activation=activation, gated=gated, use_bias=False, init_std=0.5, rngs=nnx.Rngs(0))
  x = _x((2, 8))
  act = {"gelu": lambda v: jax.nn.gelu(v, approximate=False), "gelu_tanh": lambda v: jax.nn.gelu(v, approximate=True),
         "relu": jax.nn.relu, "silu": jax.nn.silu}[activation]
  h = x @ mlp.up.kernel[...]
  if gated:
    h = act(x @ mlp.gate.kernel[...]) * h
  else:
    h = act(h)
  np.testing.assert_allclose(mlp(x), h @ mlp.down.kernel[...], atol=1e-5)
  assert (mlp.gate is None) != gated
  with pytest.raises(ValueError, match="unknown activation"):
    L.Mlp(8, 12, activation="swish", init_std=0.1, rngs=nnx.Rngs(0))


# --- attention kernels -------------------------------------------------------

def _qkv(b, t, s, n, k, h, seed=0):
  keys = jax.random.split(jax.random.key(seed), 3)
  return (jax.random.normal(keys[0], (b, t, n, h)) * 0.5, jax.random.normal(keys[1], (b, s, k, h)),
          jax.random.normal(keys[2], (b, s, k, h)))


def _masks(b, t, s, n):
  """Padding [B,1,1,S], packed segments [B,1,T,S], a per-head bias [1,N,T,S] (T5) plus padding."""
  lengths = jnp.asarray([s, s - 3])[:b]
  pad = L.padding_bias((jnp.arange(s)[None] < lengths[:, None]).astype(jnp.int32))
  seg = jnp.asarray([[1] * (s // 2) + [2] * (s - s // 2), [1] * (s - 2) + [0, 0]])[:b]
  segments = L.mask_to_bias((seg[:, :t, None] == seg[:, None, :])[:, None])
  relative = jax.random.normal(jax.random.key(7), (1, n, t, s))
  return {"none": None, "padding": pad, "segments": segments, "relative+padding": relative + pad}


@pytest.mark.parametrize("x_shape, w_shape, contract, transposed", [
    ((2, 5, 8), (8, 12), 1, False),  # Dense: BTD,DF->BTF
    ((2, 5, 8), (8, 3, 4), 1, False),  # attention projection: BTD,DNH->BTNH
    ((2, 5, 3, 4), (3, 4, 8), 2, False),  # attention output: BTNH,NHD->BTD
    ((2, 5, 8), (11, 8), 1, True),  # tied vocabulary projection: BTD,VD->BTV
])
def test_matmul_flattened_equals_the_einsum_values_and_gradients(x_shape, w_shape, contract, transposed):
  """The 2-D matmul XLA:CPU gets (flatten=True) and the einsum other backends
  get compute the same product, gradients and forward-mode tangents."""
  x, w = _x(x_shape), _x(w_shape, seed=1)
  subs = "abcdefgh"
  xs = subs[:len(x_shape)]
  ws = (subs[5:5 + len(w_shape) - contract] + xs[len(x_shape) - contract:] if transposed
        else xs[len(x_shape) - contract:] + subs[5:5 + len(w_shape) - contract])
  out = xs[:len(x_shape) - contract] + (ws[:len(w_shape) - contract] if transposed else ws[contract:])
  want = jnp.einsum(f"{xs},{ws}->{out}", x, w)
  cotangent = _x(want.shape, seed=2)
  results = {}
  for flatten in (True, False):
    def f(x, w, flatten=flatten):
      return L.matmul(x, w, contract, w_transposed=transposed, flatten=flatten)
    y, vjp = jax.vjp(f, x, w)
    _, tangent = jax.jvp(f, (x, w), (jnp.ones_like(x), jnp.ones_like(w)))
    results[flatten] = (y, *vjp(cotangent), tangent)
  np.testing.assert_allclose(results[True][0], want, rtol=1e-5, atol=1e-5)
  for a, b in zip(results[True], results[False]):
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  mixed = L.matmul(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16), contract, w_transposed=transposed,
                   preferred_element_type=jnp.float32)
  assert mixed.dtype == jnp.float32 and mixed.shape == want.shape


@pytest.mark.parametrize("kv_heads", [4, 2])
@pytest.mark.parametrize("mask", ["none", "padding", "segments", "relative+padding"])
@pytest.mark.parametrize("causal", [False, True])
def test_xla_attention_equals_einsum_values_and_gradients(kv_heads, mask, causal):
  """jax.nn.dot_product_attention (model.attention=xla; cudnn on GPUs takes the
  same arguments) = the einsum kernel, with padding, packed, per-head and causal
  masks and grouped heads, in value and in the gradients of q, k, v and the bias."""
  q, k, v = _qkv(2, 8, 8, 4, kv_heads, 16)
  bias = _masks(2, 8, 8, 4)[mask]

  def loss(impl, q, k, v, bias):
    out = L.attend(q, k, v, bias, causal=causal, implementation=impl)
    return jnp.sum(out * jnp.cos(jnp.arange(out.size).reshape(out.shape)))

  for impl_value, ref_value in zip(
      jax.value_and_grad(loss, argnums=(1, 2, 3))("xla", q, k, v, bias),
      jax.value_and_grad(loss, argnums=(1, 2, 3))("einsum", q, k, v, bias)):
    for a, b in zip(jax.tree.leaves(impl_value), jax.tree.leaves(ref_value)):
      np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)
  if bias is not None:
    g_impl = jax.grad(loss, argnums=4)("xla", q, k, v, bias)
    g_ref = jax.grad(loss, argnums=4)("einsum", q, k, v, bias)
    np.testing.assert_allclose(g_impl, g_ref, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
@pytest.mark.parametrize("mask", ["none", "padding", "relative+padding"])
@pytest.mark.parametrize("dropout", [0.0, 0.25])
def test_cpu_attention_backward_equals_autodiff(kv_heads, mask, dropout):
  """The einsum kernel's hand-written backward pass (`cpu_vjp=True`, the
  default on the CPU) = autodiff of the same forward pass, in value and in
  the gradients of q, k, v and the bias (T5's relative bias is trained),
  with multi-head, grouped and multi-query heads, causal masking and dropout
  (the mask recomputed in the backward pass must be the forward one)."""
  q, k, v = _qkv(2, 8, 8, 4, kv_heads, 16)
  bias = _masks(2, 8, 8, 4)[mask]
  rng = jax.random.key(5) if dropout else None

  def loss(cpu_vjp, q, k, v, bias):
    out = L.attend(q, k, v, bias, causal=mask == "none", dropout_rate=dropout, rng=rng, cpu_vjp=cpu_vjp)
    return jnp.sum(out * jnp.cos(jnp.arange(out.size).reshape(out.shape)))

  argnums = (1, 2, 3, 4) if bias is not None else (1, 2, 3)
  (value, grads), (ref_value, ref_grads) = (jax.value_and_grad(loss, argnums=argnums)(cv, q, k, v, bias)
                                            for cv in (True, False))
  np.testing.assert_allclose(value, ref_value, rtol=1e-5)
  for a, b in zip(grads, ref_grads):
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)
  uses_custom_rule = "custom_vjp_call" in str(jax.make_jaxpr(functools.partial(loss, None))(q, k, v, bias))
  assert uses_custom_rule == (jax.default_backend() == "cpu")


def test_causal_flag_equals_a_causal_bias_and_covers_cache_offsets():
  q, k, v = _qkv(2, 3, 7, 4, 2, 8)
  # three queries at the last three of seven positions (a cache being filled)
  allowed = jnp.arange(3)[:, None] + 4 >= jnp.arange(7)[None, :]
  explicit = L.attend(q, k, v, L.mask_to_bias(allowed[None, None]))
  np.testing.assert_allclose(L.attend(q, k, v, None, causal=True), explicit, atol=1e-6)
  np.testing.assert_allclose(L.attend(q, k, v, None, causal=True, implementation="xla"), explicit, atol=1e-5)


def test_auto_attention_is_einsum_on_cpu_and_with_dropout():
  assert L.pick_attention("auto", jnp.bfloat16, dropping=False) == ("cudnn" if jax.default_backend() == "gpu" else "einsum")
  assert L.pick_attention("auto", jnp.bfloat16, dropping=True) == "einsum"
  assert L.pick_attention("xla", jnp.float32, dropping=False) == "xla"


def test_bad_attention_and_remat_names_are_refused_with_the_valid_ones():
  from lmjax.errors import LmjaxError  # noqa: PLC0415
  from lmjax.models.bert import BertConfig  # noqa: PLC0415
  from lmjax.models.gpt import GptConfig  # noqa: PLC0415
  from lmjax.models.t5 import T5Config  # noqa: PLC0415
  with pytest.raises(LmjaxError, match="model.attention='flash'.*auto, einsum, xla, cudnn"):
    GptConfig.preset("tiny", attention="flash")
  with pytest.raises(LmjaxError, match="model.remat='some'.*none, full, dots, dots_no_batch"):
    BertConfig.preset("tiny", remat="some")
  with pytest.raises(LmjaxError, match="no attention dropout.*attention_dropout_rate=0"):
    BertConfig.preset("tiny", attention="cudnn")  # BERT's attention dropout is 0.1
  with pytest.raises(LmjaxError, match="no attention dropout"):
    T5Config.preset("t5-tiny", attention="xla")
  GptConfig.preset("llama-tiny", attention="cudnn", remat="full")  # no dropout: fine


# --- rematerialisation ----------------------------------------------------------

def _family_loss(name, remat, attention="einsum", dtype="float32", scan=False):
  """(model, loss(model, key)) of a tiny model of each family with dropout on."""
  from lmjax.models.bert import BertConfig, BertForPreTraining  # noqa: PLC0415
  from lmjax.models.gpt import GptConfig, GptForCausalLM  # noqa: PLC0415
  from lmjax.models.t5 import T5Config, T5ForConditionalGeneration  # noqa: PLC0415
  ids = jax.random.randint(jax.random.key(1), (2, 16), 3, 100)
  if name == "bert":
    model = BertForPreTraining(BertConfig.preset("tiny", vocab_size=100, remat=remat, dtype=dtype, scan_layers=scan),
                               rngs=nnx.Rngs(0))
    fwd = lambda m, key: m(ids, jnp.zeros_like(ids), jnp.ones_like(ids), jnp.arange(4)[None].repeat(2, 0),  # noqa: E731
                            rng=key)[0]
  elif name in ("gpt2", "llama"):
    preset = "tiny" if name == "gpt2" else "llama-tiny"
    model = GptForCausalLM(GptConfig.preset(preset, vocab_size=100, remat=remat, attention=attention, dtype=dtype,
                                            scan_layers=scan, **({} if name == "gpt2" else {"dropout_rate": 0.1})),
                           rngs=nnx.Rngs(0))
    fwd = lambda m, key: m(ids, rng=key)  # noqa: E731
  else:
    model = T5ForConditionalGeneration(T5Config.preset("t5-tiny", vocab_size=100, remat=remat, dtype=dtype,
                                                       scan_layers=scan), rngs=nnx.Rngs(0))
    fwd = lambda m, key: m(ids, ids[:, :8], rng=key)  # noqa: E731

  def loss(m, key):
    return jnp.mean(jax.nn.log_softmax(fwd(m, key))[..., 5])
  return model, loss


@pytest.mark.parametrize("family, remat", [("bert", "full"), ("gpt2", "dots"), ("llama", "dots_no_batch"),
                                           ("llama", "full"), ("t5", "full")])
def test_remat_gives_the_same_loss_and_gradients_as_none(family, remat):
  """Recomputing blocks in the backward pass (dropout masks included: the keys
  are inputs of each block) changes memory, not numbers."""
  key = jax.random.key(3)
  grads = {}
  for policy in ("none", remat):
    model, loss = _family_loss(family, policy)
    value, g = jax.jit(nnx.value_and_grad(loss))(model, key)
    grads[policy] = (value, nnx.to_pure_dict(nnx.state(g)))
  np.testing.assert_allclose(grads[remat][0], grads["none"][0], rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), grads[remat][1], grads["none"][1])


@pytest.mark.parametrize("family, remat", [("bert", "none"), ("gpt2", "none"), ("llama", "full"), ("t5", "none"),
                                           ("t5", "dots")])
def test_scanned_layers_give_the_same_loss_and_gradients(family, remat):
  """model.scan_layers: one compiled body over stacked parameters; the same
  numbers (dropout masks included), the same parameter tree."""
  key = jax.random.key(3)
  out = {}
  for scan in (False, True):
    model, loss = _family_loss(family, remat, scan=scan)
    value, g = jax.jit(nnx.value_and_grad(loss))(model, key)
    out[scan] = (value, nnx.to_pure_dict(nnx.state(g)))
  np.testing.assert_allclose(out[True][0], out[False][0], rtol=1e-6)
  assert jax.tree.structure(out[True][1]) == jax.tree.structure(out[False][1])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), out[True][1], out[False][1])


def test_scanned_layers_compile_one_body():
  """Under scan the step holds one copy of the block's matmuls, not one per layer."""
  def dots(scan):
    model, loss = _family_loss("llama", "none", scan=scan)
    return jax.jit(nnx.grad(loss)).lower(model, jax.random.key(0)).as_text().count("dot_general")
  assert dots(True) < dots(False)


def test_remat_recomputes_in_the_backward_pass():
  """The policy reaches the compiled step: under `full` the gradient program
  holds more matmuls (each block's forward runs again)."""
  def dots(remat):
    model, loss = _family_loss("llama", remat)
    text = jax.jit(nnx.grad(loss)).lower(model, jax.random.key(0)).as_text()
    return text.count("dot_general")
  assert dots("full") > dots("none")


def test_forward_mode_differentiation_passes_the_decoder_where_grad_boundary_is_off(monkeypatch):
  """jax.jvp through a GPT block: refused by the CPU-only custom_vjp, fine
  wherever cpu_grad_boundary is the identity (GPUs, TPUs)."""
  from lmjax.models.gpt import GptConfig, GptForCausalLM  # noqa: PLC0415
  model = GptForCausalLM(GptConfig.preset("tiny", vocab_size=50, num_layers=1), rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model)
  ids = jnp.arange(6)[None] % 50

  def logits(p):
    return nnx.merge(graphdef, p)(ids)
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  _, tangent = jax.jvp(logits, (params,), (jax.tree.map(jnp.ones_like, params),))
  assert tangent.shape == (1, 6, 50) and bool(jnp.isfinite(tangent).all())
  monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
  with pytest.raises(TypeError, match="custom_vjp"):
    jax.jvp(logits, (params,), (jax.tree.map(jnp.ones_like, params),))


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama", "t5"])
def test_bfloat16_compute_stays_close_to_float32(family):
  """Same parameters, bfloat16 compute: logits and scores accumulate in float32,
  so the loss moves by bfloat16 rounding of the activations only."""
  losses = {}
  for dtype in ("float32", "bfloat16"):
    model, loss = _family_loss(family, "none", dtype=dtype)
    losses[dtype] = float(jax.jit(loss)(model, None))
  assert abs(losses["bfloat16"] - losses["float32"]) < 0.02 * abs(losses["float32"]), losses


# --- chunked vocabulary projection + cross-entropy ------------------------------------

@pytest.mark.parametrize("preset", ["tiny", "llama-tiny"])  # tied output (GPT-2), untied lm_head (Llama)
def test_chunked_cross_entropy_equals_the_plain_loss_and_gradient(preset):
  """model.loss_chunk: the causal-LM loss from chunks of 5 positions (12 = 5 + 5 + 2,
  the last chunk padded) equals the loss from whole [B, T, V] logits, value,
  accuracy and gradients of every parameter."""
  import dataclasses  # noqa: PLC0415

  from lmjax import tasks  # noqa: PLC0415
  from lmjax.models.gpt import GptConfig, GptForCausalLM  # noqa: PLC0415
  task = tasks.get("causal_lm")
  cfg = GptConfig.preset(preset, vocab_size=97, num_layers=1, dropout_rate=0.0, attention_dropout_rate=0.0)
  rng = np.random.default_rng(0)
  batch = {"input_ids": jnp.asarray(rng.integers(0, 97, (3, 12)), jnp.int32),
           "target_ids": jnp.asarray(rng.integers(0, 97, (3, 12)), jnp.int32),
           "positions": jnp.broadcast_to(jnp.arange(12), (3, 12)).astype(jnp.int32),
           "segment_ids": jnp.ones((3, 12), jnp.int32),
           "target_weights": jnp.asarray(rng.random((3, 12)) > 0.2, jnp.float32)}
  results = {}
  for chunk in (0, 5):
    model = GptForCausalLM(dataclasses.replace(cfg, loss_chunk=chunk), rngs=nnx.Rngs(0))

    def loss(m):
      value, stats = task.loss(m, batch, None, task.denominators(batch))
      return value, stats
    (value, stats), grads = jax.jit(nnx.value_and_grad(loss, has_aux=True))(model)
    results[chunk] = (value, stats["accuracy"], nnx.to_pure_dict(nnx.state(grads)))
  np.testing.assert_allclose(results[5][0], results[0][0], rtol=1e-6)
  np.testing.assert_allclose(results[5][1], results[0][1], rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), results[5][2], results[0][2])


def test_chunked_cross_entropy_keeps_the_logits_out_of_memory():
  """The loss gradient of the chunked projection needs less than the [B, T, V]
  float32 logits in temporaries (XLA's memory analysis); the plain one holds the
  logits and their gradient (2x)."""
  import optax  # noqa: PLC0415
  b, t, d, v = 1, 128, 64, 32_000

  def plain(x, w, y, wt):
    logits = jnp.einsum("BTD,DV->BTV", x, w, preferred_element_type=jnp.float32)
    return (optax.softmax_cross_entropy_with_integer_labels(logits, y) * wt).sum()

  def temporaries(f):
    args = (jax.ShapeDtypeStruct((b, t, d), jnp.float32), jax.ShapeDtypeStruct((d, v), jnp.float32),
            jax.ShapeDtypeStruct((b, t), jnp.int32), jax.ShapeDtypeStruct((b, t), jnp.float32))
    return jax.jit(jax.grad(f, argnums=(0, 1))).lower(*args).compile().memory_analysis().temp_size_in_bytes
  logits = b * t * v * 4
  assert temporaries(plain) >= 2 * logits
  assert temporaries(lambda *a: L.chunked_cross_entropy(*a, 16)[0]) < logits


@pytest.mark.parametrize("rate", [0.01, 0.1, 0.5])
def test_dropout_keeps_each_element_with_probability_one_minus_rate(rate):
  shape = (8, 12, 64, 64)  # 393,216 draws
  keep = np.asarray(L.keep_mask(jax.random.key(0), rate, shape))
  n = keep.size
  assert keep.shape == shape and keep.dtype == bool
  assert abs(keep.mean() - (1 - rate)) < 5 * np.sqrt(rate * (1 - rate) / n)
  # Every row and every column is its own Bernoulli sample: their keep counts
  # spread as binomials do (a hash weak in one index would show here).
  rows = keep.reshape(-1, shape[-1]).mean(axis=1)
  cols = keep.reshape(-1, shape[-1]).mean(axis=0)
  for means, size in ((rows, shape[-1]), (cols, n // shape[-1])):
    expected_sd = np.sqrt(rate * (1 - rate) / size)
    slack = 4 / np.sqrt(2 * (means.size - 1))  # ~4 standard errors of a sample standard deviation
    assert abs(means.std() / expected_sd - 1) < slack, (means.std(), expected_sd, means.size)


def test_dropout_masks_are_uncorrelated_across_neighbours_and_keys():
  shape = (4, 12, 128, 128)
  a = np.asarray(L.keep_mask(jax.random.key(1), 0.5, shape)).astype(np.float32) - 0.5
  b = np.asarray(L.keep_mask(jax.random.key(2), 0.5, shape)).astype(np.float32) - 0.5
  site = np.asarray(L.keep_mask(jax.random.fold_in(jax.random.key(1), 0), 0.5, shape)).astype(np.float32) - 0.5
  bound = 5 / np.sqrt(a.size)  # five standard errors of a correlation of independent draws
  pairs = {"next column": (a[..., 1:], a[..., :-1]), "next row": (a[..., 1:, :], a[..., :-1, :]),
           "next head": (a[:, 1:], a[:, :-1]), "another key": (a, b), "another site": (a, site)}
  for name, (x, y) in pairs.items():
    corr = float((x * y).mean() / 0.25)
    assert abs(corr) < bound, (name, corr)


def test_dropout_mask_is_the_same_on_any_mesh_and_under_jit():
  from jax.sharding import NamedSharding  # noqa: PLC0415
  from jax.sharding import PartitionSpec as P  # noqa: PLC0415

  key, shape = jax.random.key(7), (8, 4, 16, 24)
  eager = np.asarray(L.keep_mask(key, 0.1, shape))
  mesh = jax.make_mesh((4, 2), ("a", "b"))
  for spec in (P("a"), P(None, "b", "a"), P(("a", "b"), None, None, None), P(None, None, None, "a")):
    f = jax.jit(lambda k: L.keep_mask(k, 0.1, shape), out_shardings=NamedSharding(mesh, spec))
    np.testing.assert_array_equal(np.asarray(f(key)), eager, err_msg=str(spec))
  x = _x(shape)
  dropped = np.asarray(L.dropout(x, 0.1, key))
  np.testing.assert_array_equal(dropped == 0, ~eager)
  np.testing.assert_allclose(dropped[eager], np.asarray(x)[eager] / 0.9, rtol=1e-6)
  assert L.dropout(x, 0.1, None) is x and L.dropout(x, 0.0, key) is x


def _layout_copies(hlo: str) -> list[str]:
  """Instructions of an optimised CPU HLO module that copy an array into another layout."""
  return [line.strip()[:120] for line in hlo.splitlines()
          if re.search(r"= \S+ (copy|transpose)\(|^\s*%(copy|transpose)\w*fusion\S* = ", line)]


def test_mlp_backward_on_the_cpu_makes_no_transposed_copy():
  """The weight projections reach XLA:CPU as 2-D matmuls (`L.matmul`), so the
  backward pass of an MLP block reads its output gradients in place: as
  einsums over [B, T, D] the compiled program wrote a transposed copy of the
  [B, T, F] gradient for each weight gradient (docs/performance.md, "Matmul
  operand shapes")."""
  mlp = L.Mlp(64, 256, activation="relu", use_bias=False, init_std=0.1, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(mlp)

  def loss(params, x):
    return jnp.sum(jnp.tanh(nnx.merge(graphdef, params)(x)))
  hlo = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(params, _x((4, 32, 64))).compile().as_text()
  assert jax.default_backend() == "cpu"
  assert not _layout_copies(hlo)
