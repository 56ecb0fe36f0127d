"""A process-wide setting that makes XLA's CPU backend faster; lmjax's commands apply it.

`python train.py`, `python -m lmjax.bench`, `python -m lmjax.predict`,
`python -m lmjax.generate` and `benchmarks/peer.py` call `tune()` before JAX
starts. Code that imports lmjax and runs its own steps can call it too (first
thing, before any JAX operation). `LMJAX_CPU_TUNING=0` turns it off; it is not
applied where JAX will run on a GPU or TPU (`accelerator_expected`).

1. Keep freed host memory for reuse (glibc malloc). XLA allocates a step's
   temporaries afresh on every call; glibc serves big blocks with mmap and
   returns them to the kernel on free, so every step faulted its ~2 GB of
   temporaries back in page by page (BERT-base, seq 128, batch 8: 440,000
   minor faults and ~1.8 s of kernel time per step on 2 cores). With mmap off,
   one arena and no trimming, the second step onwards faults nothing. The cost:
   the process keeps its peak memory until it exits, as a training run does
   anyway.

(An unrolled threefry lowering used to be the second setting; dropout masks
now come from `layers.keep_mask`, a counter-based hash, and threefry draws
nothing large inside a training step.)
"""

from __future__ import annotations

import ctypes
import os
import sys

# glibc <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8

_state = {"malloc": False, "mapped_from_mib": None}


def accelerator_expected() -> bool:
  """Whether JAX will run on a GPU or TPU, judged before JAX starts: $JAX_PLATFORMS
  names one, or (unset) a CUDA/ROCm plugin or libtpu is installed."""
  import importlib.util  # noqa: PLC0415

  platforms = os.environ.get("JAX_PLATFORMS", "").lower()
  if platforms:
    return platforms.split(",")[0].strip() not in ("cpu", "")
  plugins = ("jax_cuda13_plugin", "jax_cuda12_plugin", "jax_rocm7_plugin", "jax_rocm60_plugin", "libtpu")
  return any(importlib.util.find_spec(name) is not None for name in plugins)


def tune() -> dict:
  """Applies the settings above (once; idempotent) when JAX will run on the
  CPU (`accelerator_expected` is False). Returns which took effect."""
  if os.environ.get("LMJAX_CPU_TUNING", "1") == "0" or accelerator_expected():
    return dict(_state)
  if not _state["malloc"]:
    _state["malloc"] = keep_freed_memory()
  return dict(_state)


def tuned() -> dict:
  return dict(_state)


def keep_freed_memory() -> bool:
  """glibc only (Linux); False elsewhere. Takes full effect before JAX starts its threads."""
  if not sys.platform.startswith("linux"):
    return False
  try:
    libc = ctypes.CDLL("libc.so.6")
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return False
  mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
  # -1 disables trimming altogether (mallopt(3)); 0 mmaps = large blocks come
  # from the heap; one arena, so worker threads do not mmap heaps of their own.
  return bool(mallopt(_M_ARENA_MAX, 1) and mallopt(_M_MMAP_MAX, 0) and mallopt(_M_TRIM_THRESHOLD, -1))


def release_free_memory() -> bool:
  """Gives the heap's free pages back to the kernel now (glibc's malloc_trim), e.g.
  after training a tokenizer, whose large temporary allocations `tune()`'s
  setting would otherwise keep for the rest of the run. False where unavailable."""
  if not sys.platform.startswith("linux"):
    return False
  try:
    return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
  except (OSError, AttributeError):
    return False


def map_large_blocks(threshold_mib: int = 64) -> bool:
  """Serves blocks of `threshold_mib` MiB and more with mmap again, returned
  to the kernel when freed; smaller ones stay in the heap. Where `tune()`'s
  setting is in force; False elsewhere.

  For runs whose steps have several batch shapes (length buckets): each
  shape's program asks for a temporary block of another size, and in a heap
  that never returns memory those blocks and the small allocations between
  steps fragment it: the MiniLM sentiment recipe (4 buckets) held 0.5-1.3 GB
  of free heap at the end and peaked at 2.6-2.9 GB; with its step
  temporaries mapped, 2.2 GB, for ~3-6% more wall time (the pages of each
  step's temporaries are faulted in again)."""
  if not _state["malloc"]:
    return False
  mallopt = ctypes.CDLL("libc.so.6").mallopt
  mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
  if mallopt(_M_MMAP_THRESHOLD, threshold_mib << 20) and mallopt(_M_MMAP_MAX, 1 << 16):
    _state["mapped_from_mib"] = threshold_mib
    return True
  return False
