"""BERT pretraining: masked LM + next-sentence prediction (`mlm_nsp`), or
masked LM alone (`mlm`, RoBERTa-style; the NSP head gets no gradient).

Examples come from `lmjax.data.bert_examples` (pairs of segments, 15% of
tokens predicted at gathered positions); the MLM loss projects only the
`max_predictions_per_seq` gathered positions onto the vocabulary, as the
original BERT does.
"""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
import numpy as np

from lmjax.errors import LmjaxError
from lmjax.models.family import Workload
from lmjax.tasks import base
from lmjax.tasks.base import BatchField


def check_bert_lengths(cfg) -> None:
  base.check_positions(cfg, "position table")
  d = cfg.data
  if d.max_seq_len < 8:
    raise LmjaxError(f"data.max_seq_len={d.max_seq_len} is too short for [CLS] A [SEP] B [SEP]; use at least 8.")


class MlmNsp(base.Task):
  name = "mlm_nsp"
  families = ("bert",)
  loss_terms = ("mlm_loss", "nsp_loss")
  data_groups = ("corpus", "bert_examples")

  def batch(self, cfg) -> dict[str, BatchField]:
    t, p, v = cfg.data.max_seq_len, cfg.data.max_predictions_per_seq, cfg.model.vocab_size
    return {
        "input_ids": BatchField((t,), np.int32, ("seq",), base.random_ids(5, v)),
        "type_ids": BatchField((t,), np.int32, ("seq",), base.second_half()),
        "input_mask": BatchField((t,), np.int32, ("seq",), base.constant(1, np.int32)),
        "masked_positions": BatchField((p,), np.int32, (None,), base.sorted_positions(1, t)),
        "masked_ids": BatchField((p,), np.int32, (None,), base.random_ids(5, v)),
        "masked_weights": BatchField((p,), np.float32, (None,), base.constant(1.0, np.float32)),
        "nsp_label": BatchField((), np.int32, (), base.random_ids(0, 2)),
    }

  def workload(self, cfg) -> Workload:
    return Workload(cfg.data.max_seq_len, predictions_per_seq=cfg.data.max_predictions_per_seq)

  def check(self, cfg) -> None:
    check_bert_lengths(cfg)
    d = cfg.data
    if not 0 < d.max_predictions_per_seq <= d.max_seq_len:
      raise LmjaxError(f"data.max_predictions_per_seq={d.max_predictions_per_seq} must be in 1..max_seq_len.")
    base.refuse_init_from(self, cfg)

  def open(self, cfg, workdir: Path, mesh, resumed: bool) -> base.TaskData:
    from lmjax.data import corpus  # noqa: PLC0415
    from lmjax.data.bert_examples import BertExamples  # noqa: PLC0415

    where = corpus.processes()
    tok, corpora = corpus.prepare(cfg, workdir, process_count=where["process_count"])
    train, held_out, fields = corpus.streams(
        cfg, corpora, lambda part, seed: BertExamples(part, cfg.data, tok.vocab_size, seed), **where)
    return base.TaskData(cfg, train, lambda ctx, params: base.held_out(self, ctx, params, held_out,
                                                                       cfg.train.eval_batches),
                         best_metric=cfg.checkpoint.best_metric, **fields)

  def denominators(self, batch: dict) -> dict:
    return {
        # max(., 1): a batch without masked positions contributes no MLM loss
        # instead of a division by zero.
        "mlm": jnp.maximum(batch["masked_weights"].astype(jnp.float32).sum(), 1.0),
        "nsp": jnp.asarray(batch["nsp_label"].shape[0], jnp.float32),
    }

  def _forward(self, model, batch, rng):
    mlm_logits, nsp_logits = model(batch["input_ids"], batch["type_ids"], batch["input_mask"],
                                   batch["masked_positions"], rng=rng)
    weights = batch["masked_weights"].astype(jnp.float32)
    ce, correct, count = base.weighted_ce(mlm_logits, batch["masked_ids"], weights)
    return nsp_logits, ce, {"mlm_loss": (ce, count), "mlm_accuracy": (correct, count)}

  def loss(self, model, batch: dict, rng, denominators: dict):
    nsp_logits, mlm_sum, stats = self._forward(model, batch, rng)
    ones = jnp.ones(batch["nsp_label"].shape, jnp.float32)
    nsp_sum, nsp_correct, nsp_count = base.weighted_ce(nsp_logits, batch["nsp_label"], ones)
    stats |= {"nsp_loss": (nsp_sum, nsp_count), "nsp_accuracy": (nsp_correct, nsp_count)}
    return mlm_sum / denominators["mlm"] + nsp_sum / denominators["nsp"], stats


class Mlm(MlmNsp):
  name = "mlm"
  loss_terms = ("mlm_loss",)

  def loss(self, model, batch: dict, rng, denominators: dict):
    _, mlm_sum, stats = self._forward(model, batch, rng)
    return mlm_sum / denominators["mlm"], stats
