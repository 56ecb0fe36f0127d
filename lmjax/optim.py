"""Optax optimizer and learning-rate schedule from `TrainConfig`."""

from __future__ import annotations

import jax
import optax

from lmjax.errors import LmjaxError


def schedule(tc) -> optax.Schedule:
  """Linear warmup to the peak, then linear (BERT) or cosine decay to the end value."""
  warmup = max(0, min(tc.warmup_steps, tc.steps))
  decay_steps = max(1, tc.steps - warmup)
  if tc.schedule == "linear":
    decay = optax.linear_schedule(tc.learning_rate, tc.end_learning_rate, decay_steps)
  elif tc.schedule == "cosine":
    alpha = tc.end_learning_rate / tc.learning_rate if tc.learning_rate else 0.0
    decay = optax.cosine_decay_schedule(tc.learning_rate, decay_steps, alpha=alpha)
  else:
    raise LmjaxError(f"train.schedule={tc.schedule!r}: use 'linear' or 'cosine'.")
  if warmup == 0:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, tc.learning_rate, warmup), decay], [warmup])


def decay_mask(params):
  """Weight decay on matrices and embeddings only: never biases or norm scales."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def make(tc) -> optax.GradientTransformation:
  parts = []
  if tc.max_grad_norm > 0:
    parts.append(optax.clip_by_global_norm(tc.max_grad_norm))
  parts.append(optax.adamw(schedule(tc), b1=tc.b1, b2=tc.b2, eps=tc.eps, weight_decay=tc.weight_decay,
                           mask=decay_mask))
  return optax.chain(*parts)
