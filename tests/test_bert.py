import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lmjax.models.bert import BertConfig, BertForPreTraining
from lmjax.errors import LmjaxError

from conftest import TINY_BERT, assert_logical_axes_known


def _inputs(b=2, t=12, vocab=256, seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(5, vocab, (b, t)).astype(np.int32)
  types = np.zeros((b, t), np.int32)
  types[:, t // 2:] = 1
  mask = np.ones((b, t), np.int32)
  return jnp.asarray(ids), jnp.asarray(types), jnp.asarray(mask)


@pytest.mark.parametrize("pre_ln", [False, True])
def test_output_shapes_and_dtypes(pre_ln):
  cfg = dataclasses.replace(TINY_BERT, pre_ln=pre_ln)
  model = BertForPreTraining(cfg, rngs=nnx.Rngs(0))
  ids, types, mask = _inputs()
  positions = jnp.asarray([[1, 3, 5], [0, 2, 4]], jnp.int32)
  mlm, nsp = model(ids, types, mask, positions)
  chex.assert_shape(mlm, (2, 3, cfg.vocab_size))
  chex.assert_shape(nsp, (2, 2))
  assert mlm.dtype == jnp.float32 and nsp.dtype == jnp.float32
  hidden, pooled = model.bert(ids, types, mask)
  chex.assert_shape(hidden, (2, 12, cfg.hidden_size))
  chex.assert_shape(pooled, (2, cfg.hidden_size))
  chex.assert_tree_all_finite((mlm, nsp, hidden, pooled))


def test_mlm_head_projects_only_gathered_positions():
  model = BertForPreTraining(TINY_BERT, rngs=nnx.Rngs(0))
  ids, types, mask = _inputs()
  hidden, _ = model.bert(ids, types, mask)
  full = model.mlm_logits(hidden, jnp.broadcast_to(jnp.arange(12), (2, 12)))
  some = model.mlm_logits(hidden, jnp.asarray([[7, 2], [11, 0]]))
  np.testing.assert_allclose(some[0], full[0, [7, 2]], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(some[1], full[1, [11, 0]], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pre_ln", [False, True])
def test_padding_does_not_change_real_positions(pre_ln):
  cfg = dataclasses.replace(TINY_BERT, pre_ln=pre_ln)
  model = BertForPreTraining(cfg, rngs=nnx.Rngs(1))
  ids, types, mask = _inputs(b=1, t=10)
  real_h, real_p = model.bert(ids, types, mask)
  # Append 6 padding positions holding arbitrary tokens: outputs at the real
  # positions (and the pooled [CLS]) must not move.
  pad_ids = jnp.concatenate([ids, jnp.full((1, 6), 77, jnp.int32)], axis=1)
  pad_types = jnp.concatenate([types, jnp.ones((1, 6), jnp.int32)], axis=1)
  pad_mask = jnp.concatenate([mask, jnp.zeros((1, 6), jnp.int32)], axis=1)
  h, p = model.bert(pad_ids, pad_types, pad_mask)
  np.testing.assert_allclose(h[:, :10], real_h, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(p, real_p, rtol=1e-5, atol=1e-5)
  # ...while the mask really matters: unmasking the padding changes them.
  h2, _ = model.bert(pad_ids, pad_types, jnp.ones_like(pad_mask))
  assert np.abs(np.asarray(h2[:, :10] - real_h)).max() > 1e-3


def test_bidirectional_attention():
  """An encoder sees later tokens: changing the last token moves the first position."""
  model = BertForPreTraining(TINY_BERT, rngs=nnx.Rngs(2))
  ids, types, mask = _inputs(b=1, t=8)
  h, _ = model.bert(ids, types, mask)
  h2, _ = model.bert(ids.at[0, -1].set(ids[0, -1] + 1), types, mask)
  assert np.abs(np.asarray(h2[0, 0] - h[0, 0])).max() > 1e-4


def test_dropout_only_with_a_key():
  model = BertForPreTraining(TINY_BERT, rngs=nnx.Rngs(3))
  ids, types, mask = _inputs()
  a, _ = model.bert(ids, types, mask)
  b, _ = model.bert(ids, types, mask)
  c, _ = model.bert(ids, types, mask, rng=jax.random.key(0))
  d, _ = model.bert(ids, types, mask, rng=jax.random.key(0))
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(c, d)
  assert np.abs(np.asarray(a - c)).max() > 1e-3


def test_every_parameter_has_logical_axes_known_to_every_rule_set():
  assert_logical_axes_known(BertForPreTraining(TINY_BERT, rngs=nnx.Rngs(0)))


def test_word_embeddings_are_tied_to_the_mlm_output():
  model = BertForPreTraining(TINY_BERT, rngs=nnx.Rngs(0))
  ids, types, mask = _inputs()
  pos = jnp.zeros((2, 1), jnp.int32)
  before, _ = model(ids, types, mask, pos)
  model.bert.embeddings.word.embedding[...] = model.bert.embeddings.word.embedding[...] * 2
  after, _ = model(ids, types, mask, pos)
  assert np.abs(np.asarray(after - before)).max() > 1e-3
  n_params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  cfg = TINY_BERT
  d, f, v = cfg.hidden_size, cfg.mlp_dim, cfg.vocab_size
  per_layer = 4 * (d * d + d) + (d * f + f) + (f * d + d) + 4 * d
  embeddings = (v + cfg.max_position_embeddings + cfg.type_vocab_size) * d + 2 * d
  heads = (d * d + d) + (d * d + d) + 2 * d + v + (2 * d + 2)  # pooler, transform, norm, bias, NSP
  # No separate output matrix: the vocabulary projection reuses the embeddings.
  assert n_params == embeddings + cfg.num_layers * per_layer + heads


def test_config_rejects_bad_preset_and_sizes():
  with pytest.raises(LmjaxError, match="unknown BERT preset"):
    BertConfig.preset("huge")
  with pytest.raises(LmjaxError, match="model.hidden_size=100 is not divisible by model.num_heads=3"):
    BertConfig(hidden_size=100, num_heads=3)
  with pytest.raises(LmjaxError, match=r"model.dropout_rate=1.5 must be in \[0, 1\)"):
    BertConfig(dropout_rate=1.5)
  with pytest.raises(LmjaxError, match="model.num_layers=0 must be positive"):
    BertConfig.preset("tiny", num_layers=0)
