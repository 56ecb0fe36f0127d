"""Throughput of a recipe's real, jit-compiled train step (or its evaluation step).

  python -m lmjax.bench --config configs/bert_base_pretrain.py --set train.batch_size=8 --steps 10 --warmup 2
  python -m lmjax.bench --config configs/minilm_sentiment.py --eval
  python -m lmjax.bench --config configs/gpt_tiny_shakespeare.py --generate --prompt-len 64 --new-tokens 64
  python -m lmjax.bench --config configs/t5_g2p.py --generate --prompt-len 16 --new-tokens 16

Synthetic token batches of the recipe's shapes are built once and fed to the
same step `train.py` runs (same shardings, donated state), so no data loading
is measured. Prints one JSON object:

  tokens_per_sec, step_time_s (median of --steps after --warmup), step_time_min_s,
  compile_time_s (trace + lower + compile), xla_compile_s (XLA's part, or the
  persistent cache's load when train.compile_cache names a directory), model_flops_per_token (first-principles count, lmjax.models),
  xla_flops_per_token (XLA's cost analysis of the compiled step, per device x devices),
  tflops_per_sec, peak_flops, peak_source, mfu, peak_memory_bytes, peak_memory_source,
  compiled_memory_bytes (XLA memory analysis of the step: what it needs on one device),
  cpu_tuning (which lmjax.host settings were in effect),
  plus the shapes, devices and precision it ran with.

The peak is the device's published dense peak for its dtype when the device
kind is in the table below; on a CPU it is the best matmul rate measured in the
same process (so MFU reads "share of what this machine's matmul reaches").
An unknown accelerator gets `"mfu": null` rather than an invented peak.

--data-only times the recipe's training example stream instead, with no
model: its real data (prepared into the data cache on first use), --steps
global batches after --warmup, built on one thread. Prints examples_per_sec,
tokens_per_sec (real tokens: masks or segment ids where the batch has them),
padded_tokens_per_sec, cpu_seconds, cores_busy, examples_per_cpu_sec, and
processes / workers used.

  python -m lmjax.bench --config configs/bert_base_pretrain.py --data-only --steps 20

--compile-only compiles the train step from abstract shapes (nothing is
allocated, so it works for models larger than this machine) and prints the
per-device bytes XLA's memory analysis gives it: parameters, optimizer
state, temporaries, the whole step; with the compile time and XLA's FLOPs.

  python -m lmjax.bench --config configs/llama_1b.py --set train.batch_size=1 --compile-only --set model.loss_chunk=256

--generate (decoder and encoder-decoder recipes) times batched decoding
instead: train.batch_size random prompts (a T5's inputs) of --prompt-len
tokens, --new-tokens greedy steps each, with
the KV cache and with full recomputation per token, after one untimed run of
each (compilation). Prints prefill time, decode tokens/s of both and their
ratio; weights are the recipe's random initialisation (speed does not depend
on them).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

from lmjax.errors import LmjaxError, cli

# Dense peak FLOP/s per chip, (bfloat16, float32) from the vendors' data sheets
# (float32 on NVIDIA = TF32 tensor cores, which XLA uses for f32 matmuls by default).
PEAKS = {
    "NVIDIA H100 80GB HBM3": (989e12, 494e12),
    "NVIDIA H100": (989e12, 494e12),
    "NVIDIA H200": (989e12, 494e12),
    "NVIDIA A100-SXM4-80GB": (312e12, 156e12),
    "NVIDIA A100-SXM4-40GB": (312e12, 156e12),
    "NVIDIA A100 80GB PCIe": (312e12, 156e12),
    "NVIDIA L4": (121e12, 60e12),
    "TPU v4": (275e12, 275e12 / 2),
    "TPU v5 lite": (197e12, 197e12 / 2),
    "TPU v5e": (197e12, 197e12 / 2),
    "TPU v5p": (459e12, 459e12 / 2),
    "TPU v6 lite": (918e12, 918e12 / 2),
}


def device_peak(device, dtype: str) -> tuple[float | None, str]:
  """(peak FLOP/s per device, where it came from)."""
  kind = device.device_kind
  if device.platform == "cpu":
    return measure_cpu_peak(), "measured: best float32 matmul in this process"
  for name, (bf16, f32) in PEAKS.items():
    if kind == name or kind.startswith(name):
      return (bf16 if dtype == "bfloat16" else f32), f"table: {name} {dtype} dense"
  return None, f"unknown device kind {kind!r}: no peak in lmjax.bench.PEAKS, so MFU is not reported"


def measure_cpu_peak(n: int = 1024, repeats: int = 10) -> float:
  """Best FLOP/s of an n x n float32 matmul chain on the first device (the
  best of several: on a shared machine the slow repeats measure the neighbours)."""
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415

  k = 8  # matmuls per call, so dispatch overhead is amortised

  @jax.jit
  def chain(a, b):
    for _ in range(k):
      a = jnp.tanh(a @ b)  # tanh keeps values bounded; its cost is O(n^2), noise next to n^3
    return a

  dev = jax.devices()[0]
  a = jax.device_put(jnp.ones((n, n), jnp.float32) / n, dev)
  b = jax.device_put(jnp.eye(n, dtype=jnp.float32), dev)
  chain(a, b).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    chain(a, b).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2 * n**3 * k / best


def model_flops_per_token(cfg, task, training: bool) -> float:
  return cfg.model.flops_per_token(task.workload(cfg), training=training)


def _resolve(cfg):
  """Fine-tuning recipes: the architecture of their init_from model (no weights are read)."""
  from lmjax import tasks  # noqa: PLC0415
  if cfg.train.init_from:
    try:
      cfg = tasks.get(cfg.train.objective).configure(cfg, None, resumed=False)
    except LmjaxError as e:
      print(f"lmjax.bench: {e} Benchmarking the recipe's own model section instead.", file=sys.stderr)
  return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, init_from=""))


def run(cfg, *, steps: int = 10, warmup: int = 2, mode: str = "train", seed: int = 0) -> dict:
  import jax  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415

  from lmjax import host, tasks, trainer  # noqa: PLC0415
  from lmjax import sharding as sh  # noqa: PLC0415

  if steps < 1 or warmup < 0:
    raise LmjaxError("--steps must be at least 1 and --warmup at least 0.")
  cfg = _resolve(cfg)
  if cfg.train.compile_cache:  # measure a cold compile unless a cache directory is asked for
    trainer.compile_cache(cfg.train.compile_cache, cfg.data.cache_dir)
  task = tasks.get(cfg.train.objective)
  mesh = sh.make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
  trainer.validate(cfg, mesh, task)
  setup = trainer.build(cfg, mesh)
  state = trainer.init_state(setup)
  n_params = sum(int(np.prod(p.shape, dtype=np.int64)) for p in jax.tree.leaves(state["params"]))
  train_fn, eval_fn = trainer.compile_steps(setup)
  with jax.set_mesh(mesh):
    batch = trainer.to_global(tasks.base.synthetic_batch(task, cfg, np.random.default_rng(seed)), setup)
    if mode == "train":
      fn, args = train_fn, (state, batch)
    else:
      fn, args = eval_fn, (state["params"], batch)
    t = time.perf_counter()
    lowered = fn.lower(*args)
    lowered_at = time.perf_counter()
    compiled = lowered.compile()
    compile_time = time.perf_counter() - t
    xla_compile = time.perf_counter() - lowered_at
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    xla_flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
    times = []
    for i in range(warmup + steps):
      t = time.perf_counter()
      if mode == "train":
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics["loss"])
      else:
        jax.block_until_ready(compiled(state["params"], batch))
      if i >= warmup:
        times.append(time.perf_counter() - t)
  tokens = cfg.train.batch_size * cfg.data.max_seq_len
  step_time = statistics.median(times)
  flops_per_token = model_flops_per_token(cfg, task, training=mode == "train")
  n_dev = mesh.devices.size
  peak, peak_source = device_peak(jax.devices()[0], cfg.model.dtype)
  # CPU "devices" of one process share the host's cores: the measured peak is
  # already the whole machine's. Accelerators add up.
  total_peak = None if peak is None else peak if jax.devices()[0].platform == "cpu" else peak * n_dev
  achieved = flops_per_token * tokens / step_time
  memory, memory_source = _peak_memory(compiled)
  return {
      "config": None, "mode": mode, "family": type(cfg.model).__name__, "objective": task.name,
      "batch_size": cfg.train.batch_size, "seq_len": cfg.data.max_seq_len, "dtype": cfg.model.dtype,
      "params": n_params, "devices": n_dev, "device_kind": jax.devices()[0].device_kind, "platform": jax.devices()[0].platform,
      "tokens_per_sec": tokens / step_time,
      "step_time_s": step_time, "step_time_min_s": min(times), "steps": steps, "warmup": warmup,
      "compile_time_s": compile_time,  # tracing + lowering + XLA's compilation (or its load from the cache)
      "xla_compile_s": xla_compile,
      "model_flops_per_token": flops_per_token,
      # cost_analysis counts one device's program; x devices for the whole step.
      # (not on GPUs: XLA's cost analysis leaves out the cuBLAS / cuDNN calls that do the matmuls)
      "xla_flops_per_token": None if jax.devices()[0].platform == "gpu" else xla_flops * n_dev / tokens,
      "tflops_per_sec": achieved / 1e12,
      "peak_flops": total_peak, "peak_source": peak_source,
      "mfu": achieved / total_peak if total_peak else None,
      "peak_memory_bytes": memory, "peak_memory_source": memory_source,
      "compiled_memory_bytes": trainer.compiled_bytes(compiled)[1],
      "cpu_tuning": host.tuned(),
  }


def run_compile(cfg) -> dict:
  """The train step compiled from abstract shapes: memory and compile time, no step run."""
  import jax  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415

  from lmjax import tasks, trainer  # noqa: PLC0415
  from lmjax import sharding as sh  # noqa: PLC0415

  cfg = _resolve(cfg)
  task = tasks.get(cfg.train.objective)
  mesh = sh.make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
  trainer.validate(cfg, mesh, task)
  setup = trainer.build(cfg, mesh)
  train_fn, _ = trainer.compile_steps(setup)
  fields = task.batch(cfg)
  batch = {name: jax.ShapeDtypeStruct((cfg.train.batch_size, *f.shape), f.dtype, sharding=setup.batch_sharding[name])
           for name, f in fields.items()}
  t = time.perf_counter()
  compiled = train_fn.lower(setup.abstract_state, batch).compile()
  compile_s = time.perf_counter() - t
  temp, total = trainer.compiled_bytes(compiled)
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  n_params = sum(int(np.prod(p.shape, dtype=np.int64)) for p in jax.tree.leaves(setup.abstract_state["params"]))
  tokens = cfg.train.batch_size * cfg.data.max_seq_len
  return {"config": None, "mode": "compile", "family": type(cfg.model).__name__, "objective": task.name,
          "batch_size": cfg.train.batch_size, "seq_len": cfg.data.max_seq_len, "dtype": cfg.model.dtype,
          "remat": getattr(cfg.model, "remat", None), "loss_chunk": getattr(cfg.model, "loss_chunk", None),
          "params": n_params, "devices": mesh.devices.size, "device_kind": jax.devices()[0].device_kind,
          "compile_time_s": compile_s,
          "parameter_bytes": trainer.per_device_bytes(setup.abstract_state["params"]),
          "optimizer_state_bytes": trainer.per_device_bytes(setup.abstract_state["opt_state"]),
          "temporary_bytes": temp, "compiled_memory_bytes": total,
          "xla_flops_per_token": (float(cost["flops"]) * mesh.devices.size / tokens
                                  if cost and "flops" in cost and jax.devices()[0].platform != "gpu" else None)}


def run_generate(cfg, *, prompt_len: int = 64, new_tokens: int = 64, seed: int = 0) -> dict:
  """Decode throughput with and without the KV cache (see the module docstring)."""
  import jax  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415
  from flax import nnx  # noqa: PLC0415

  from lmjax import models  # noqa: PLC0415
  from lmjax.generate import Generator, Sampling  # noqa: PLC0415
  from lmjax.models.family import Workload  # noqa: PLC0415

  cfg = _resolve(cfg)
  family = models.of(cfg.model)
  if family.generation is None:
    raise LmjaxError(f"--generate needs a recipe of a family that generates text (a decoder); this recipe's "
                     f"{family.name!r} model does not, e.g. use configs/gpt_tiny_shakespeare.py.")
  m = cfg.model
  encoder_decoder = family.generation.encoder_decoder
  window = getattr(m, "max_position_embeddings", None)  # None: relative positions (T5)
  if prompt_len < 1 or new_tokens < 1 or (window is not None and prompt_len + new_tokens > window):
    raise LmjaxError(f"--prompt-len {prompt_len} + --new-tokens {new_tokens} must be positive and fit the context "
                     f"window (model.max_position_embeddings={window}).")
  model_cls = family.model_class(family.generation.model)
  params = nnx.to_pure_dict(nnx.split(model_cls(m, rngs=nnx.Rngs(seed)))[1])
  gen = Generator(m, params)
  b = cfg.train.batch_size
  prompts = np.random.default_rng(seed).integers(5, m.vocab_size, (b, prompt_len)).tolist()
  greedy = Sampling(max_new_tokens=new_tokens, temperature=0.0)
  out = {"config": None, "mode": "generate", "family": type(m).__name__, "batch_size": b, "prompt_len": prompt_len,
         "new_tokens": new_tokens, "dtype": m.dtype, "device_kind": jax.devices()[0].device_kind,
         "platform": jax.devices()[0].platform}
  # An encoder-decoder reads the prompts as its inputs and writes new_tokens from its start token.
  call = ((lambda use_cache: gen.generate(inputs=prompts, sampling=greedy, use_cache=use_cache)) if encoder_decoder else
          (lambda use_cache: gen.generate(prompts, greedy, use_cache=use_cache)))
  for name, use_cache in (("cache", True), ("no_cache", False)):
    call(use_cache)  # compiles
    r = call(use_cache)
    out[f"{name}_prefill_s"] = r.prefill_s
    out[f"{name}_decode_s"] = r.decode_s
    out[f"{name}_tokens_per_sec"] = b * r.steps / r.decode_s
  out["cache_speedup"] = out["cache_tokens_per_sec"] / out["no_cache_tokens_per_sec"]
  # Forward FLOPs of one decoded token at the mean context (prompt + half the new tokens);
  # flops_per_token(T) charges attention over T / 2 keys, hence 2x the context.
  if encoder_decoder:  # the decoder's share (the encoder and the cross-attention keys/values run once per input)
    with_targets = m.flops_per_token(Workload(prompt_len, target_len=new_tokens), training=False)
    flops = (with_targets - m.flops_per_token(Workload(prompt_len, target_len=0), training=False)) * (
        prompt_len / new_tokens)
  else:
    context = prompt_len + new_tokens / 2
    flops = m.flops_per_token(Workload(int(2 * context)), training=False)
  peak, peak_source = device_peak(jax.devices()[0], m.dtype)
  out["decode_flops_per_token"] = flops
  out["peak_flops"], out["peak_source"] = peak, peak_source
  out["decode_mfu"] = flops * out["cache_tokens_per_sec"] / peak if peak else None
  return out


def run_data(cfg, *, batches: int = 20, warmup: int = 2) -> dict:
  """The training example stream alone (`--data-only`): the recipe's task
  opens its real data (preparing it into the data cache on first use, in a
  scratch workdir) and `batches` global batches are built after `warmup`, on
  the calling thread (no prefetch), so the figures are the example maker's
  own: examples/s, tokens/s (real tokens where the batch marks padding,
  encoder and decoder sides together), and per CPU-second of this process."""
  import tempfile  # noqa: PLC0415

  import numpy as np  # noqa: PLC0415

  from lmjax import tasks  # noqa: PLC0415
  from lmjax import sharding as sh  # noqa: PLC0415
  from lmjax.data.stream import BatchIterator  # noqa: PLC0415

  if batches < 1 or warmup < 0:
    raise LmjaxError("--steps (batches timed) must be at least 1 and --warmup at least 0.")
  task = tasks.get(cfg.train.objective)
  mesh = sh.make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
  with tempfile.TemporaryDirectory(prefix="lmjax-data-bench-") as workdir:
    t = time.perf_counter()
    cfg = task.configure(cfg, Path(workdir), resumed=False)
    data = task.open(cfg, Path(workdir), mesh, resumed=False)
    open_s = time.perf_counter() - t
    it = BatchIterator(data.train, cfg.train.batch_size, prefetch=0)
    for _ in range(warmup):
      next(it)
    wall, cpu = time.perf_counter(), time.process_time()
    rows = real = padded = 0
    for _ in range(batches):
      batch = next(it)
      n = len(next(iter(batch.values())))
      rows += n
      # Token slots: the encoder's (or only) sequence, plus a decoder's targets; real = not padding.
      masks = [batch[k] for k in ("input_mask", "segment_ids", "input_segments", "target_segments") if k in batch]
      real += sum(int(np.count_nonzero(m)) for m in masks) if masks else n * cfg.data.max_seq_len
      padded += sum(m.size for m in masks) if masks else n * cfg.data.max_seq_len
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
  return {"mode": "data", "objective": task.name, "dataset": cfg.data.dataset, "batch_size": cfg.train.batch_size,
          "seq_len": cfg.data.max_seq_len, "batches": batches, "examples": rows,
          "examples_per_sec": rows / wall, "tokens_per_sec": real / wall,
          "padded_tokens_per_sec": padded / wall,
          "cpu_seconds": cpu, "cores_busy": cpu / wall, "examples_per_cpu_sec": rows / max(cpu, 1e-9),
          "processes": 1, "workers": 1, "open_s": open_s}


def _peak_memory(compiled) -> tuple[int | None, str]:
  import jax  # noqa: PLC0415

  from lmjax import trainer  # noqa: PLC0415

  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return int(stats["peak_bytes_in_use"]), "device memory_stats (peak_bytes_in_use, device 0)"
  total = trainer.compiled_bytes(compiled)[1]
  if total is None:
    return None, "unavailable on this backend"
  return total, "XLA memory_analysis of the step (arguments + outputs + temporaries - donated)"


@cli
def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", required=True, help="recipe, e.g. configs/bert_base_pretrain.py[:ARG]")
  parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
  parser.add_argument("--steps", type=int, default=10, help="timed steps (the median is reported)")
  parser.add_argument("--warmup", type=int, default=2, help="untimed steps after compilation")
  parser.add_argument("--eval", action="store_true", help="time the evaluation (forward) step instead")
  parser.add_argument("--generate", action="store_true", help="time batched decoding, with and without the KV cache")
  parser.add_argument("--prompt-len", type=int, default=64, help="--generate: prompt tokens per row")
  parser.add_argument("--new-tokens", type=int, default=64, help="--generate: tokens generated per row")
  parser.add_argument("--compile-only", action="store_true",
                      help="compile the train step from abstract shapes and report its memory; run nothing")
  parser.add_argument("--data-only", action="store_true",
                      help="time the training example stream alone (examples/s, tokens/s, per CPU-second)")
  args = parser.parse_args(argv)
  from lmjax import config as config_lib  # noqa: PLC0415
  cfg = config_lib.override(config_lib.load_recipe(args.config), args.overrides)
  if args.data_only:
    result = run_data(cfg, batches=args.steps, warmup=args.warmup)
  elif args.compile_only:
    result = run_compile(cfg)
  elif args.generate:
    result = run_generate(cfg, prompt_len=args.prompt_len, new_tokens=args.new_tokens)
  else:
    result = run(cfg, steps=args.steps, warmup=args.warmup, mode="eval" if args.eval else "train")
  result["config"] = args.config
  print(json.dumps(result, indent=1))
  return 0


if __name__ == "__main__":
  sys.exit(main())
