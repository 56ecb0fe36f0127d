"""Sharded state, the pure train/eval steps, and the training loop.

The loop knows only the task protocol (`lmjax.tasks.base.Task`: batch
declaration, data, loss, evaluators) and the family record
(`lmjax.models.family.Family`); it names no family and no objective.

The state is a pytree {"step", "params", "opt_state"}: parameters as a plain
nested dict (from `nnx.split` + `nnx.to_pure_dict`), merged back into the
module inside the step. One `jax.jit` per step with explicit shardings and
the state donated. Dropout keys derive from (seed, step) and batches from the
stream position, so a resumed run repeats an uninterrupted one exactly.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from lmjax import config as config_lib
from lmjax import host
from lmjax import models, optim, tasks
from lmjax import sharding as sh
from lmjax.checkpoint import Checkpointer, param_shapes
from lmjax.errors import LmjaxError
from lmjax.metrics import MetricsWriter, log


def validate(cfg: config_lib.Config, mesh, task: tasks.Task | None = None) -> None:
  """Config checks that would otherwise fail deep inside JAX: the task's own,
  the family's divisibility against the mesh, and the batch against the mesh."""
  task = task or tasks.get(cfg.train.objective)
  family = models.of(cfg.model)
  if family.name not in task.families:
    able = sorted(t.name for t in tasks.TASKS.values() if family.name in t.families)
    raise LmjaxError(f"train.objective={task.name!r} trains a {' or '.join(map(repr, task.families))} model, but the recipe's "
                     f"model is a {family.name!r} config. Pick an objective for it ({family.name}: "
                     f"{', '.join(able)}) or another recipe.")
  if task.model not in family.models:
    raise LmjaxError(f"The {family.name!r} family has no {task.model!r} model, which train.objective="
                     f"{task.name!r} trains.")
  d, t = cfg.data, cfg.train
  if d.max_seq_len < 2:
    raise LmjaxError(f"data.max_seq_len={d.max_seq_len} is too short; use at least 2.")
  task.check(cfg)
  unused = config_lib.unused_data_fields(d, task.data_groups)
  if unused:
    log(f"warning: {', '.join(f'data.{f}' for f in unused)} "
        f"{'is' if len(unused) == 1 else 'are'} set but train.objective={task.name!r} does not read "
        f"{'it' if len(unused) == 1 else 'them'} (its data groups: common, {', '.join(task.data_groups) or '-'}).")
  if t.steps < 1 or t.batch_size < 1 or t.grad_accum_steps < 1:
    raise LmjaxError("train.steps, train.batch_size and train.grad_accum_steps must be positive.")
  if t.batch_size % t.grad_accum_steps:
    raise LmjaxError(f"train.batch_size={t.batch_size} is not divisible by train.grad_accum_steps="
                     f"{t.grad_accum_steps}.")
  micro = t.batch_size // t.grad_accum_steps
  dp = sh.data_parallel_size(mesh)
  if micro % dp:
    raise LmjaxError(
        f"The global batch per micro-step ({micro} = train.batch_size {t.batch_size} / grad_accum_steps "
        f"{t.grad_accum_steps}) is not divisible by the data-parallel size {dp} (mesh data x fsdp = "
        f"{mesh.shape['data']} x {mesh.shape['fsdp']}). Use a batch size that is a multiple of {dp * t.grad_accum_steps}.")
  if t.batch_size % jax.process_count():
    raise LmjaxError(f"train.batch_size={t.batch_size} must be divisible by the {jax.process_count()} processes.")
  models.check_mesh(cfg.model, mesh)


@dataclasses.dataclass
class Setup:
  """Everything a step needs that is not an array."""
  cfg: config_lib.Config
  mesh: jax.sharding.Mesh
  rules: tuple
  graphdef: nnx.GraphDef
  tx: optax.GradientTransformation
  task: tasks.Task
  state_sharding: dict
  batch_sharding: dict
  abstract_state: dict
  meta: dict


def build(cfg: config_lib.Config, mesh) -> Setup:
  rules = sh.rules_for(cfg.mesh.rules)
  task = tasks.get(cfg.train.objective)
  model_cls = models.model_class(cfg.model, task.model)
  abstract_model = nnx.eval_shape(lambda: model_cls(cfg.model, rngs=nnx.Rngs(0)))
  graphdef, abstract_params = nnx.split(abstract_model)
  param_sharding = sh.param_shardings(abstract_model, mesh, rules)
  abstract_params = nnx.to_pure_dict(abstract_params)
  tx = optim.make(cfg.train)
  abstract_opt = jax.eval_shape(tx.init, abstract_params)
  replicated = NamedSharding(mesh, PartitionSpec())
  # Optimizer moments mirror the parameters and take their shardings.
  opt_sharding = optax.tree_map_params(tx, lambda _, s: s, abstract_opt, param_sharding,
                                       transform_non_params=lambda _: replicated)
  state_sharding = {"step": replicated, "params": param_sharding, "opt_state": opt_sharding}
  abstract_state = {"step": jax.ShapeDtypeStruct((), jnp.int32), "params": abstract_params,
                    "opt_state": abstract_opt}
  abstract_state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                abstract_state, state_sharding)
  meta = {"family": models.family_of(cfg.model), "task": task.model, "model": dataclasses.asdict(cfg.model),
          "shapes": param_shapes(abstract_params), "optimizer": optim.STATE_LAYOUT}
  # From the task's one declaration of its batch: leading axis over the
  # batch axes, the rest as the field's logical axes say.
  batch_sharding = {name: NamedSharding(mesh, sh.spec(("batch", *f.axes), rules))
                    for name, f in task.batch(cfg).items()}
  return Setup(cfg=cfg, mesh=mesh, rules=rules, graphdef=graphdef, tx=tx, task=task, state_sharding=state_sharding,
               batch_sharding=batch_sharding, abstract_state=abstract_state, meta=meta)


# Words that turn the compilation cache off rather than naming a directory
# (`--set train.compile_cache=none` once made a directory called "none").
_OFF = ("off", "none", "false", "no", "0")


def compile_cache(setting: str = "", data_cache: str = "") -> str | None:
  """Turns on JAX's persistent compilation cache (`train.compile_cache`): ""
  puts it under the data cache, "off" (or "none", "false", "no", "0") leaves
  it off, anything else is the directory. $JAX_COMPILATION_CACHE_DIR, when
  set, wins. Returns the directory."""
  if setting.strip().lower() in _OFF:
    return None
  if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return os.environ["JAX_COMPILATION_CACHE_DIR"]
  if setting:
    path = os.path.expanduser(setting)
  else:
    from lmjax.data.fetch import cache_root  # noqa: PLC0415
    path = os.path.join(cache_root(data_cache), "xla")
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise LmjaxError(f"train.compile_cache: cannot create {path} ({e.strerror}); give a writable directory "
                     "or --set train.compile_cache=off.") from None
  jax.config.update("jax_compilation_cache_dir", path)
  # Cache every step that took a second or more to compile (the default), whatever its size.
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
  return path


def init_state(setup: Setup, pretrained: dict | None = None) -> dict:
  """Fresh state; `pretrained` ({param path: array}) replaces those parameters.

  Adam's moments start at zero whatever the parameters, so replacing
  parameters after `tx.init` is the same as initialising from them.
  """
  s = setup
  model_cls = models.model_class(s.cfg.model, s.task.model)

  def create(key):
    params = nnx.to_pure_dict(nnx.split(model_cls(s.cfg.model, rngs=nnx.Rngs(key)))[1])
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": s.tx.init(params)}

  # The key is an argument, not a constant: a program without inputs invites
  # XLA to constant-fold the random initialisation at compile time (the same
  # values as nnx.Rngs(seed)).
  with jax.set_mesh(s.mesh):
    state = jax.jit(create, out_shardings=s.state_sharding)(jax.random.key(s.cfg.train.seed))
  if pretrained:
    shardings = s.state_sharding["params"]
    placed = {}
    for path, value in pretrained.items():
      sharding = shardings
      for key in path:
        sharding = sharding[key] if isinstance(sharding, dict) and key in sharding else None
        if sharding is None:
          raise LmjaxError(f"The model has no parameter {'/'.join(map(str, path))} to load.")
      value = np.asarray(value, np.float32)
      placed[path] = jax.make_array_from_callback(value.shape, sharding, lambda idx, v=value: v[idx])
    from lmjax.convert.common import merge_into  # noqa: PLC0415
    state["params"] = merge_into(state["params"], placed)
  return state


def _micro_batches(batch: dict, n: int) -> dict:
  """[B, ...] -> [n, B/n, ...], micro-batch i = rows i, i+n, ...

  Interleaving keeps each micro-batch spread evenly over the data-parallel
  shards, so the split needs no communication.
  """
  def split(x):
    x = x.reshape(x.shape[0] // n, n, *x.shape[1:]).swapaxes(0, 1)
    return sh.constrain(x, (None, "batch") + (None,) * (x.ndim - 2))
  return jax.tree.map(split, batch)


def compute_grads(params: dict, batch: dict, rng, *, s: Setup):
  """(loss, stats, grads) of the objective over the global batch.

  With grad_accum_steps > 1 the batch is split into micro-batches whose
  gradients are summed in a `lax.scan`; the objective divides by whole-batch
  counts, so the sum equals the full-batch gradient.
  """
  tc = s.cfg.train
  denominators = s.task.denominators(batch)

  def loss_fn(p, micro_batch, micro_rng):
    model = nnx.merge(s.graphdef, p)
    return s.task.loss(model, micro_batch, micro_rng, denominators)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if tc.grad_accum_steps == 1:
    (loss, stats), grads = grad_fn(params, batch, rng)
    return loss, stats, grads
  micro = _micro_batches(batch, tc.grad_accum_steps)
  add = lambda a, b: jax.tree.map(jnp.add, a, b)  # noqa: E731

  def body(carry, xs):
    grads_acc, loss_acc, stats_acc = carry
    i, mb = xs
    micro_rng = None if rng is None else jax.random.fold_in(rng, i)
    (loss_i, stats_i), grads_i = grad_fn(params, mb, micro_rng)
    return (add(grads_acc, grads_i), loss_acc + loss_i, add(stats_acc, stats_i)), None

  first = jax.tree.map(lambda x: x[0], micro)
  stats_shape = jax.eval_shape(lambda: loss_fn(params, first, rng)[1])
  carry = (jax.tree.map(jnp.zeros_like, params), jnp.zeros((), jnp.float32),
           jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), stats_shape))
  (grads, loss, stats), _ = jax.lax.scan(body, carry, (jnp.arange(tc.grad_accum_steps), micro))
  return loss, stats, grads


def train_step(state: dict, batch: dict, *, s: Setup) -> tuple[dict, dict]:
  """One optimizer step over the global batch."""
  tc = s.cfg.train
  rng = jax.random.fold_in(jax.random.fold_in(jax.random.key(tc.seed), 1), state["step"])
  params = state["params"]
  loss, stats, grads = compute_grads(params, batch, rng, s=s)
  updates, opt_state = s.tx.update(grads, state["opt_state"], params)
  new_params = optax.apply_updates(params, updates)
  metrics = {
      "loss": loss,
      "grad_norm": optax.tree.norm(grads),
      "param_norm": optax.tree.norm(new_params),
      "update_norm": optax.tree.norm(updates),
      "learning_rate": optim.schedule(tc)(state["step"]),
      "nonfinite_skips": optim.nonfinite_skips(opt_state),
      "stats": stats,
  }
  return {"step": state["step"] + 1, "params": new_params, "opt_state": opt_state}, metrics


def eval_step(params: dict, batch: dict, *, s: Setup) -> dict:
  model = nnx.merge(s.graphdef, params)
  _, stats = s.task.loss(model, batch, None, s.task.denominators(batch))
  return stats


def predict_step(params: dict, batch: dict, *, s: Setup) -> dict:
  return s.task.predict(nnx.merge(s.graphdef, params), batch)


def under_rules(fn, s: Setup):
  """fn(*args, s=s) traced with the run's activation sharding rules."""
  def wrapped(*args):
    with sh.activation_rules(s.mesh, s.rules):
      return fn(*args, s=s)
  return wrapped


def compile_steps(setup: Setup):
  """jit-compiled (train_step, eval_step) with explicit shardings.

  The evaluation step returns summed stats, or the task's per-row
  predictions when it has a `predict`.
  """
  replicated = NamedSharding(setup.mesh, PartitionSpec())
  with_rules = partial(under_rules, s=setup)
  train = jax.jit(with_rules(train_step), in_shardings=(setup.state_sharding, setup.batch_sharding),
                  out_shardings=(setup.state_sharding, replicated), donate_argnums=0)
  forward = predict_step if setup.task.predict is not None else eval_step
  evaluate = jax.jit(with_rules(forward), in_shardings=(setup.state_sharding["params"], setup.batch_sharding),
                     out_shardings=replicated)
  return train, evaluate


def per_device_bytes(abstract_tree) -> int:
  """Bytes of one device's shards of a tree of sharded ShapeDtypeStructs (the largest shard of each leaf)."""
  total = 0
  for leaf in jax.tree.leaves(abstract_tree):
    shape = leaf.sharding.shard_shape(leaf.shape) if getattr(leaf, "sharding", None) is not None else leaf.shape
    total += int(np.prod(shape, dtype=np.int64)) * jnp.dtype(leaf.dtype).itemsize
  return total


def compiled_bytes(compiled) -> tuple[int | None, int | None]:
  """(temporaries, total) bytes one device needs for a compiled step, by XLA's
  memory analysis: total = arguments + outputs + temporaries - donated buffers.
  (None, None) where the backend has no memory analysis."""
  try:
    m = compiled.memory_analysis()
    return int(m.temp_size_in_bytes), int(m.argument_size_in_bytes + m.output_size_in_bytes
                                           + m.temp_size_in_bytes - m.alias_size_in_bytes)
  except Exception:  # noqa: BLE001  (not every backend implements it)
    return None, None


def _device_memory_limit(cfg) -> tuple[int | None, str]:
  if cfg.mesh.device_memory_gb > 0:
    return int(cfg.mesh.device_memory_gb * 2**30), "mesh.device_memory_gb"
  device = jax.local_devices()[0]
  stats = device.memory_stats() or {}
  if stats.get("bytes_limit"):
    return int(stats["bytes_limit"]), f"{device.device_kind} memory_stats"
  if device.platform == "cpu":
    try:
      with open("/proc/meminfo") as f:
        available = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
      return None, "unknown"
    return available // jax.local_device_count(), f"host memory available / {jax.local_device_count()} CPU devices"
  return None, "unknown"


def _gib(n: int) -> str:
  return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def preflight(setup: Setup, train_fn):
  """Compiles the train step ahead of the first batch, prints the start-up
  summary (mesh, parameters, per-device bytes of parameters, optimizer state
  and the step's temporaries, the sharding of the largest parameters) and
  stops with advice when the estimate exceeds a device's memory. Returns (the
  compiled step, seconds it took to compile or to load from the cache)."""
  cfg, tc = setup.cfg, setup.cfg.train
  fields = setup.task.batch(cfg)
  abstract_batch = {name: jax.ShapeDtypeStruct((tc.batch_size, *f.shape), f.dtype,
                                               sharding=setup.batch_sharding[name]) for name, f in fields.items()}
  began = time.perf_counter()
  compiled = train_fn.lower(setup.abstract_state, abstract_batch).compile()
  compile_s = time.perf_counter() - began
  params = setup.abstract_state["params"]
  n_params = sum(int(np.prod(p.shape, dtype=np.int64)) for p in jax.tree.leaves(params))
  param_bytes = per_device_bytes(params)
  opt_bytes = per_device_bytes(setup.abstract_state["opt_state"])
  temp, step_bytes = compiled_bytes(compiled)
  if step_bytes is None:
    step_bytes = param_bytes + opt_bytes
  limit, source = _device_memory_limit(cfg)
  mesh = ", ".join(f"{k}={v}" for k, v in setup.mesh.shape.items())
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  largest = sorted(flat, key=lambda kv: -int(np.prod(kv[1].shape, dtype=np.int64)))[:3]
  shardings = "; ".join(f"{jax.tree_util.keystr(path)} {list(leaf.shape)} -> {leaf.sharding.spec}"
                        for path, leaf in largest)
  count = f"{n_params / 1e6:,.1f}M" if n_params >= 1e5 else f"{n_params:,}"
  log(f"mesh {mesh} ({setup.mesh.devices.size} devices, {jax.devices()[0].device_kind}); {count} parameters")
  log(f"per device: parameters {_gib(param_bytes)}, optimizer state {_gib(opt_bytes)}, step temporaries "
      f"{'?' if temp is None else _gib(temp)}; the compiled step needs {_gib(step_bytes)}"
      f"{'' if limit is None else f' of {_gib(limit)} ({source})'}; compiled in {compile_s:.1f}s")
  log(f"largest parameters: {shardings}")
  if limit is not None and step_bytes > limit:
    advice = []
    if setup.mesh.shape.get("fsdp", 1) < setup.mesh.devices.size:
      advice.append(f"shard parameters and optimizer state over more devices (mesh.fsdp, now "
                    f"{setup.mesh.shape.get('fsdp', 1)}, with mesh.rules=fsdp or fsdp_tp)")
    if getattr(cfg.model, "remat", "none") != "full":
      advice.append(f"recompute activations (model.remat=full or dots_no_batch; now {cfg.model.remat})")
    advice.append(f"split each step into micro-batches (train.grad_accum_steps, now {tc.grad_accum_steps})")
    advice.append(f"a smaller train.batch_size (now {tc.batch_size}) or data.max_seq_len (now {cfg.data.max_seq_len})")
    if cfg.model.dtype == "float32":
      advice.append("bfloat16 compute (model.dtype=bfloat16)")
    raise LmjaxError(f"The train step needs {_gib(step_bytes)} per device (parameters {_gib(param_bytes)}, "
                     f"optimizer state {_gib(opt_bytes)}, temporaries {'?' if temp is None else _gib(temp)}) but a "
                     f"device has {_gib(limit)} ({source}). Stopped before the first step; try: "
                     + "; ".join(advice) + ".")
  return compiled, compile_s


def to_global(batch: dict, setup: Setup) -> dict:
  """This process's rows -> global arrays placed as the task's batch declares."""
  return {k: jax.make_array_from_process_local_data(setup.batch_sharding[k], v) for k, v in batch.items()}


def host_metrics(task: tasks.Task, metrics: dict) -> dict:
  metrics = jax.device_get(metrics)
  stats = metrics.pop("stats")
  out = {k: float(v) for k, v in metrics.items()}
  out.update({k: v for k, v in task.finalize(stats).items() if k != "loss"})
  return out


def initialize_distributed(mc) -> None:
  """jax.distributed.initialize() with the mesh config's explicit settings, if any."""
  if jax.distributed.is_initialized():
    return
  # Collectives between CPU processes (tests, CPU clusters); GPUs and TPUs
  # keep their own.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  kwargs = {}
  if mc.coordinator_address:
    kwargs["coordinator_address"] = mc.coordinator_address
  if mc.num_processes > 0:
    kwargs["num_processes"] = mc.num_processes
  if mc.process_id >= 0:
    kwargs["process_id"] = mc.process_id
  try:
    jax.distributed.initialize(**kwargs)
  except (ValueError, RuntimeError) as e:
    raise LmjaxError(
        f"jax.distributed.initialize() failed: {e}. Outside Cloud TPU, SLURM and Open MPI set "
        f"mesh.coordinator_address=HOST:PORT, mesh.num_processes and mesh.process_id on every process.") from None


class _StopRequest:
  """Turns SIGINT / SIGTERM (Ctrl-C, preemption) into a stop after the current
  step, so the loop can save a consistent checkpoint. A second Ctrl-C stops at
  once."""

  def __init__(self):
    self.signum = 0
    self._previous = {}

  def _handle(self, signum, frame):
    del frame
    if self.signum:  # asked twice: do not wait for the step
      raise KeyboardInterrupt
    self.signum = signum

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGINT, signal.SIGTERM):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    return False

  def agreed(self, meeting: bool) -> int:
    """The signal to stop on at this step, 0 for none. One process: this
    process's flag, read once. Several: 0 except at a meeting step, where
    the largest flag of all processes is taken, so all stop together."""
    signum = self.signum
    if jax.process_count() == 1:
      return signum
    if not meeting:
      return 0
    from jax.experimental import multihost_utils  # noqa: PLC0415
    return int(np.max(multihost_utils.process_allgather(np.int32(signum))))

  def reraise(self, signum: int | None = None):
    signum = signum or self.signum
    if signum == signal.SIGINT:
      raise KeyboardInterrupt
    raise SystemExit(128 + signum)


def prepare_workdir(workdir: Path) -> None:
  """Creates `workdir` and checks that files can be written there, or stops with a clear message."""
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    probe = workdir / f".lmjax-write-test-{os.getpid()}"
    probe.write_bytes(b"")
    probe.unlink()
  except OSError as e:
    raise LmjaxError(f"--workdir {workdir}: cannot create it or write in it ({e.strerror or e}). Choose a "
                     "directory you can write to.") from None


class WorkdirLock:
  """One train.py per workdir: an exclusive lock (fcntl.flock) on WORKDIR/lmjax.lock,
  which records the holder's process id and host. The kernel releases the lock
  when its process dies, so a lock left by a killed run is taken over (with a
  warning naming it); a live holder makes a second run stop at once."""

  def __init__(self, workdir: Path):
    import fcntl  # noqa: PLC0415
    import json  # noqa: PLC0415
    import socket  # noqa: PLC0415
    import warnings  # noqa: PLC0415

    self.path = workdir / "lmjax.lock"
    self._file = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115  (held for the whole run)
    try:
      fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      self._file.seek(0)
      holder = self._file.read().strip() or "unknown process"
      self._file.close()
      raise LmjaxError(f"{workdir} is in use by another train.py ({holder}). Two runs in one workdir would "
                       "overwrite each other's checkpoints: wait for it to end or stop it, or use another "
                       "--workdir.") from None
    self._file.seek(0)
    previous = self._file.read().strip()
    if previous:
      warnings.warn(f"{self.path}: took over the lock of a run that ended without releasing it ({previous}).",
                    stacklevel=2)
    self._file.seek(0)
    self._file.truncate()
    self._file.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "started": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")
    self._file.flush()

  def release(self) -> None:
    import fcntl  # noqa: PLC0415
    if self._file.closed:
      return
    self._file.seek(0)
    self._file.truncate()
    self._file.flush()
    fcntl.flock(self._file, fcntl.LOCK_UN)
    self._file.close()


def async_saves(cc: config_lib.CheckpointConfig) -> bool:
  """`checkpoint.async_save`, with None (auto) resolved: in the background on
  accelerators, synchronous on the CPU backend (no second host copy of the state)."""
  return cc.async_save if cc.async_save is not None else jax.default_backend() != "cpu"


def train(cfg: config_lib.Config, workdir: str | Path) -> dict:
  """Runs (or resumes) training in `workdir`; returns the last eval metrics."""
  workdir = Path(workdir)
  prepare_workdir(workdir)
  compile_cache(cfg.train.compile_cache, cfg.data.cache_dir)
  if cfg.mesh.distributed:
    initialize_distributed(cfg.mesh)
  lock = WorkdirLock(workdir) if jax.process_index() == 0 else None
  try:
    return _train(cfg, workdir)
  finally:
    if lock is not None:
      lock.release()


def _train(cfg: config_lib.Config, workdir: Path) -> dict:
  from lmjax.checkpoint import BestCheckpoint  # noqa: PLC0415
  from lmjax.data.stream import BatchIterator  # noqa: PLC0415

  mesh = sh.make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
  task = tasks.get(cfg.train.objective)
  ckpt = Checkpointer(workdir, every=cfg.checkpoint.every, keep=cfg.checkpoint.keep,
                      async_save=async_saves(cfg.checkpoint))
  start = ckpt.latest_step()
  try:
    cfg = task.configure(cfg, workdir, resumed=start is not None)  # e.g. the architecture of init_from
    validate(cfg, mesh, task)
    data = task.open(cfg, workdir, mesh, resumed=start is not None)
    cfg = data.cfg  # e.g. label names from the data
  except BaseException:
    ckpt.close()
    raise
  main = jax.process_index() == 0
  if main:
    config_lib.save_json(cfg, workdir / "config.json")

  setup = build(cfg, mesh)
  tc = cfg.train
  position = 0
  train_fn, eval_fn = compile_steps(setup)
  jit_train = train_fn  # compiles other batch shapes (length buckets) on first use
  full_shapes = {name: f.shape for name, f in task.batch(cfg).items()}
  compile_s = None
  if start is None or start < tc.steps:  # before any state exists: a step that cannot fit stops here
    try:
      train_fn, compile_s = preflight(setup, train_fn)
    except BaseException:
      ckpt.close()
      raise
  if start is not None:
    try:
      start, state, saved_data = ckpt.restore_newest(setup.abstract_state, setup.meta)
    except BaseException:
      ckpt.close()
      raise
    if saved_data.get("global_batch") != tc.batch_size:
      ckpt.close()
      raise LmjaxError(f"The checkpoint in {workdir} was written with train.batch_size="
                       f"{saved_data.get('global_batch')}; resume with the same batch size or a fresh --workdir.")
    for key, value in data.stream.items():
      written = saved_data.get(key, data.stream_before.get(key, value))
      if written != value:
        ckpt.close()
        raise LmjaxError(f"The checkpoint in {workdir} was written with {key}={written} (this run has "
                         f"{value}), which orders the data stream; resume with --set {key}={written} "
                         "or use a fresh --workdir.")
    position = int(saved_data["position"])
    log(f"resuming from step {start} in {ckpt.directory}")
  else:
    start = 0
    state = init_state(setup, data.pretrained)
  data.pretrained = None  # its arrays are in the state now; the host copy would stay for the whole run
  last_eval: dict = {}
  if start >= tc.steps:
    log(f"step {start} already reached train.steps={tc.steps}; nothing to do "
        f"(raise --set train.steps=N to train further)")
    ckpt.close()
    return last_eval

  best = BestCheckpoint(workdir, data.best_metric) if data.best_metric else None
  ctx = tasks.base.EvalContext(eval_fn, partial(to_global, setup=setup), tc.batch_size, jax.process_index(),
                               jax.process_count())
  it = BatchIterator(data.train, tc.batch_size, process_index=jax.process_index(),
                     process_count=jax.process_count(), position=position, prefetch=cfg.data.prefetch)
  writer = MetricsWriter(workdir, total_steps=tc.steps, start_step=start, tensorboard=cfg.logging.tensorboard,
                         progress_bar=cfg.logging.progress_bar, enabled=main)
  tokens_per_step = tc.batch_size * cfg.data.max_seq_len

  def data_state(at_step: int) -> dict:
    # From the step, not the iterator: the iterator may have handed out the
    # batch of a step that an interrupt cut short.
    return {"position": position + (at_step - start) * tc.batch_size, "global_batch": tc.batch_size, **data.stream}
  step = start
  interval_start, interval_steps, excluded, tokens = None, 0, 0.0, 0
  first_step_s = None  # the first step (its program was compiled ahead, in preflight)
  skips, logged_at = int(jax.device_get(optim.nonfinite_skips(state["opt_state"]))), start
  stop = _StopRequest()
  host_is_device = jax.default_backend() == "cpu"
  if host_is_device and getattr(cfg.data, "length_buckets", 1) > 1:
    host.map_large_blocks()  # one program per bucket: step temporaries of several sizes (see lmjax.host)
  try:
    with jax.set_mesh(mesh), stop:
      while step < tc.steps:
        if interval_start is None:
          began = time.perf_counter()
        host_batch = next(it)
        counted = task.count_tokens(host_batch)
        tokens += tokens_per_step if counted is None else counted * jax.process_count()
        batch = to_global(host_batch, setup)
        full = all(v.shape[1:] == full_shapes[k] for k, v in host_batch.items())
        state, metrics = (train_fn if full else jit_train)(state, batch)
        if host_is_device:
          # On the CPU the step's temporaries come from the same malloc heap as the
          # host's next batch; letting dispatch run ahead interleaves the two and
          # fragments the heap (MiniLM sentiment, 60 steps: 4.0-4.1 GB peak RSS
          # without this wait, 3.45-3.48 GB with it). Accelerators keep dispatching ahead.
          jax.block_until_ready(metrics["loss"])
        step += 1
        if interval_start is None:  # the first step includes compilation
          jax.block_until_ready(metrics["loss"])
          interval_start, interval_steps, excluded, tokens = time.perf_counter(), 0, 0.0, 0
          first_step_s = interval_start - began
          log(f"step {step}: first step took {first_step_s:.1f}s")
        else:
          interval_steps += 1
        if step % cfg.logging.every == 0 or step == tc.steps or step == start + 1:
          record = host_metrics(task, metrics)
          if step == start + 1:
            record["first_step_s"] = first_step_s
            record["compile_s"] = compile_s
          if interval_steps:
            elapsed = time.perf_counter() - interval_start - excluded
            record["tokens_per_sec"] = tokens / elapsed  # real tokens where the task counts them
            record["steps_per_sec"] = interval_steps / elapsed
            interval_start, interval_steps, excluded = time.perf_counter(), 0, 0.0
          tokens = 0
          writer.write(step, record)
          if record["nonfinite_skips"] > skips:
            where = f"step {step}" if step - logged_at == 1 else f"a step in {logged_at + 1}..{step}"
            if tc.nonfinite == "stop":
              raise LmjaxError(
                  f"The loss or the gradients were not finite (NaN/Inf) at {where}; that update was not applied "
                  f"and the last checkpoint holds finite values. Lower train.learning_rate, raise "
                  f"train.warmup_steps, keep train.max_grad_norm on, or use float32; --set train.nonfinite=skip "
                  f"skips such steps instead.")
            log(f"non-finite loss or gradients at {where}: update skipped "
                f"({int(record['nonfinite_skips'])} so far, train.nonfinite=skip)")
          skips, logged_at = record["nonfinite_skips"], step
        paused = time.perf_counter()
        if (tc.eval_every and step % tc.eval_every == 0) or step == tc.steps:
          last_eval = data.evaluate(ctx, state["params"])
          writer.write(step, last_eval, split="eval")
          if best is not None and best.update(step, state["params"], last_eval, setup.meta):
            log(f"step {step}: best {best.metric} so far ({last_eval[best.metric]:.4f}), saved in "
                f"{best.directory}")
        # Read once per step: a signal arriving between two reads could log a save that never happened.
        # Under several processes every one must stop at the same step (the save is collective): the
        # flags are combined where the processes meet anyway, at the logging steps.
        signum = stop.agreed(step % cfg.logging.every == 0 or step == tc.steps)
        if step % cfg.checkpoint.every == 0 or step == tc.steps or signum:
          ckpt.save(step, state, data_state(step), setup.meta, force=True)
        excluded += time.perf_counter() - paused  # evaluation and saving are not training throughput
        if signum:
          ckpt.wait()
          log(f"stopped by signal {signum}: saved step {step}; the same command resumes from it")
          stop.reraise(signum)
      if best is not None and data.test is not None:
        kept = best.info()
        params = best.restore_params(setup.abstract_state["params"]) if kept else None
        which = "best" if params is not None else "last"  # no best kept, or it did not read back
        if params is None:
          kept, params = None, state["params"]
        report = data.test(ctx, params)
        if report is not None:
          at = kept["step"] if kept else step
          writer.write(at, {**report, "checkpoint": which}, split="test")
          if main:
            print(task.format_report(report, f"test ({cfg.data.test_split!r} split), best validation "
                                                 f"{best.metric} checkpoint: step {at}"), flush=True)
          last_eval = {**last_eval, "test": report}
  finally:
    it.close()
    ckpt.close()
    writer.close()
    if best is not None:
      best.close()
  return last_eval
