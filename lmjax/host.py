"""Process-wide settings that make XLA's CPU backend faster; lmjax's commands apply them.

`python train.py`, `python -m lmjax.bench`, `python -m lmjax.predict`,
`python -m lmjax.generate` and `benchmarks/peer.py` call `tune()` before JAX
starts. Code that imports lmjax and runs its own steps can call it too (first
thing, before any JAX operation). `LMJAX_CPU_TUNING=0` turns both settings off;
they are not applied where JAX will run on a GPU or TPU (`accelerator_expected`).

1. Keep freed host memory for reuse (glibc malloc). XLA allocates a step's
   temporaries afresh on every call; glibc serves big blocks with mmap and
   returns them to the kernel on free, so every step faulted its ~2 GB of
   temporaries back in page by page (BERT-base, seq 128, batch 8: 440,000
   minor faults and ~1.8 s of kernel time per step on 2 cores). With mmap off,
   one arena and no trimming, the second step onwards faults nothing. The cost:
   the process keeps its peak memory until it exits, as a training run does
   anyway.
2. Threefry unrolled on CPU. JAX lowers its threefry random-bit generator on
   CPU as a rolled 5-iteration loop (small programs, fast compiles), which
   writes every round of state for a whole dropout mask to memory; the
   unrolled form it uses on TPU fuses into one pass. Same algorithm, same
   bits, so runs stay bit-identical; compiles take longer (BERT-base train
   step ~30 s -> ~48 s, GPT-2 small ~33 s -> ~60 s on 2 cores).
   This touches a private JAX module: when it moves, `tune` leaves the
   default in place (`tuned()["threefry"]` says which).
"""

from __future__ import annotations

import ctypes
import os
import sys

# glibc <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8

_state = {"malloc": False, "threefry": False}


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
  if not _state["threefry"]:
    _state["threefry"] = unroll_threefry_on_cpu()
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


def unroll_threefry_on_cpu() -> bool:
  try:
    from jax._src.interpreters import mlir  # noqa: PLC0415
    from jax._src.random import threefry2x32 as tf  # noqa: PLC0415
    mlir.register_lowering(tf.threefry2x32_p, tf._threefry2x32_lowering_rule, platform="cpu")  # noqa: SLF001
  except (ImportError, AttributeError):
    return False
  return True
