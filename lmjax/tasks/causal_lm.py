"""Causal language modelling: next-token cross-entropy over packed rows.

Documents are packed into rows of `data.max_seq_len` tokens
(`lmjax.data.packing`); attention stays inside each document (segment ids),
positions restart at each one, and the token after a document's end carries
weight 0. Reports held-out loss, accuracy and perplexity.
"""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
import numpy as np

from lmjax.errors import LmjaxError
from lmjax.tasks import base
from lmjax.tasks.base import BatchField


class CausalLm(base.Task):
  name = "causal_lm"
  families = ("gpt",)
  loss_terms = ("lm_loss",)
  data_groups = ("corpus",)

  def batch(self, cfg) -> dict[str, BatchField]:
    t, v = cfg.data.max_seq_len, cfg.model.vocab_size
    return {
        "input_ids": BatchField((t,), np.int32, ("seq",), base.random_ids(5, v)),
        "target_ids": BatchField((t,), np.int32, ("seq",), base.random_ids(5, v)),
        "positions": BatchField((t,), np.int32, ("seq",), base.arange()),
        "segment_ids": BatchField((t,), np.int32, ("seq",), base.constant(1, np.int32)),
        "target_weights": BatchField((t,), np.float32, ("seq",), base.constant(1.0, np.float32)),
    }

  def check(self, cfg) -> None:
    base.check_positions(cfg, "context window")
    base.refuse_init_from(self, cfg)

  def open(self, cfg, workdir: Path, mesh, resumed: bool) -> base.TaskData:
    from lmjax.data import corpus  # noqa: PLC0415
    from lmjax.data.packing import PackedExamples  # noqa: PLC0415

    where = corpus.processes()
    tok, corpora = corpus.prepare(cfg, workdir, process_count=where["process_count"])
    train, held_out, fields = corpus.streams(
        cfg, corpora, lambda part, seed: PackedExamples(part.packed(tok.eos_id), cfg.data.max_seq_len, seed), **where)
    return base.TaskData(cfg, train, lambda ctx, params: base.held_out(self, ctx, params, held_out,
                                                                       cfg.train.eval_batches),
                         best_metric=cfg.checkpoint.best_metric, **fields)

  def denominators(self, batch: dict) -> dict:
    return {"lm": jnp.maximum(batch["target_weights"].astype(jnp.float32).sum(), 1.0)}

  def loss(self, model, batch: dict, rng, denominators: dict):
    weights = batch["target_weights"].astype(jnp.float32)
    if model.cfg.loss_chunk:  # the vocabulary projection + cross-entropy chunk by chunk
      from lmjax import layers  # noqa: PLC0415
      x_btd = model.hidden(batch["input_ids"], batch["positions"], batch["segment_ids"], rng=rng)
      ce, correct, count = layers.chunked_cross_entropy(x_btd, model.output_matrix(), batch["target_ids"], weights,
                                                        model.cfg.loss_chunk)
    else:
      logits_btv = model(batch["input_ids"], batch["positions"], batch["segment_ids"], rng=rng)
      ce, correct, count = base.weighted_ce(logits_btv, batch["target_ids"], weights)
    return ce / denominators["lm"], {"lm_loss": (ce, count), "accuracy": (correct, count)}

  def derived(self, metrics: dict) -> dict:
    return {"perplexity": base.perplexity(metrics["lm_loss"])}
