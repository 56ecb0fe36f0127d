"""Token classification (named entities): a linear tagger over each
position's hidden state, cross-entropy at each word's first piece.

Data, word-to-piece alignment and the BIO scheme: `lmjax.data.tagging`.
Where the encoder comes from is `train.init_from`, as for sequence
classification (`lmjax.tasks.classification`); without it the encoder and a
sentencepiece tokenizer (`data.tokenizer_model`) are trained from scratch.
The batches reuse the classification stream, so `data.length_buckets` and
`data.group_by_length` cut padding here too.

Evaluation decodes the whole split and scores words: token accuracy, and
entity-level precision / recall / F1, micro over all entities and per type,
with exact span match as CoNLL's conlleval scores them (seqeval).
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


class TokenClassification(base.Task):
  name = "token_classification"
  model = "token_classification"
  families = ("bert",)
  loss_terms = ("tag_loss",)
  data_groups = ("labelled",)
  fine_tuning = True

  def batch(self, cfg) -> dict[str, BatchField]:
    t, v, c = cfg.data.max_seq_len, cfg.model.vocab_size, cfg.model.num_labels
    return {
        "input_ids": BatchField((t,), np.int32, ("seq",), base.random_ids(5, v)),
        "type_ids": BatchField((t,), np.int32, ("seq",), base.constant(0, np.int32)),
        "input_mask": BatchField((t,), np.int32, ("seq",), base.constant(1, np.int32)),
        "label": BatchField((t,), np.int32, ("seq",), base.random_ids(0, c)),
        "weight": BatchField((), np.float32, (), base.constant(1.0, np.float32)),
    }

  def workload(self, cfg) -> Workload:
    return Workload(cfg.data.max_seq_len, predictions_per_seq=0)

  def check(self, cfg) -> None:
    from lmjax.tasks.classification import check_labelled_batches  # noqa: PLC0415
    check_labelled_batches(cfg)
    metric = cfg.checkpoint.best_metric
    if cfg.data.text_pair_column:
      raise LmjaxError("data.text_pair_column has no meaning for token_classification (one sentence per example).")
    if metric and metric not in ("f1", "precision", "recall", "token_accuracy", "loss") and metric.split("/")[0] not in (
        "precision", "recall", "f1"):
      raise LmjaxError(f"checkpoint.best_metric={metric!r} is not a tagging metric; use f1, precision, recall, "
                       "token_accuracy, loss, or f1/TYPE (precision/TYPE, recall/TYPE).")

  def configure(self, cfg, workdir: Path | None, resumed: bool):
    return base.configure_from_init(self, cfg, workdir, resumed)

  def open(self, cfg, workdir: Path, mesh, resumed: bool) -> base.TaskData:
    from lmjax.data import classification_examples as examples  # noqa: PLC0415
    from lmjax.data import tagging  # noqa: PLC0415

    d = cfg.data
    src = base.init_source(self, cfg, resumed)
    tagged = tagging.load_tagged(d)
    names = tagged.names
    if cfg.model.num_labels != len(names):
      raise LmjaxError(f"model.num_labels={cfg.model.num_labels} but data set {tagged.identity} has "
                       f"{len(names)} tags {list(names)}; set --set model.num_labels={len(names)}.")
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(d, labels=names))
    train_words, train_tags = tagging.read_split(tagged, "train")
    joiner = "" if d.tokenizer_model == "char" else " "  # from scratch: sentencepiece on the training sentences
    tok = base.fine_tuning_tokenizer(cfg, workdir, src, tagged.identity, lambda: [joiner.join(w) for w in train_words])
    splits = [d.eval_split]
    has_test = d.test_split in tagged.sources
    if has_test:
      splits.append(d.test_split)
    else:
      log(f"{tagged.identity} has no {d.test_split!r} split: there will be no final test report")
    encoded = {}
    for split in ("train", *dict.fromkeys(splits)):
      words, tags = (train_words, train_tags) if split == "train" else tagging.read_split(tagged, split)
      enc = tagging.encode(tok, words, tags, d.max_seq_len)
      if enc.truncated:
        msg = (f"{enc.truncated} of {len(enc)} sentences in the {split!r} split are longer than "
               f"data.max_seq_len={d.max_seq_len} pieces")
        if d.truncation == "error":
          raise LmjaxError(f"{msg}. Raise data.max_seq_len or set data.truncation=warn (their last words are then "
                           "left out of training and count as tagged O in evaluation).")
        log(f"warning: {msg}; their last words were cut (data.truncation=warn).")
      encoded[split] = enc

    def report(split):
      return lambda ctx, params: evaluate(ctx, params, encoded[split], names, d.length_buckets)
    pretrained = base.pretrained_encoder(src, resumed)
    train = examples.ClassificationExamples(encoded["train"], cfg.train.seed, buckets=d.length_buckets,
                                            group=d.group_by_length, batch_size=cfg.train.batch_size)
    return base.TaskData(cfg, train, report(d.eval_split), report(d.test_split) if has_test else None,
                         best_metric=cfg.checkpoint.best_metric or "f1", pretrained=pretrained)

  def count_tokens(self, batch: dict) -> int:
    return int(np.count_nonzero(batch["input_mask"]))

  def _mask(self, batch):
    return (batch["label"] >= 0).astype(jnp.float32) * batch["weight"].astype(jnp.float32)[:, None]

  def denominators(self, batch: dict) -> dict:
    return {"tags": jnp.maximum(self._mask(batch).sum(), 1.0)}

  def _logits(self, model, batch, rng):
    return model(batch["input_ids"], batch["type_ids"], batch["input_mask"], rng=rng)

  def loss(self, model, batch: dict, rng, denominators: dict):
    """Cross-entropy at labelled pieces (first pieces of words) of rows with weight 1."""
    mask = self._mask(batch)
    ce, correct, count = base.weighted_ce(self._logits(model, batch, rng), jnp.maximum(batch["label"], 0), mask)
    return ce / denominators["tags"], {"tag_loss": (ce, count), "piece_accuracy": (correct, count)}

  def predict(self, model, batch: dict) -> dict:
    logp = jax.nn.log_softmax(self._logits(model, batch, None), axis=-1)
    nll = -jnp.take_along_axis(logp, jnp.maximum(batch["label"], 0)[..., None], axis=-1)[..., 0]
    return {"tag": jnp.argmax(logp, -1).astype(jnp.int32), "prob": jnp.exp(logp.max(-1)),
            "nll": jnp.where(batch["label"] >= 0, nll, 0.0)}

  def format_report(self, report: dict, title: str) -> str:
    return format_report(report, title)


def evaluate(ctx: base.EvalContext, params, split, names, buckets: int = 1) -> dict:
  """The tagging report over a whole split (see `tagging_report`)."""
  from lmjax.data import classification_examples as examples  # noqa: PLC0415
  from lmjax.data import tagging  # noqa: PLC0415
  tags, nll = [], []
  width = split.input_ids.shape[1]
  for batch in examples.eval_batches(split, ctx.batch_size, ctx.process_index, ctx.process_count, buckets):
    out = jax.device_get(ctx.step(params, ctx.put(batch)))
    pad = ((0, 0), (0, width - out["tag"].shape[1]))  # a bucket-cut batch back to the full width
    tags.append(np.pad(np.asarray(out["tag"]), pad))
    nll.append(np.pad(np.asarray(out["nll"]), pad))
  order = examples.eval_order(split, buckets)
  piece_tags, piece_nll = np.empty((len(split), width), np.int32), np.empty((len(split), width), np.float32)
  piece_tags[order] = np.concatenate(tags)[:len(split)]
  piece_nll[order] = np.concatenate(nll)[:len(split)]
  labelled = split.label >= 0
  loss = float(piece_nll[labelled].sum() / max(labelled.sum(), 1))
  return tagging_report(split.tags, tagging.word_predictions(split, piece_tags), names, loss)


def tagging_report(true: list[np.ndarray], pred: list[np.ndarray], names, loss: float = float("nan")) -> dict:
  """Token (word) accuracy; entity-level precision / recall / F1, micro and
  per type (exact span and type, conlleval's reading of BIO, via seqeval)."""
  from seqeval import metrics as sm  # noqa: PLC0415

  y_true = [[names[i] for i in t] for t in true]
  y_pred = [[names[i] for i in p] for p in pred]
  words = sum(len(t) for t in true)
  out = {
      "f1": float(sm.f1_score(y_true, y_pred, average="micro", zero_division=0)),
      "precision": float(sm.precision_score(y_true, y_pred, average="micro", zero_division=0)),
      "recall": float(sm.recall_score(y_true, y_pred, average="micro", zero_division=0)),
      "token_accuracy": float(sum(int((t == p).sum()) for t, p in zip(true, pred)) / max(words, 1)),
      "loss": loss,
      "examples": len(true),
      "words": words,
  }
  per_type = sm.classification_report(y_true, y_pred, output_dict=True, zero_division=0)
  types = sorted({n[2:] for n in names if n != "O"})
  for kind in types:
    r = per_type.get(kind, {"precision": 0.0, "recall": 0.0, "f1-score": 0.0, "support": 0})
    out[f"precision/{kind}"] = float(r["precision"])
    out[f"recall/{kind}"] = float(r["recall"])
    out[f"f1/{kind}"] = float(r["f1-score"])
    out[f"support/{kind}"] = int(r["support"])
  out["entities"] = sum(out[f"support/{k}"] for k in types)
  out["types"] = types
  return out


def format_report(r: dict, title: str) -> str:
  width = max(10, *(len(k) for k in r["types"])) if r["types"] else 10
  lines = [f"{title}: {r['examples']} sentences, {r['words']} words, {r['entities']} entities",
           f"Entity F1: {r['f1']:.3f}  precision: {r['precision']:.3f}  recall: {r['recall']:.3f} (micro, exact "
           f"spans)  token accuracy: {r['token_accuracy']:.3f}  loss: {r['loss']:.4f}",
           f"{'':{width}}  precision  recall     f1  support"]
  for k in r["types"]:
    lines.append(f"{k:{width}}  {r[f'precision/{k}']:9.3f}  {r[f'recall/{k}']:6.3f}  {r[f'f1/{k}']:5.3f}  "
                 f"{r[f'support/{k}']:7d}")
  return "\n".join(lines)
