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


def decays(path: tuple) -> bool:
  """Whether the parameter at `path` (its names, outermost first) is weight-decayed:
  weight matrices and embedding tables are; biases (`bias`, `q_bias`, ...,
  `mlm_bias`: any name ending in "bias"), norm scales (`scale`) and T5's
  relative position bias table (`table`) are not, as in BERT, Hugging Face's
  Trainer and nanoGPT. By name, not by rank: attention biases are [heads, head_dim]."""
  name = str(path[-1])
  return not (name.endswith("bias") or name in ("scale", "table"))


def decay_mask(params):
  return jax.tree_util.tree_map_with_path(lambda path, _: decays(tuple(_key(k) for k in path)), params)


def _key(k):
  return getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))


# Recorded in each checkpoint's meta: optimizer states of another layout do not restore.
STATE_LAYOUT = "apply_if_finite(chain(clip?, adamw))"


def make(tc) -> optax.GradientTransformation:
  """Clipping + AdamW, applied only when the whole update is finite (else the
  step changes neither parameters nor moments; `nonfinite_skips` counts it)."""
  if tc.nonfinite not in ("skip", "stop"):
    raise LmjaxError(f"train.nonfinite={tc.nonfinite!r}: use 'skip' or 'stop'.")
  parts = []
  if tc.max_grad_norm > 0:
    parts.append(optax.clip_by_global_norm(tc.max_grad_norm))
  parts.append(optax.adamw(schedule(tc), b1=tc.b1, b2=tc.b2, eps=tc.eps, weight_decay=tc.weight_decay,
                           mask=decay_mask))
  return optax.apply_if_finite(optax.chain(*parts), max_consecutive_errors=2**30)


def nonfinite_skips(opt_state) -> jax.Array:
  """Steps so far whose update was not finite (and so not applied)."""
  return opt_state.total_notfinite
