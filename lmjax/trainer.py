"""Sharded state, the pure train/eval steps, and the training loop.

The state is a pytree {"step", "params", "opt_state"}: parameters as a plain
nested dict (from `nnx.split` + `nnx.to_pure_dict`), merged back into the
module inside the step. One `jax.jit` per step with explicit shardings and
the state donated. Dropout keys derive from (seed, step) and batches from the
stream position, so a resumed run repeats an uninterrupted one exactly.
"""

from __future__ import annotations

import dataclasses
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
from lmjax import models, objectives, optim
from lmjax import sharding as sh
from lmjax.checkpoint import Checkpointer, param_shapes
from lmjax.errors import LmjaxError
from lmjax.metrics import MetricsWriter


def validate(cfg: config_lib.Config, mesh) -> None:
  """Config checks that would otherwise fail deep inside JAX."""
  m, d, t = cfg.model, cfg.data, cfg.train
  objective = objectives.get(t.objective)
  if d.max_seq_len > m.max_position_embeddings:
    raise LmjaxError(
        f"data.max_seq_len={d.max_seq_len} is larger than the model's position table "
        f"(model.max_position_embeddings={m.max_position_embeddings}). Lower data.max_seq_len or raise "
        f"model.max_position_embeddings (a pretrained table cannot grow).")
  family = models.family_of(m)
  if objective.family != family:
    raise LmjaxError(f"train.objective={t.objective!r} trains a {objective.family!r} model, but the recipe's model is "
                     f"a {family!r} config. Pick an objective for it (bert: mlm_nsp, mlm, classification; gpt: "
                     "causal_lm) or another recipe.")
  if family == "bert" and d.max_seq_len < 8:
    raise LmjaxError(f"data.max_seq_len={d.max_seq_len} is too short for [CLS] A [SEP] B [SEP]; use at least 8.")
  if d.max_seq_len < 2:
    raise LmjaxError(f"data.max_seq_len={d.max_seq_len} is too short; use at least 2.")
  if t.objective in ("mlm_nsp", "mlm") and not 0 < d.max_predictions_per_seq <= d.max_seq_len:
    raise LmjaxError(f"data.max_predictions_per_seq={d.max_predictions_per_seq} must be in 1..max_seq_len.")
  if objective.task == "pretraining" and t.init_from:
    raise LmjaxError(f"train.init_from is for fine-tuning; train.objective={t.objective!r} trains from scratch "
                     "(to continue a pretraining run, reuse its --workdir).")
  if d.truncation not in ("warn", "error"):
    raise LmjaxError(f"data.truncation={d.truncation!r}: use 'warn' or 'error'.")
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
  tp, fsdp = mesh.shape["tensor"], mesh.shape["fsdp"]
  for name, size, axis, n in (("model.num_heads", m.num_heads, "tensor", tp), ("model.mlp_dim", m.mlp_dim, "tensor", tp),
                              ("model.vocab_size", m.vocab_size, "tensor", tp),
                              ("model.num_kv_heads", getattr(m, "kv_heads", tp), "tensor", tp),
                              ("model.hidden_size", m.hidden_size, "fsdp", fsdp)):
    if size % n:
      raise LmjaxError(f"{name}={size} is not divisible by the mesh's {axis} axis ({n}); choose mesh sizes "
                       f"that divide it, e.g. --set mesh.{axis}=1.")


@dataclasses.dataclass
class Setup:
  """Everything a step needs that is not an array."""
  cfg: config_lib.Config
  mesh: jax.sharding.Mesh
  rules: tuple
  graphdef: nnx.GraphDef
  tx: optax.GradientTransformation
  objective: objectives.Objective
  state_sharding: dict
  abstract_state: dict
  meta: dict


def build(cfg: config_lib.Config, mesh) -> Setup:
  rules = sh.rules_for(cfg.mesh.rules)
  objective = objectives.get(cfg.train.objective)
  model_cls = models.model_class(cfg.model, objective.task)
  abstract_model = nnx.eval_shape(lambda: model_cls(cfg.model, rngs=nnx.Rngs(0)))
  graphdef, abstract_params = nnx.split(abstract_model)
  names = {a for leaf in jax.tree.leaves(abstract_params, is_leaf=lambda x: isinstance(x, nnx.Variable))
           for a in (leaf.get_metadata().get("sharding") or leaf.get_metadata().get("out_sharding") or ())}
  sh.check_rules(rules, names)
  with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
    param_sharding = nnx.to_pure_dict(nnx.get_named_sharding(abstract_params, mesh))
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
  meta = {"family": models.family_of(cfg.model), "task": objective.task, "model": dataclasses.asdict(cfg.model),
          "shapes": param_shapes(abstract_params)}
  return Setup(cfg, mesh, rules, graphdef, tx, objective, state_sharding, abstract_state, meta)


def init_state(s: Setup, pretrained: dict | None = None) -> dict:
  """Fresh state; `pretrained` ({param path: array}) replaces those parameters.

  Adam's moments start at zero whatever the parameters, so replacing
  parameters after `tx.init` is the same as initialising from them.
  """
  model_cls = models.model_class(s.cfg.model, s.objective.task)

  def create():
    params = nnx.to_pure_dict(nnx.split(model_cls(s.cfg.model, rngs=nnx.Rngs(s.cfg.train.seed)))[1])
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": s.tx.init(params)}

  with jax.set_mesh(s.mesh):
    state = jax.jit(create, out_shardings=s.state_sharding)()
  if pretrained:
    from lmjax.convert.bert import merge_into  # noqa: PLC0415
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
  denominators = s.objective.denominators(batch)

  def loss_fn(p, micro_batch, micro_rng):
    model = nnx.merge(s.graphdef, p)
    return s.objective.loss(model, micro_batch, micro_rng, denominators)

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
      "stats": stats,
  }
  return {"step": state["step"] + 1, "params": new_params, "opt_state": opt_state}, metrics


def eval_step(params: dict, batch: dict, *, s: Setup) -> dict:
  model = nnx.merge(s.graphdef, params)
  _, stats = s.objective.loss(model, batch, None, s.objective.denominators(batch))
  return stats


def predict_step(params: dict, batch: dict, *, s: Setup) -> dict:
  return s.objective.predict(nnx.merge(s.graphdef, params), batch)


def under_rules(fn, s: Setup):
  """fn(*args, s=s) traced with the run's activation sharding rules."""
  def wrapped(*args):
    with sh.activation_rules(s.mesh, s.rules):
      return fn(*args, s=s)
  return wrapped


def compile_steps(s: Setup):
  """jit-compiled (train_step, eval_step) with explicit shardings."""
  replicated = NamedSharding(s.mesh, PartitionSpec())
  # Leading (batch) axis split over data x fsdp; trailing axes replicated.
  batch_sh = {k: NamedSharding(s.mesh, PartitionSpec(sh.BATCH)) for k in s.objective.batch_keys}

  with_rules = partial(under_rules, s=s)
  train = jax.jit(with_rules(train_step), in_shardings=(s.state_sharding, batch_sh),
                  out_shardings=(s.state_sharding, replicated), donate_argnums=0)
  # Classification evaluates per-example predictions; other objectives sum stats.
  step = predict_step if s.objective.predict is not None else eval_step
  evaluate = jax.jit(with_rules(step), in_shardings=(s.state_sharding["params"], batch_sh),
                     out_shardings=replicated)
  return train, evaluate


def to_global(batch: dict, mesh) -> dict:
  """This process's rows -> global arrays split over the batch axes."""
  return {k: jax.make_array_from_process_local_data(sh.batch_sharding(mesh, v.ndim), v) for k, v in batch.items()}


def host_metrics(objective, metrics: dict) -> dict:
  metrics = jax.device_get(metrics)
  stats = metrics.pop("stats")
  out = {k: float(v) for k, v in metrics.items()}
  out.update({k: v for k, v in objectives.finalize(objective, stats).items() if k != "loss"})
  return out


def evaluate(s: Setup, eval_fn, params, examples, num_batches: int) -> dict:
  """Fixed held-out batches (epoch 0 of the validation stream)."""
  from lmjax.data.pretrain import BatchIterator  # noqa: PLC0415
  it = BatchIterator(examples, s.cfg.train.batch_size, process_index=jax.process_index(),
                     process_count=jax.process_count(), prefetch=0)
  n = max(1, min(num_batches, len(examples) // s.cfg.train.batch_size))
  total = None
  for _ in range(n):
    stats = jax.device_get(eval_fn(params, to_global(next(it), s.mesh)))
    total = stats if total is None else jax.tree.map(np.add, total, stats)
  return objectives.finalize(s.objective, total)


def evaluate_classification(s: Setup, predict_fn, params, split, names) -> dict:
  """Accuracy, macro-F1, per-class precision / recall and the confusion matrix over a whole split."""
  from lmjax import finetuning  # noqa: PLC0415
  from lmjax.data import finetune  # noqa: PLC0415
  probs = []
  for batch in finetune.eval_batches(split, s.cfg.train.batch_size, jax.process_index(), jax.process_count()):
    probs.append(np.asarray(jax.device_get(predict_fn(params, to_global(batch, s.mesh))["probs"])))
  probs = np.concatenate(probs)[:len(split)]  # global rows in order; padding rows at the end
  return finetuning.classification_report(split.label, probs, names)


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

  def reraise(self):
    if self.signum == signal.SIGINT:
      raise KeyboardInterrupt
    raise SystemExit(128 + self.signum)


class _Pretraining:
  """The data side of a pretraining run: example streams and a fixed held-out set."""

  def __init__(self, cfg, workdir):
    from lmjax.data import packing, pretrain  # noqa: PLC0415  (pulls in tfds)
    self.cfg = cfg
    make = packing.causal_lm_data if cfg.train.objective == "causal_lm" else pretrain.bert_pretraining_data
    self.train_examples, self.eval_examples, _ = make(cfg, workdir)
    self.best_metric = cfg.checkpoint.best_metric
    self.pretrained = None

  def evaluate(self, s, eval_fn, params) -> dict:
    return evaluate(s, eval_fn, params, self.eval_examples, self.cfg.train.eval_batches)

  def test(self, s, eval_fn, params):
    return None


class _Classification:
  """The data side of a fine-tuning run: tokenizer, labelled splits, the encoder to start from."""

  def __init__(self, cfg, workdir, mesh, resumed: bool):
    from lmjax import finetuning  # noqa: PLC0415
    from lmjax.data import classification, finetune  # noqa: PLC0415
    from lmjax.data import tokenizer as tk  # noqa: PLC0415
    d = cfg.data
    saved = Path(workdir) / "config.json"
    if resumed and cfg.train.init_from and saved.exists() and not Path(cfg.train.init_from).expanduser().exists():
      # The run already holds the weights; the model it started from may be gone.
      self.source = None
      cfg = dataclasses.replace(cfg, model=finetuning.model_config(cfg.model, finetuning.Source(
          "lmjax", Path(workdir), config_lib.load_json(saved).model)))
    else:
      self.source = finetuning.inspect(cfg.train.init_from) if cfg.train.init_from else None
    if self.source is not None:
      cfg = dataclasses.replace(cfg, model=finetuning.model_config(cfg.model, self.source))
    metric = cfg.checkpoint.best_metric
    if metric and metric not in ("accuracy", "f1", "loss") and metric.split("/")[0] not in (
        "precision", "recall", "f1"):
      raise LmjaxError(f"checkpoint.best_metric={metric!r} is not a classification metric; use accuracy, f1, "
                       "loss, or precision/LABEL, recall/LABEL, f1/LABEL.")
    labelled = classification.load_labelled(d)
    if cfg.model.num_labels != len(labelled.names):
      raise LmjaxError(f"model.num_labels={cfg.model.num_labels} but data set {labelled.identity} has "
                       f"{len(labelled.names)} labels {list(labelled.names)}; set --set "
                       f"model.num_labels={len(labelled.names)}.")
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(d, labels=labelled.names))
    tok = finetuning.install_tokenizer(self.source, Path(workdir))
    if tok is None:  # training from scratch: a sentencepiece model on the training texts
      from lmjax.data import fetch  # noqa: PLC0415
      texts = lambda: finetune.read_split(labelled, "train")[0]  # noqa: E731
      cache = fetch.cache_root(d.cache_dir) / "tokenizers" / (
          f"{labelled.identity}-v{cfg.model.vocab_size}-s{cfg.train.seed}-n{d.tokenizer_sentences}.model")
      tok = tk.for_run(Path(workdir), cache, texts, cfg.model.vocab_size, seed=cfg.train.seed,
                       max_sentences=d.tokenizer_sentences)
    if tok.vocab_size > cfg.model.vocab_size:
      raise LmjaxError(f"The tokenizer ({tok.vocab_size} tokens) does not fit the model's vocabulary "
                       f"(model.vocab_size={cfg.model.vocab_size}); they must come from the same checkpoint.")
    splits = [d.eval_split]
    self.has_test = d.test_split in labelled.sources
    if self.has_test:
      splits.append(d.test_split)
    else:
      finetuning.log(f"{labelled.identity} has no {d.test_split!r} split: there will be no final test report")
    self.splits = finetune.prepare(labelled, tok, cfg.data, ("train", *dict.fromkeys(splits)))
    self.train_examples = finetune.ClassificationExamples(self.splits["train"], cfg.train.seed)
    self.names = labelled.names
    self.best_metric = cfg.checkpoint.best_metric or "accuracy"
    self.pretrained = None
    if self.source is not None and not resumed:
      finetuning.log(f"initialising the encoder from {self.source.path}"
                     + (f" (step {self.source.step})" if self.source.step is not None else ""))
      self.pretrained = finetuning.encoder_params(self.source, mesh)
    self.cfg = cfg

  def evaluate(self, s, eval_fn, params) -> dict:
    return evaluate_classification(s, eval_fn, params, self.splits[self.cfg.data.eval_split], self.names)

  def test(self, s, eval_fn, params):
    if not self.has_test:
      return None
    return evaluate_classification(s, eval_fn, params, self.splits[self.cfg.data.test_split], self.names)


def train(cfg: config_lib.Config, workdir: str | Path) -> dict:
  """Runs (or resumes) training in `workdir`; returns the last eval metrics."""
  from lmjax import finetuning  # noqa: PLC0415
  from lmjax.checkpoint import BestCheckpoint  # noqa: PLC0415
  from lmjax.data import pretrain  # noqa: PLC0415

  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  if cfg.mesh.distributed:
    initialize_distributed(cfg.mesh)
  mesh = sh.make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
  objective = objectives.get(cfg.train.objective)
  if objective.task != "classification":  # fine-tuning validates once init_from has set the architecture
    validate(cfg, mesh)
  ckpt = Checkpointer(workdir, every=cfg.checkpoint.every, keep=cfg.checkpoint.keep,
                      async_save=cfg.checkpoint.async_save)
  start = ckpt.latest_step()
  try:
    if objective.task == "classification":
      task = _Classification(cfg, workdir, mesh, resumed=start is not None)
      cfg = task.cfg  # architecture from init_from, label names from the data
      validate(cfg, mesh)
    else:
      task = _Pretraining(cfg, workdir)
  except BaseException:
    ckpt.close()
    raise
  main = jax.process_index() == 0
  if main:
    config_lib.save_json(cfg, workdir / "config.json")

  s = build(cfg, mesh)
  tc = cfg.train
  position = 0
  if start is not None:
    state, saved_data = ckpt.restore(start, s.abstract_state, s.meta)
    if saved_data.get("global_batch") != tc.batch_size:
      ckpt.close()
      raise LmjaxError(f"The checkpoint in {workdir} was written with train.batch_size="
                       f"{saved_data.get('global_batch')}; resume with the same batch size or a fresh --workdir.")
    position = int(saved_data["position"])
    pretrain.log(f"resuming from step {start} in {ckpt.directory}")
  else:
    start = 0
    state = init_state(s, task.pretrained)
  last_eval: dict = {}
  if start >= tc.steps:
    pretrain.log(f"step {start} already reached train.steps={tc.steps}; nothing to do "
                 f"(raise --set train.steps=N to train further)")
    ckpt.close()
    return last_eval

  best = BestCheckpoint(workdir, task.best_metric) if task.best_metric else None
  train_fn, eval_fn = compile_steps(s)
  it = pretrain.BatchIterator(task.train_examples, tc.batch_size, process_index=jax.process_index(),
                              process_count=jax.process_count(), position=position, prefetch=cfg.data.prefetch)
  writer = MetricsWriter(workdir, total_steps=tc.steps, start_step=start, tensorboard=cfg.logging.tensorboard,
                         progress_bar=cfg.logging.progress_bar, enabled=main)
  tokens_per_step = tc.batch_size * cfg.data.max_seq_len

  def data_state(at_step: int) -> dict:
    # From the step, not the iterator: the iterator may have handed out the
    # batch of a step that an interrupt cut short.
    return {"position": position + (at_step - start) * tc.batch_size, "global_batch": tc.batch_size}
  step = start
  interval_start, interval_steps, excluded = None, 0, 0.0
  stop = _StopRequest()
  try:
    with jax.set_mesh(mesh), stop:
      while step < tc.steps:
        batch = to_global(next(it), mesh)
        state, metrics = train_fn(state, batch)
        step += 1
        if interval_start is None:  # the first step includes compilation
          jax.block_until_ready(metrics["loss"])
          interval_start, interval_steps, excluded = time.perf_counter(), 0, 0.0
        else:
          interval_steps += 1
        if step % cfg.logging.every == 0 or step == tc.steps or step == start + 1:
          record = host_metrics(s.objective, metrics)
          if interval_steps:
            elapsed = time.perf_counter() - interval_start - excluded
            record["tokens_per_sec"] = tokens_per_step * interval_steps / elapsed
            record["steps_per_sec"] = interval_steps / elapsed
            interval_start, interval_steps, excluded = time.perf_counter(), 0, 0.0
          writer.write(step, record)
        paused = time.perf_counter()
        if (tc.eval_every and step % tc.eval_every == 0) or step == tc.steps:
          last_eval = task.evaluate(s, eval_fn, state["params"])
          writer.write(step, last_eval, split="eval")
          if best is not None and best.update(step, state["params"], last_eval, s.meta):
            pretrain.log(f"step {step}: best {best.metric} so far ({last_eval[best.metric]:.4f}), saved in "
                         f"{best.directory}")
        if step % cfg.checkpoint.every == 0 or step == tc.steps or stop.signum:
          ckpt.save(step, state, data_state(step), s.meta, force=True)
        excluded += time.perf_counter() - paused  # evaluation and saving are not training throughput
        if stop.signum:
          ckpt.wait()
          pretrain.log(f"stopped by signal {stop.signum}: saved step {step}; the same command resumes from it")
          stop.reraise()
      if best is not None:
        kept = best.info()
        params = best.restore_params(s.abstract_state["params"]) if kept else state["params"]
        report = task.test(s, eval_fn, params)
        if report is not None:
          writer.write(kept["step"] if kept else step, {**report, "checkpoint": "best"},
                       split="test")
          if main:
            title = (f"test ({cfg.data.test_split!r} split), best validation {best.metric} "
                     f"checkpoint: step {kept['step'] if kept else step}")
            print(finetuning.format_report(report, title), flush=True)
          last_eval = {**last_eval, "test": report}
  finally:
    it.close()
    ckpt.close()
    writer.close()
    if best is not None:
      best.close()
  return last_eval
