"""Sequence classification (fine-tuning): a linear classifier over the pooled
first token, cross-entropy on the class logits.

Where the encoder comes from is `train.init_from` (see `lmjax.runs`): an lmjax
run of a family with a classification model (or one of its
checkpoints/STEP), whose backbone is loaded and pretraining heads dropped, or
a Hugging Face directory read by the family's converter. The family's
architecture fields are taken from there; training-time fields (dropout,
dtype, num_labels) stay as the recipe sets them. The tokenizer is copied into
the run's workdir, so `lmjax.predict` needs nothing but the workdir.

Evaluation covers the whole validation split (accuracy, macro-F1, per-class
precision / recall / F1, confusion matrix); the final test report uses the
best checkpoint.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from lmjax.errors import LmjaxError
from lmjax.metrics import log
from lmjax.models.family import Workload
from lmjax.tasks import base
from lmjax.tasks.base import BatchField


class Classification(base.Task):
  name = "classification"
  model = "classification"
  families = ("bert",)
  loss_terms = ("cls_loss",)
  data_groups = ("labelled",)
  fine_tuning = True

  def batch(self, cfg) -> dict[str, BatchField]:
    t, v = cfg.data.max_seq_len, cfg.model.vocab_size
    return {
        "input_ids": BatchField((t,), np.int32, ("seq",), base.random_ids(5, v)),
        "type_ids": BatchField((t,), np.int32, ("seq",), base.second_half()),
        "input_mask": BatchField((t,), np.int32, ("seq",), base.constant(1, np.int32)),
        "label": BatchField((), np.int32, (), base.random_ids(0, cfg.model.num_labels)),
        "weight": BatchField((), np.float32, (), base.constant(1.0, np.float32)),
    }

  def workload(self, cfg) -> Workload:
    return Workload(cfg.data.max_seq_len, predictions_per_seq=0)

  def check(self, cfg) -> None:
    check_labelled_batches(cfg)
    metric = cfg.checkpoint.best_metric
    if metric and metric not in ("accuracy", "f1", "loss") and metric.split("/")[0] not in (
        "precision", "recall", "f1"):
      raise LmjaxError(f"checkpoint.best_metric={metric!r} is not a classification metric; use accuracy, f1, "
                       "loss, or precision/LABEL, recall/LABEL, f1/LABEL.")

  def configure(self, cfg, workdir: Path | None, resumed: bool):
    return base.configure_from_init(self, cfg, workdir, resumed)

  def open(self, cfg, workdir: Path, mesh, resumed: bool) -> base.TaskData:
    from lmjax.data import classification_examples as examples  # noqa: PLC0415
    from lmjax.data import labelled as labelled_data  # noqa: PLC0415

    d = cfg.data
    src = base.init_source(self, cfg, resumed)
    labelled = labelled_data.load_labelled(d)
    if cfg.model.num_labels != len(labelled.names):
      raise LmjaxError(f"model.num_labels={cfg.model.num_labels} but data set {labelled.identity} has "
                       f"{len(labelled.names)} labels {list(labelled.names)}; set --set "
                       f"model.num_labels={len(labelled.names)}.")
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(d, labels=labelled.names))
    tok = base.fine_tuning_tokenizer(cfg, workdir, src, labelled.identity,
                                     lambda: examples.read_split(labelled, "train")[0])
    splits = [d.eval_split]
    has_test = d.test_split in labelled.sources
    if has_test:
      splits.append(d.test_split)
    else:
      log(f"{labelled.identity} has no {d.test_split!r} split: there will be no final test report")
    encoded = examples.prepare(labelled, tok, cfg.data, ("train", *dict.fromkeys(splits)))
    names = labelled.names

    def report(split):
      return lambda ctx, params: evaluate(ctx, params, encoded[split], names, d.length_buckets)
    pretrained = base.pretrained_encoder(src, resumed)
    train = examples.ClassificationExamples(encoded["train"], cfg.train.seed, buckets=d.length_buckets,
                                            group=d.group_by_length, batch_size=cfg.train.batch_size)
    return base.TaskData(cfg, train,
                         report(d.eval_split), report(d.test_split) if has_test else None,
                         best_metric=cfg.checkpoint.best_metric or "accuracy", pretrained=pretrained)

  def count_tokens(self, batch: dict) -> int:
    return int(np.count_nonzero(batch["input_mask"]))

  def denominators(self, batch: dict) -> dict:
    return {"cls": jnp.maximum(batch["weight"].astype(jnp.float32).sum(), 1.0)}

  def _logits(self, model, batch, rng):
    return model(batch["input_ids"], batch["type_ids"], batch["input_mask"], rng=rng)

  def loss(self, model, batch: dict, rng, denominators: dict):
    """Cross-entropy of the class logits; rows with weight 0 (padding) are ignored."""
    weights = batch["weight"].astype(jnp.float32)
    labels = jnp.maximum(batch["label"], 0)
    ce, correct, count = base.weighted_ce(self._logits(model, batch, rng), labels, weights)
    return ce / denominators["cls"], {"cls_loss": (ce, count), "accuracy": (correct, count)}

  def predict(self, model, batch: dict) -> dict:
    return {"probs": jax.nn.softmax(self._logits(model, batch, None), axis=-1)}

  def format_report(self, report: dict, title: str) -> str:
    return format_report(report, title)


def check_labelled_batches(cfg) -> None:
  """The checks every task on labelled rows shares (lengths, truncation, buckets)."""
  from lmjax.tasks.bert_pretraining import check_bert_lengths  # noqa: PLC0415
  check_bert_lengths(cfg)
  if cfg.data.truncation not in ("warn", "error"):
    raise LmjaxError(f"data.truncation={cfg.data.truncation!r}: use 'warn' or 'error'.")
  if not 1 <= cfg.data.length_buckets <= cfg.data.max_seq_len:
    raise LmjaxError(f"data.length_buckets={cfg.data.length_buckets} must be between 1 (every batch padded to "
                     f"data.max_seq_len) and data.max_seq_len={cfg.data.max_seq_len}.")
  if cfg.data.group_by_length < 0:
    raise LmjaxError(f"data.group_by_length={cfg.data.group_by_length} must be 0 (off) or a number of batches.")


def evaluate(ctx: base.EvalContext, params, split, names, buckets: int = 1) -> dict:
  """The classification report over a whole split (shortest rows first, cut
  to length buckets, when `buckets` > 1)."""
  from lmjax.data import classification_examples as examples  # noqa: PLC0415
  probs = []
  for batch in examples.eval_batches(split, ctx.batch_size, ctx.process_index, ctx.process_count, buckets):
    probs.append(np.asarray(jax.device_get(ctx.step(params, ctx.put(batch))["probs"])))
  walked = np.concatenate(probs)[:len(split)]  # global rows in eval order; padding rows at the end
  probs = np.empty_like(walked)
  probs[examples.eval_order(split, buckets)] = walked
  return classification_report(split.label, probs, names)


def classification_report(labels: np.ndarray, probs: np.ndarray, names: tuple[str, ...]) -> dict:
  """Accuracy, macro-F1, per-class precision / recall / F1, confusion matrix, mean loss."""
  from sklearn import metrics as skm  # noqa: PLC0415

  pred = probs.argmax(-1)
  classes = list(range(len(names)))
  precision, recall, f1, support = skm.precision_recall_fscore_support(labels, pred, labels=classes,
                                                                       zero_division=0)
  out = {
      "accuracy": float(skm.accuracy_score(labels, pred)),
      "f1": float(np.mean(f1)),  # macro
      "loss": float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)))),
      "examples": len(labels),
  }
  for i, name in enumerate(names):
    out[f"precision/{name}"] = float(precision[i])
    out[f"recall/{name}"] = float(recall[i])
    out[f"f1/{name}"] = float(f1[i])
    out[f"support/{name}"] = int(support[i])
  out["confusion"] = skm.confusion_matrix(labels, pred, labels=classes).tolist()
  out["labels"] = list(names)
  return out


def format_report(r: dict, title: str) -> str:
  names = r["labels"]
  width = max(10, *(len(n) for n in names))
  lines = [f"{title}: {r['examples']} examples",
           f"Accuracy: {r['accuracy']:.3f}  F1 Score: {r['f1']:.3f} (macro)  loss: {r['loss']:.4f}",
           f"{'':{width}}  precision  recall     f1  support"]
  for n in names:
    lines.append(f"{n:{width}}  {r[f'precision/{n}']:9.3f}  {r[f'recall/{n}']:6.3f}  {r[f'f1/{n}']:5.3f}  "
                 f"{r[f'support/{n}']:7d}")
  lines.append("confusion matrix (rows = true, columns = predicted): " + " ".join(names))
  for n, row in zip(names, r["confusion"]):
    lines.append(f"{n:{width}}  " + " ".join(f"{c:6d}" for c in row))
  return "\n".join(lines)
