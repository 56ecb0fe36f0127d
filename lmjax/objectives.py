"""Training objectives, chosen by name: one loss function each.

An objective is two pure functions over a batch (a dict of arrays):

  denominators(batch) -> {term: count}   from the whole global batch
  loss(model, batch, rng, denominators) -> (loss, stats)

`loss` returns a scalar whose gradient is the objective's gradient, already
divided by the whole batch's counts, so summing it over micro-batches gives
exactly the full-batch gradient (gradient accumulation is exact). `stats`
maps metric names to (numerator, denominator) pairs that also add up over
micro-batches and over evaluation batches; `finalize` turns them into ratios.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from lmjax.errors import LmjaxError

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Objective:
  name: str
  denominators: Callable[[dict], dict]
  loss: Callable[..., tuple[Array, dict]]
  batch_keys: tuple[str, ...]
  # Stats whose ratios add up to the reported 'loss'.
  loss_terms: tuple[str, ...]
  # Which model of the family it trains (lmjax.models.FAMILIES).
  task: str = "pretraining"
  # fn(model, batch) -> per-example outputs, for evaluations that need more
  # than summed stats (classification: F1, confusion matrix).
  predict: Callable | None = None
  # The model family it needs (lmjax.models.FAMILIES).
  family: str = "bert"
  # fn(finalized metrics) -> more metrics derived from them (perplexity).
  derived: Callable[[dict], dict] | None = None


def _weighted_ce(logits: Array, labels: Array, weights: Array):
  """Sums of cross-entropy and of correct predictions, weighted; float32."""
  ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
  correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
  return (ce * weights).sum(), (correct * weights).sum(), weights.sum()


def _bert_denominators(batch: dict) -> dict:
  return {
      # max(., 1): a batch without masked positions contributes no MLM loss
      # instead of a division by zero.
      "mlm": jnp.maximum(batch["masked_weights"].astype(jnp.float32).sum(), 1.0),
      "nsp": jnp.asarray(batch["nsp_label"].shape[0], jnp.float32),
  }


def _bert_forward(model, batch: dict, rng):
  return model(batch["input_ids"], batch["type_ids"], batch["input_mask"], batch["masked_positions"], rng=rng)


def _mlm_stats(mlm_logits, batch):
  weights = batch["masked_weights"].astype(jnp.float32)
  ce, correct, count = _weighted_ce(mlm_logits, batch["masked_ids"], weights)
  return ce, {"mlm_loss": (ce, count), "mlm_accuracy": (correct, count)}


def mlm_nsp_loss(model, batch: dict, rng, denominators: dict):
  """BERT pretraining: masked-LM mean loss + next-sentence mean loss."""
  mlm_logits, nsp_logits = _bert_forward(model, batch, rng)
  mlm_sum, stats = _mlm_stats(mlm_logits, batch)
  ones = jnp.ones(batch["nsp_label"].shape, jnp.float32)
  nsp_sum, nsp_correct, nsp_count = _weighted_ce(nsp_logits, batch["nsp_label"], ones)
  stats |= {"nsp_loss": (nsp_sum, nsp_count), "nsp_accuracy": (nsp_correct, nsp_count)}
  return mlm_sum / denominators["mlm"] + nsp_sum / denominators["nsp"], stats


def mlm_loss(model, batch: dict, rng, denominators: dict):
  """Masked LM alone (RoBERTa-style); the NSP head gets no gradient."""
  mlm_logits, _ = _bert_forward(model, batch, rng)
  mlm_sum, stats = _mlm_stats(mlm_logits, batch)
  return mlm_sum / denominators["mlm"], stats


def _classification_denominators(batch: dict) -> dict:
  return {"cls": jnp.maximum(batch["weight"].astype(jnp.float32).sum(), 1.0)}


def _classify(model, batch: dict, rng):
  return model(batch["input_ids"], batch["type_ids"], batch["input_mask"], rng=rng)


def classification_loss(model, batch: dict, rng, denominators: dict):
  """Cross-entropy of the class logits; rows with weight 0 (padding) are ignored."""
  weights = batch["weight"].astype(jnp.float32)
  labels = jnp.maximum(batch["label"], 0)
  ce, correct, count = _weighted_ce(_classify(model, batch, rng), labels, weights)
  return ce / denominators["cls"], {"cls_loss": (ce, count), "accuracy": (correct, count)}


def classification_predict(model, batch: dict) -> dict:
  return {"probs": jax.nn.softmax(_classify(model, batch, None), axis=-1)}


def _lm_denominators(batch: dict) -> dict:
  return {"lm": jnp.maximum(batch["target_weights"].astype(jnp.float32).sum(), 1.0)}


def causal_lm_loss(model, batch: dict, rng, denominators: dict):
  """Next-token cross-entropy over packed rows; padding and the token after
  each document's end carry weight 0 (see lmjax.data.packing)."""
  logits_btv = model(batch["input_ids"], batch["positions"], batch["segment_ids"], rng=rng)
  ce, correct, count = _weighted_ce(logits_btv, batch["target_ids"], batch["target_weights"].astype(jnp.float32))
  return ce / denominators["lm"], {"lm_loss": (ce, count), "accuracy": (correct, count)}


def _perplexity(metrics: dict) -> dict:
  # exp of the mean token loss; capped so an untrained model does not print inf.
  return {"perplexity": math.exp(min(metrics["lm_loss"], 80.0))}


_BERT_KEYS = ("input_ids", "type_ids", "input_mask", "masked_positions", "masked_ids", "masked_weights",
              "nsp_label")

OBJECTIVES = {
    "mlm_nsp": Objective("mlm_nsp", _bert_denominators, mlm_nsp_loss, _BERT_KEYS, ("mlm_loss", "nsp_loss")),
    "mlm": Objective("mlm", _bert_denominators, mlm_loss, _BERT_KEYS, ("mlm_loss",)),
    "classification": Objective(
        "classification", _classification_denominators, classification_loss,
        ("input_ids", "type_ids", "input_mask", "label", "weight"), ("cls_loss",), task="classification",
        predict=classification_predict),
    "causal_lm": Objective(
        "causal_lm", _lm_denominators, causal_lm_loss,
        ("input_ids", "target_ids", "positions", "segment_ids", "target_weights"), ("lm_loss",), family="gpt",
        derived=_perplexity),
}


def get(name: str) -> Objective:
  if name not in OBJECTIVES:
    raise LmjaxError(f"Unknown train.objective {name!r}; available: {', '.join(OBJECTIVES)}.")
  return OBJECTIVES[name]


def finalize(objective: Objective, stats: dict) -> dict:
  """(numerator, denominator) pairs -> float metrics, plus their total 'loss'."""
  out = {k: float(num) / max(float(den), 1e-12) for k, (num, den) in stats.items()}
  out["loss"] = sum(out[k] for k in objective.loss_terms)
  if objective.derived is not None:
    out.update(objective.derived(out))
  return out
