"""The shared blocks: one attention and one MLP serve every family."""

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
