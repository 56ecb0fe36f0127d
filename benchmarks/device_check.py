#!/usr/bin/env python
"""The accelerator check: one script that measures lmjax's train steps on a GPU
or TPU in bfloat16 and writes one JSON line per run.

  python benchmarks/device_check.py --out device_check.jsonl [--budget-s 480] [--only llama]

It runs, in this order (most informative first, so a short budget still
yields the main rows):

  1. the attention kernels against each other on random inputs (cudnn / xla /
     einsum: largest difference of outputs and gradients, padding, causal,
     packed-segment and per-head masks);
  2. the 1.1B Llama-style preset (configs/llama_1b.py, seq 2048) with
     model.remat none / dots_no_batch / full;
  3. GPT-2 small (configs/gpt2_owt.py, seq 1024) with the cuDNN and einsum kernels;
  4. BERT-base MLM+NSP at seq 512 (configs/bert_base_pretrain.py; its attention
     dropout keeps the einsum kernel) and with attention dropout off (cuDNN);
  5. T5-small span corruption (input 512, targets 114).

Each row is `lmjax.bench.run` (the real jit-compiled train step on synthetic
batches; MFU against the chip's published dense bf16 peak, peak memory from
the device's allocator). Runs go one after another in this process; a run that
fails records its error and the next one starts. Runs that would start after
--budget-s seconds are skipped (and listed as such), so the script ends
inside a fixed lease.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import sys
import time
import traceback

RUNS = [
    # name, recipe, overrides (--set syntax), bench steps
    ("llama-1b remat=none", "configs/llama_1b.py", ["train.batch_size=16"]),
    ("llama-1b remat=dots_no_batch", "configs/llama_1b.py", ["train.batch_size=16", "model.remat=dots_no_batch"]),
    ("llama-1b remat=full", "configs/llama_1b.py", ["train.batch_size=16", "model.remat=full"]),
    ("gpt2 seq1024 cudnn", "configs/gpt2_owt.py", ["train.batch_size=16"]),
    ("gpt2 seq1024 einsum", "configs/gpt2_owt.py", ["train.batch_size=16", "model.attention=einsum"]),
    ("bert-base seq512 (attention dropout: einsum)", "configs/bert_base_pretrain.py",
     ["train.batch_size=32", "data.max_seq_len=512", "data.max_predictions_per_seq=76"]),
    ("bert-base seq512 no attention dropout, cudnn", "configs/bert_base_pretrain.py",
     ["train.batch_size=32", "data.max_seq_len=512", "data.max_predictions_per_seq=76",
      "model.attention_dropout_rate=0", "model.attention=cudnn"]),
    ("t5-small span corruption 512/114", "t5-small", ["train.batch_size=32", "data.max_seq_len=512"]),
    ("llama-1b remat=dots_no_batch einsum", "configs/llama_1b.py",
     ["train.batch_size=16", "model.remat=dots_no_batch", "model.attention=einsum"]),
]


def attention_check() -> dict:
  """Largest |difference| of each kernel against einsum in float32 (values and
  input gradients), on the inputs and masks the models use."""
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415

  from lmjax import layers as L  # noqa: PLC0415

  b, t, n, kv, h = 2, 256, 8, 2, 64
  ks = jax.random.split(jax.random.key(0), 4)
  q = jax.random.normal(ks[0], (b, t, n, h)) * 0.125
  k, v = jax.random.normal(ks[1], (b, t, kv, h)), jax.random.normal(ks[2], (b, t, kv, h))
  pad = L.padding_bias((jnp.arange(t)[None] < jnp.asarray([[t], [t - 40]])).astype(jnp.int32))
  seg = jnp.where(jnp.arange(t) < t // 3, 1, 2)[None].repeat(b, 0)
  cases = {"causal": (None, True), "padding": (pad, False),
           "segments+causal": (L.mask_to_bias((seg[:, :, None] == seg[:, None, :])[:, None]), True),
           "per-head+padding": (jax.random.normal(ks[3], (1, n, t, t)) + pad, False)}
  out = {}
  for impl in ("xla", "cudnn"):
    for name, (bias, causal) in cases.items():
      def loss(impl, q, k, v, bias=bias, causal=causal):
        o = L.attend(q, k, v, bias, causal=causal, implementation=impl)
        return jnp.sum(o.astype(jnp.float32) * jnp.cos(jnp.arange(o.size).reshape(o.shape))), o
      try:
        dt = jnp.bfloat16 if impl == "cudnn" else jnp.float32
        args = [x.astype(dt) for x in (q, k, v)]
        (_, o), g = jax.value_and_grad(loss, argnums=(1, 2, 3), has_aux=True)(impl, *args)
        (_, o_ref), g_ref = jax.value_and_grad(loss, argnums=(1, 2, 3), has_aux=True)("einsum", *args)
        diff = max(float(jnp.max(jnp.abs(a.astype(jnp.float32) - r.astype(jnp.float32))))
                   for a, r in zip((o, *g), (o_ref, *g_ref)))
        out[f"{impl} {name} ({jnp.dtype(dt).name})"] = diff
      except Exception as e:  # noqa: BLE001  (recorded: which masks a kernel refuses is the finding)
        out[f"{impl} {name}"] = f"error: {type(e).__name__}: {str(e)[:300]}"
  return out


def _config(recipe: str, overrides: list[str]):
  from lmjax import config as config_lib  # noqa: PLC0415
  if recipe == "t5-small":
    from lmjax.models.t5 import T5Config  # noqa: PLC0415
    base = config_lib.load_recipe("configs/t5_span_shakespeare.py")
    base = dataclasses.replace(base, model=T5Config.preset("t5-small", dtype="bfloat16"))
    return config_lib.override(base, overrides)
  return config_lib.override(config_lib.load_recipe(recipe), overrides)


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", required=True, help="JSON lines, one per run (written as each run ends)")
  parser.add_argument("--budget-s", type=float, default=480.0, help="no run starts after this many seconds")
  parser.add_argument("--only", default="", help="run only the rows whose name contains this")
  parser.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                      help="added to every run's overrides (e.g. a CPU smoke test of this script with tiny shapes)")
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--warmup", type=int, default=2)
  args = parser.parse_args()

  from lmjax import host  # noqa: PLC0415
  host.tune()
  import jax  # noqa: PLC0415

  from lmjax import bench  # noqa: PLC0415

  start = time.perf_counter()
  with open(args.out, "a") as f:
    def emit(record):
      record["elapsed_s"] = round(time.perf_counter() - start, 1)
      f.write(json.dumps(record) + "\n")
      f.flush()
      print(json.dumps(record), flush=True)

    emit({"run": "machine", "jax": jax.__version__, "devices": [str(d) for d in jax.devices()],
          "device_kind": jax.devices()[0].device_kind, "platform": jax.devices()[0].platform,
          "date": time.strftime("%Y-%m-%d")})
    if not args.only:
      emit({"run": "attention kernels vs einsum (max abs diff of output and dq, dk, dv)", **attention_check()})
    for name, recipe, overrides in RUNS:
      if args.only and args.only not in name:
        continue
      if time.perf_counter() - start > args.budget_s:
        emit({"run": name, "skipped": f"budget of {args.budget_s:.0f} s spent"})
        continue
      try:
        cfg = _config(recipe, overrides + args.extra)
        result = bench.run(cfg, steps=args.steps, warmup=args.warmup)
        keep = ("tokens_per_sec", "step_time_s", "compile_time_s", "mfu", "tflops_per_sec", "peak_memory_bytes",
                "compiled_memory_bytes", "batch_size", "seq_len", "dtype", "model_flops_per_token",
                "xla_flops_per_token")
        emit({"run": name, "recipe": recipe, "overrides": overrides + args.extra, **{k: result[k] for k in keep},
              "compiled_memory_gib": (result["compiled_memory_bytes"] or 0) / 2**30})
      except Exception as e:  # noqa: BLE001  (an out-of-memory run is a result too)
        emit({"run": name, "error": f"{type(e).__name__}: {str(e)[:600]}",
              "traceback": traceback.format_exc()[-1500:]})
      jax.clear_caches()
      gc.collect()
  return 0


if __name__ == "__main__":
  sys.exit(main())
