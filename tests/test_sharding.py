"""Sharded (DP, FSDP, TP) losses and gradients equal single-device ones."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from lmjax import sharding as sh
from lmjax import trainer
from lmjax.errors import LmjaxError

from conftest import replace

LAYOUTS = {  # name -> (data, fsdp, tensor, rule set)
    "dp8": (8, 1, 1, "dp"),
    "fsdp8": (1, 8, 1, "fsdp"),
    "tp4_dp2": (2, 1, 4, "tp"),
    "fsdp2_tp4": (1, 2, 4, "fsdp_tp"),
}


def _batch(cfg, seed=0):
  rng = np.random.default_rng(seed)
  b, t, p = cfg.train.batch_size, cfg.data.max_seq_len, cfg.data.max_predictions_per_seq
  lengths = rng.integers(t // 2, t + 1, b)
  mask = (np.arange(t)[None] < lengths[:, None]).astype(np.int32)
  ids = rng.integers(5, cfg.model.vocab_size, (b, t)).astype(np.int32) * mask
  types = (np.arange(t)[None] >= lengths[:, None] // 2).astype(np.int32) * mask
  positions = np.sort(rng.permuted(np.tile(np.arange(1, t // 2), (b, 1)), axis=1)[:, :p], axis=1).astype(np.int32)
  weights = np.ones((b, p), np.float32)
  weights[:, -1] = rng.integers(0, 2, b)  # some padded prediction slots
  return {"input_ids": ids, "type_ids": types, "input_mask": mask, "masked_positions": positions,
          "masked_ids": rng.integers(5, cfg.model.vocab_size, (b, p)).astype(np.int32),
          "masked_weights": weights, "nsp_label": rng.integers(0, 2, b).astype(np.int32)}


def _grads(cfg, mesh):
  s = trainer.build(cfg, mesh)
  state = trainer.init_state(s)
  batch = trainer.to_global(_batch(cfg), s)
  fn = jax.jit(trainer.under_rules(trainer.compute_grads, s))
  with jax.set_mesh(mesh):
    loss, stats, grads = fn(state["params"], batch, None)
  return s, state, float(loss), jax.device_get(grads)


@pytest.fixture
def no_dropout(tiny_cfg):
  return replace(tiny_cfg, model=dict(dropout_rate=0.0, attention_dropout_rate=0.0))


_REFERENCE = {}


def _single(cfg):
  return sh.make_mesh(1, 1, 1, devices=jax.devices()[:1])


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_sharded_loss_and_grads_equal_single_device(no_dropout, layout):
  data, fsdp, tensor, rules = LAYOUTS[layout]
  cfg = replace(no_dropout, mesh=dict(data=data, fsdp=fsdp, tensor=tensor, rules=rules))
  assert len(jax.devices()) == 8
  if "single" not in _REFERENCE:  # one device: the mesh settings do not matter
    _REFERENCE["single"] = _grads(cfg, _single(cfg))[2:]
  loss1, grads1 = _REFERENCE["single"]
  mesh = sh.make_mesh(data, fsdp, tensor)
  s, state, loss8, grads8 = _grads(cfg, mesh)
  np.testing.assert_allclose(loss8, loss1, rtol=1e-5)
  flat1 = jax.tree_util.tree_flatten_with_path(grads1)[0]
  flat8 = jax.tree.leaves(grads8)
  for (path, g1), g8 in zip(flat1, flat8):
    np.testing.assert_allclose(g8, g1, rtol=2e-4, atol=2e-6, err_msg=jax.tree_util.keystr(path))
  assert max(float(np.abs(g).max()) for g in flat8) > 1e-4  # gradients are not trivially zero


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_rule_sets_place_parameters_as_documented(tiny_cfg, layout):
  """The arrays really are split: each device holds the documented shard."""
  data, fsdp, tensor, rules = LAYOUTS[layout]
  cfg = replace(tiny_cfg, mesh=dict(data=data, fsdp=fsdp, tensor=tensor, rules=rules))
  s = trainer.build(cfg, sh.make_mesh(data, fsdp, tensor))
  state = trainer.init_state(s)
  p = state["params"]
  m = cfg.model
  word = p["bert"]["embeddings"]["word"]["embedding"]
  q = p["bert"]["layers"][0]["attention"]["q_dnh"]
  up = p["bert"]["layers"][0]["mlp"]["up"]["kernel"]
  f = fsdp if rules in ("fsdp", "fsdp_tp") else 1
  t = tensor if rules in ("tp", "fsdp_tp") else 1
  assert word.addressable_shards[0].data.shape == (m.vocab_size // t, m.hidden_size // f)
  assert q.addressable_shards[0].data.shape == (m.hidden_size // f, m.num_heads // t, m.hidden_size // m.num_heads)
  assert up.addressable_shards[0].data.shape == (m.hidden_size // f, m.mlp_dim // t)
  # Adam's moments live where their parameters live.
  mu = state["opt_state"].inner_state[1][0].mu["bert"]["embeddings"]["word"]["embedding"]  # apply_if_finite(clip, adamw)
  assert mu.sharding.is_equivalent_to(word.sharding, 2)


def test_full_train_step_sharded_matches_single_device(no_dropout):
  cfg = replace(no_dropout, mesh=dict(data=1, fsdp=2, tensor=4, rules="fsdp_tp"))
  out = []
  for mesh in (_single(cfg), sh.make_mesh(1, 2, 4)):
    s = trainer.build(cfg, mesh)
    train_fn, _ = trainer.compile_steps(s)
    state = trainer.init_state(s)
    with jax.set_mesh(mesh):
      for i in range(2):
        state, metrics = train_fn(state, trainer.to_global(_batch(cfg, seed=i), s))
    out.append((float(metrics["loss"]), jax.device_get(state["params"])))
  np.testing.assert_allclose(out[1][0], out[0][0], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(out[0][1]), jax.tree.leaves(out[1][1])):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)


def test_gradient_accumulation_equals_full_batch(no_dropout):
  mesh = sh.make_mesh(-1, 1, 1)
  results = []
  for accum in (1, 2):
    cfg = replace(no_dropout, train=dict(grad_accum_steps=accum))
    _, _, loss, grads = _grads(cfg, mesh)
    results.append((loss, grads))
  np.testing.assert_allclose(results[1][0], results[0][0], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(results[0][1]), jax.tree.leaves(results[1][1])):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)


def test_mesh_that_does_not_match_devices():
  with pytest.raises(LmjaxError, match="has 6 devices but this run has 8"):
    sh.make_mesh(3, 2, 1)
  with pytest.raises(LmjaxError, match="does not divide the 8 devices"):
    sh.make_mesh(-1, 3, 1)
  with pytest.raises(LmjaxError, match="at most one axis may be -1"):
    sh.make_mesh(-1, -1, 1)
  with pytest.raises(LmjaxError, match="Unknown mesh.rules"):
    sh.rules_for("zero3")


def test_batch_not_divisible_by_data_parallel_size(tiny_cfg):
  cfg = replace(tiny_cfg, train=dict(batch_size=12))
  with pytest.raises(LmjaxError, match="not divisible by the data-parallel size 8"):
    trainer.validate(cfg, sh.make_mesh(-1, 1, 1))
  cfg = replace(tiny_cfg, mesh=dict(tensor=8))
  with pytest.raises(LmjaxError, match="model.num_heads=4 is not divisible by the mesh's tensor axis"):
    trainer.validate(cfg, sh.make_mesh(1, 1, 8))


def test_constraint_is_a_noop_outside_rules():
  x = jnp.ones((4, 3))
  assert sh.constrain(x, ("batch", None)) is x
  mesh = sh.make_mesh(-1, 1, 1)
  with sh.activation_rules(mesh, sh.rules_for("dp")):
    y = jax.jit(lambda a: sh.constrain(a, ("batch", None)))(jnp.ones((8, 3)))
  assert y.sharding.is_equivalent_to(NamedSharding(mesh, PartitionSpec(("data", "fsdp"))), 2)


def test_parse_mesh_for_the_inference_commands():
  from lmjax import sharding as sh
  assert dict(sh.parse_mesh("1,4,2").shape) == {"data": 1, "fsdp": 4, "tensor": 2}
  assert dict(sh.parse_mesh("-1,2,1").shape) == {"data": 4, "fsdp": 2, "tensor": 1}
  with pytest.raises(LmjaxError, match="three sizes DATA,FSDP,TENSOR"):
    sh.parse_mesh("4x2")
  with pytest.raises(LmjaxError, match="does not divide"):
    sh.parse_mesh("-1,3,1")
