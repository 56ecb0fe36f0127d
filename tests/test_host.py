"""lmjax.host: the CPU-backend settings lmjax's commands apply."""

import json
import os
import subprocess
import sys
from pathlib import Path


from lmjax import host

REPO = Path(__file__).resolve().parent.parent


_FAULTS = """
import json, resource, sys
from lmjax import host
tuned = host.tune()
if len(sys.argv) > 1:
  host.map_large_blocks(int(sys.argv[1]))
  tuned = host.tuned()
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


def _faults(tuning: str, *args: str) -> dict:
  env = {**os.environ, "LMJAX_CPU_TUNING": tuning, "XLA_FLAGS": ""}
  out = subprocess.run([sys.executable, "-c", _FAULTS, *args], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=300, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_freed_host_memory_is_reused_instead_of_faulted_back_in():
  default, tuned = _faults("0"), _faults("1")
  assert default["tuned"] == {"malloc": False, "mapped_from_mib": None}
  assert tuned["tuned"] == {"malloc": True, "mapped_from_mib": None}
  # 3 calls x 64 MB of fresh pages by default (4 KiB each: ~16,000 faults a call) ...
  assert default["faults"] > 20_000, default
  # ... and next to none once freed blocks stay in the heap.
  assert tuned["faults"] < default["faults"] / 20, (default, tuned)


def test_large_blocks_can_be_mapped_again_for_runs_of_several_batch_shapes():
  """map_large_blocks(N): blocks of N MiB and more come from mmap and go back
  to the kernel when freed (faulted in on every call), smaller ones stay in
  the heap (reused without faults)."""
  mapped, kept = _faults("1", "32"), _faults("1", "128")
  assert mapped["tuned"] == {"malloc": True, "mapped_from_mib": 32}
  assert kept["tuned"] == {"malloc": True, "mapped_from_mib": 128}
  assert mapped["faults"] > 20_000, mapped  # the 64 MB block, each call
  assert kept["faults"] < mapped["faults"] / 20, (mapped, kept)
  assert _faults("0", "32")["tuned"] == {"malloc": False, "mapped_from_mib": None}  # only over tune()'s heap


def test_cpu_settings_stay_off_where_an_accelerator_is_expected(monkeypatch):
  monkeypatch.setenv("JAX_PLATFORMS", "cuda")
  assert host.accelerator_expected()
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  assert not host.accelerator_expected()

