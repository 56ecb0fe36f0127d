"""lmjax.host: the CPU-backend settings lmjax's commands apply."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from lmjax import host

REPO = Path(__file__).resolve().parent.parent


def _rule():
  from jax._src.interpreters import mlir  # noqa: PLC0415
  from jax._src.random import threefry2x32 as tf  # noqa: PLC0415
  return mlir, tf


def test_unrolled_threefry_gives_the_same_bits_without_the_loop():
  mlir, tf = _rule()
  key = jax.random.key(3)
  shape = (2, 3, 64, 64)

  def draw(k):
    return jax.random.bits(k, shape, jnp.uint32), jax.random.bernoulli(jax.random.fold_in(k, 1), 0.9, shape)

  try:
    # JAX's default first: an earlier test in this worker may have run a
    # command that called host.tune().
    mlir.register_lowering(tf.threefry2x32_p, tf._threefry2x32_cpu_lowering_rule, platform="cpu")
    rolled = jax.jit(draw).lower(key).compile()
    assert host.unroll_threefry_on_cpu(), "this JAX moved its threefry lowering: update lmjax.host"
    unrolled = jax.jit(lambda k: draw(k)).lower(key).compile()  # a new function: lowered afresh
  finally:  # leave the process as host's state says it is
    rule = tf._threefry2x32_lowering_rule if host.tuned()["threefry"] else tf._threefry2x32_cpu_lowering_rule
    mlir.register_lowering(tf.threefry2x32_p, rule, platform="cpu")
  assert " while(" in rolled.as_text()
  assert " while(" not in unrolled.as_text()
  for a, b in zip(rolled(key), unrolled(key), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


_FAULTS = """
import json, resource, sys
from lmjax import host
tuned = host.tune()
import jax, jax.numpy as jnp
w = jnp.full((1024, 1024), 1e-3, jnp.float32)
f = jax.jit(lambda x: (w @ jnp.tanh(w @ x)).sum(0))  # two 32 MB products: one 64 MB temporary block
x = jnp.ones((1024, 8192), jnp.float32)
for _ in range(2):
  f(x).block_until_ready()
r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
  f(x).block_until_ready()
print(json.dumps({"tuned": tuned, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0}))
"""


def _faults(tuning: str) -> dict:
  env = {**os.environ, "LMJAX_CPU_TUNING": tuning, "XLA_FLAGS": ""}
  out = subprocess.run([sys.executable, "-c", _FAULTS], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=300, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_freed_host_memory_is_reused_instead_of_faulted_back_in():
  default, tuned = _faults("0"), _faults("1")
  assert default["tuned"] == {"malloc": False, "threefry": False}
  assert tuned["tuned"] == {"malloc": True, "threefry": True}
  # 3 calls x 64 MB of fresh pages by default (4 KiB each: ~16,000 faults a call) ...
  assert default["faults"] > 20_000, default
  # ... and next to none once freed blocks stay in the heap.
  assert tuned["faults"] < default["faults"] / 20, (default, tuned)


def test_cpu_settings_stay_off_where_an_accelerator_is_expected(monkeypatch):
  monkeypatch.setenv("JAX_PLATFORMS", "cuda")
  assert host.accelerator_expected()
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  assert not host.accelerator_expected()

