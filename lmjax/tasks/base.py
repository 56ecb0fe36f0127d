"""The task protocol: what the training loop may ask of an objective.

A task is one module under `lmjax/tasks/` with a `Task` subclass registered
by objective name (`train.objective`). It owns

  * its batch, declared once (`batch`: field -> `BatchField` with per-row
    shape, dtype, logical axes and a synthetic sampler); batch shardings, the
    benchmark's synthetic batches and the shape checks in tests all come from
    that declaration;
  * its config checks (`check`) and what it needs at start (`configure`:
    e.g. the architecture of `train.init_from`; `open`: tokenizer, data,
    pretrained parameters, evaluators);
  * its loss and metrics (`denominators`, `loss`, `loss_terms`, `derived`)
    and optional per-row predictions (`predict`);
  * its evaluators (`TaskData.evaluate`, `TaskData.test`).

Loss contract: `loss(model, batch, rng, denominators)` returns a scalar
already divided by whole-batch counts (`denominators(batch)`), so summing it
over micro-batches gives exactly the full-batch gradient, and `stats`, a dict
of (numerator, denominator) pairs that add up over micro-batches and
evaluation batches; `finalize` turns them into ratios.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np

from lmjax.errors import LmjaxError
from lmjax.models.family import Workload


@dataclasses.dataclass(frozen=True)
class BatchField:
  """One field of a task's batch, per row (the leading batch axis is implied).

  axes: logical axis names of the per-row dims (mapped by the mesh rules;
    the batch axis is always "batch").
  sample(rng, shape) -> a synthetic value of the full [B, ...] shape, for
    benchmarks and tests.
  """
  shape: tuple[int, ...]
  dtype: Any
  axes: tuple[str | None, ...]
  sample: Callable[[np.random.Generator, tuple[int, ...]], np.ndarray]

  def __post_init__(self):
    assert len(self.shape) == len(self.axes), (self.shape, self.axes)


# Samplers for BatchField.sample.
def random_ids(low: int, high: int):
  return lambda rng, shape: rng.integers(low, high, shape, dtype=np.int32)


def constant(value, dtype):
  return lambda rng, shape: np.full(shape, value, dtype)


def arange(dtype=np.int32):
  """0, 1, ... along the last axis (positions)."""
  return lambda rng, shape: np.broadcast_to(np.arange(shape[-1], dtype=dtype), shape).copy()


def sorted_positions(low: int, high: int):
  """Sorted random positions in [low, high) along the last axis."""
  return lambda rng, shape: np.sort(rng.choice(np.arange(low, high), shape), axis=-1).astype(np.int32)


def second_half(dtype=np.int32):
  """0 in the first half of the last axis, 1 in the second (segment ids of a pair)."""
  return lambda rng, shape: np.broadcast_to(np.arange(shape[-1]) >= shape[-1] // 2, shape).astype(dtype)


@dataclasses.dataclass
class EvalContext:
  """What an evaluator gets from the loop: the compiled evaluation step
  (`step(params, global_batch)`, summed stats or the task's predictions),
  `put` (this process's rows -> global arrays) and the process layout."""
  step: Callable
  put: Callable[[dict], dict]
  batch_size: int
  process_index: int = 0
  process_count: int = 1


@dataclasses.dataclass
class TaskData:
  """What a task hands the loop once its data is ready."""
  cfg: Any  # the run config, completed by the task (architecture from init_from, label names)
  train: Any  # random access to the training stream: examples[k] -> one row (a dict of arrays)
  evaluate: Callable[[EvalContext, Any], dict]  # (ctx, params) -> validation metrics
  test: Callable[[EvalContext, Any], dict | None] | None = None  # final report on the best parameters
  best_metric: str = ""  # validation metric whose best value is kept in WORKDIR/best ("" = none)
  pretrained: dict[tuple, np.ndarray] | None = None  # {param path: array} that replace fresh parameters
  # Settings besides the batch size that fix the training stream's order ({"data.shards": 4}): saved with
  # the stream position, and a resume with other values is refused. `stream_before`: what a checkpoint
  # that does not record a key was written with (checkpoints older than the setting).
  stream: dict = dataclasses.field(default_factory=dict)
  stream_before: dict = dataclasses.field(default_factory=dict)


class Task:
  """Base class of the tasks; a subclass sets the class attributes and
  overrides what it needs. Instances are registered in `lmjax.tasks`."""

  name: str = ""  # the objective name (train.objective)
  model: str = "pretraining"  # which of the family's models it trains (Family.models key)
  families: tuple[str, ...] = ()  # families it can train
  loss_terms: tuple[str, ...] = ()  # stats whose ratios add up to the reported 'loss'
  fine_tuning: bool = False  # starts from train.init_from (pretraining tasks refuse it)
  data_groups: tuple[str, ...] = ()  # DataConfig groups it reads besides "common" (lmjax.config.DATA_GROUPS)

  # --- the batch ---------------------------------------------------------
  def batch(self, cfg) -> dict[str, BatchField]:
    raise NotImplementedError

  def workload(self, cfg) -> Workload:
    """The shapes FLOPs per token are counted for (see lmjax.models.family.Workload)."""
    return Workload(cfg.data.max_seq_len)

  # --- start ---------------------------------------------------------------
  def check(self, cfg) -> None:
    """Task-specific config checks (LmjaxError with the fix)."""

  def configure(self, cfg, workdir: Path | None, resumed: bool):
    """The run config before validation (e.g. the architecture of init_from); no data is read.
    workdir is None outside a run (the benchmark)."""
    return cfg

  def open(self, cfg, workdir: Path, mesh, resumed: bool) -> TaskData:
    """Tokenizer, data streams, evaluators and pretrained parameters."""
    raise NotImplementedError

  # --- loss and metrics -----------------------------------------------------
  def count_tokens(self, batch: dict) -> int | None:
    """Real (not padding) tokens in a host batch, for tokens/s; None: count
    every slot (train.batch_size x data.max_seq_len per step)."""
    return None

  def denominators(self, batch: dict) -> dict:
    raise NotImplementedError

  def loss(self, model, batch: dict, rng, denominators: dict):
    raise NotImplementedError

  # fn(model, batch) -> per-row outputs, for evaluators that need more than
  # summed stats (classification: F1, confusion matrix); None = summed stats.
  predict: Callable | None = None

  def derived(self, metrics: dict) -> dict:
    """More metrics computed from the finalized ones (perplexity)."""
    return {}

  def format_report(self, report: dict, title: str) -> str:
    """The final test report as printed (classification: a table)."""
    return f"{title}: " + "  ".join(f"{k}={v:.4f}" for k, v in report.items() if isinstance(v, float))

  def finalize(self, stats: dict) -> dict:
    """(numerator, denominator) pairs -> float metrics, plus their total 'loss'."""
    out = {k: float(num) / max(float(den), 1e-12) for k, (num, den) in stats.items()}
    out["loss"] = sum(out[k] for k in self.loss_terms)
    out.update(self.derived(out))
    return out


def synthetic_batch(task: Task, cfg, rng: np.random.Generator) -> dict[str, np.ndarray]:
  """A global batch of the task's fields with the recipe's shapes (numpy)."""
  b = cfg.train.batch_size
  return {name: np.asarray(f.sample(rng, (b, *f.shape)), f.dtype) for name, f in task.batch(cfg).items()}


def check_batch(task: Task, cfg, batch: dict, rows: int | None = None) -> None:
  """Raises AssertionError unless `batch` has exactly the declared fields, shapes and dtypes."""
  spec = task.batch(cfg)
  assert set(batch) == set(spec), (sorted(batch), sorted(spec))
  for name, f in spec.items():
    x = np.asarray(batch[name])
    lead = x.shape[:1] if rows is None else (rows,)
    assert x.shape == (*lead, *f.shape), (name, x.shape, f.shape)
    assert x.dtype == np.dtype(f.dtype), (name, x.dtype, f.dtype)


def held_out(task: Task, ctx: EvalContext, params, examples, num_batches: int) -> dict:
  """Summed stats over fixed held-out batches (epoch 0 of the validation stream)."""
  import jax  # noqa: PLC0415

  from lmjax.data.stream import BatchIterator  # noqa: PLC0415

  it = BatchIterator(examples, ctx.batch_size, process_index=ctx.process_index, process_count=ctx.process_count,
                     prefetch=0)
  available = len(examples) // ctx.batch_size  # a sharded stream counts this process's parts only
  if ctx.process_count > 1:
    from jax.experimental import multihost_utils  # noqa: PLC0415
    available = int(np.min(multihost_utils.process_allgather(np.int64(available))))
  n = max(1, min(num_batches, available))
  total = None
  for _ in range(n):
    stats = jax.device_get(ctx.step(params, ctx.put(next(it))))
    total = stats if total is None else jax.tree.map(np.add, total, stats)
  return task.finalize(total)


def weighted_ce(logits, labels, weights):
  """Sums of cross-entropy and of correct predictions, weighted; float32."""
  import jax.numpy as jnp  # noqa: PLC0415
  import optax  # noqa: PLC0415
  ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
  correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
  return (ce * weights).sum(), (correct * weights).sum(), weights.sum()


def perplexity(lm_loss: float) -> float:
  # exp of the mean token loss; capped so an untrained model does not print inf.
  return math.exp(min(lm_loss, 80.0))


def check_positions(cfg, what: str) -> None:
  """data.max_seq_len must fit the model's model.max_position_embeddings (`what` names it)."""
  m, d = cfg.model, cfg.data
  if d.max_seq_len > m.max_position_embeddings:
    raise LmjaxError(
        f"data.max_seq_len={d.max_seq_len} is larger than the model's {what} "
        f"(model.max_position_embeddings={m.max_position_embeddings}). Lower data.max_seq_len or raise "
        f"model.max_position_embeddings (a pretrained table cannot grow).")


def refuse_init_from(task: Task, cfg) -> None:
  if cfg.train.init_from:
    raise LmjaxError(f"train.init_from is for fine-tuning; train.objective={task.name!r} trains from scratch "
                     "(to continue a pretraining run, reuse its --workdir).")


def init_source(task: Task, cfg, resumed: bool = False):
  """What train.init_from holds (lmjax.runs.Source), or None: not set, or a resumed
  run whose starting model is gone (the run already holds the weights)."""
  from lmjax import runs  # noqa: PLC0415
  init_from = cfg.train.init_from
  if not init_from or (resumed and not Path(init_from).expanduser().exists()):
    return None
  return runs.inspect(init_from, "train.init_from", task.families, f"{task.name} fine-tuning")


def fine_tuning_tokenizer(cfg, workdir: Path, src, identity: str, sentences_fn):
  """A fine-tuning run's tokenizer: the workdir's own (resumed), the one of
  train.init_from (copied in), or, from scratch, a sentencepiece model
  (`data.tokenizer_model`) trained on `sentences_fn()` and cached by
  `identity`; refused when it does not fit model.vocab_size."""
  from lmjax import runs  # noqa: PLC0415
  from lmjax.data import fetch  # noqa: PLC0415
  from lmjax.data import tokenizer as tk  # noqa: PLC0415
  from lmjax.data.corpus import tokenizer_cache_name  # noqa: PLC0415

  d, workdir = cfg.data, Path(workdir)
  if any((workdir / name).exists() for name in tk.RUN_FILES) or src is not None:
    tok = runs.copy_tokenizer(src, workdir)
  else:
    cache = fetch.cache_root(d.cache_dir) / "tokenizers" / tokenizer_cache_name(identity, cfg)
    tok = tk.for_run(workdir, cache, sentences_fn, cfg.model.vocab_size, seed=cfg.train.seed,
                     max_sentences=d.tokenizer_sentences, model_type=d.tokenizer_model)
  if tok.vocab_size > cfg.model.vocab_size:
    raise LmjaxError(f"The tokenizer ({tok.vocab_size} tokens) does not fit the model's vocabulary "
                     f"(model.vocab_size={cfg.model.vocab_size}); they must come from the same checkpoint.")
  return tok


def pretrained_encoder(src, resumed: bool, what: str = "encoder") -> dict[tuple, np.ndarray] | None:
  """The backbone parameters of train.init_from for a fresh fine-tuning run (None when resuming)."""
  from lmjax import runs  # noqa: PLC0415
  from lmjax.metrics import log  # noqa: PLC0415
  if src is None or resumed:
    return None
  log(f"initialising the {what} from {src.path}" + (f" (step {src.step})" if src.step is not None else ""))
  return runs.backbone_params(src)


def configure_from_init(task: Task, cfg, workdir: Path | None, resumed: bool):
  """The recipe's model section with the architecture of train.init_from (a
  fine-tuning task's `configure`); training-time fields stay the recipe's."""
  import dataclasses  # noqa: PLC0415

  from lmjax import models  # noqa: PLC0415
  init_from = cfg.train.init_from
  saved = None if workdir is None else Path(workdir) / "config.json"
  if resumed and init_from and saved.exists() and not Path(init_from).expanduser().exists():
    # The run already holds the weights; the model it started from may be gone.
    from lmjax import config as config_lib  # noqa: PLC0415
    arch = config_lib.load_json(saved).model
  else:
    src = init_source(task, cfg)
    if src is None:
      return cfg
    arch = src.model
  family = models.of(cfg.model)
  if type(arch) is not type(cfg.model):
    raise LmjaxError(f"train.init_from holds a {models.of(arch).name!r} model but the recipe's model section is "
                     f"a {family.name!r} config; use a recipe of the same family.")
  return dataclasses.replace(cfg, model=dataclasses.replace(
      cfg.model, **{f: getattr(arch, f) for f in family.arch_fields}))
