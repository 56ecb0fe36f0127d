"""T5's span-corruption pretraining (lmjax.data.span_corruption): the encoder
reads a row with spans replaced by sentinels, the decoder writes the hidden
spans. Cross-entropy on target tokens; reports held-out loss, token accuracy
and perplexity.

The sentencepiece vocabulary is trained with model.vocab_size minus the
sentinels a row needs, so sentinel ids (the last ones) never collide with
text. A run fine-tunes with `seq2seq` through `train.init_from`.
"""

from __future__ import annotations

from pathlib import Path

from lmjax.data import span_corruption as sc
from lmjax.errors import LmjaxError
from lmjax.tasks import base
from lmjax.tasks.seq2seq import Seq2Seq


def sentinels_needed(cfg) -> int:
  d = cfg.data
  raw_len, _ = sc.lengths_for(d.max_seq_len, d.noise_density, d.mean_noise_span_length)
  return sc.span_counts(raw_len, d.noise_density, d.mean_noise_span_length)[1]


class SpanCorruption(Seq2Seq):  # the loss, metrics and model of seq2seq; its own data
  name = "span_corruption"
  data_groups = ("corpus", "span_corruption")
  fine_tuning = False

  def _target_len(self, cfg) -> int:
    d = cfg.data
    return sc.lengths_for(d.max_seq_len, d.noise_density, d.mean_noise_span_length)[1]

  def check(self, cfg) -> None:
    d = cfg.data
    base.refuse_init_from(self, cfg)
    if not 0.0 < d.noise_density < 1.0:
      raise LmjaxError(f"data.noise_density={d.noise_density} must be in (0, 1) (T5: 0.15).")
    if d.mean_noise_span_length < 1.0:
      raise LmjaxError(f"data.mean_noise_span_length={d.mean_noise_span_length} must be >= 1 (T5: 3).")
    sc.lengths_for(d.max_seq_len, d.noise_density, d.mean_noise_span_length)  # raises when too short
    room = cfg.model.vocab_size - sentinels_needed(cfg)
    if room < 64:
      raise LmjaxError(f"model.vocab_size={cfg.model.vocab_size} leaves no room for the {sentinels_needed(cfg)} "
                       "sentinel ids span corruption needs at data.max_seq_len="
                       f"{d.max_seq_len} (plus a tokenizer of at least 64 pieces); raise model.vocab_size.")

  def configure(self, cfg, workdir: Path | None, resumed: bool):
    return cfg

  def open(self, cfg, workdir: Path, mesh, resumed: bool) -> base.TaskData:
    from lmjax import models  # noqa: PLC0415
    from lmjax.data import corpus  # noqa: PLC0415

    d = cfg.data
    sentinels = sentinels_needed(cfg)
    where = corpus.processes()
    tok, corpora = corpus.prepare(cfg, workdir, vocab_size=cfg.model.vocab_size - sentinels,
                                  process_count=where["process_count"])
    if tok.vocab_size + sentinels > cfg.model.vocab_size:
      raise LmjaxError(f"The tokenizer in {workdir} has {tok.vocab_size} pieces, which leaves no room for the "
                       f"{sentinels} sentinel ids at the end of model.vocab_size={cfg.model.vocab_size}. Raise "
                       f"model.vocab_size to at least {tok.vocab_size + sentinels}, or use a fresh --workdir.")
    start_id = models.of(cfg.model).generation.start_id

    def make(part, seed):
      return sc.SpanCorruptionExamples(part.packed(tok.eos_id), d.max_seq_len, d.noise_density,
                                       d.mean_noise_span_length, cfg.model.vocab_size, tok.eos_id, seed,
                                       start_id=start_id)
    train, held_out, fields = corpus.streams(cfg, corpora, make, **where)
    return base.TaskData(cfg, train, lambda ctx, params: base.held_out(self, ctx, params, held_out,
                                                                       cfg.train.eval_batches),
                         best_metric=cfg.checkpoint.best_metric, **fields)

  def format_report(self, report: dict, title: str) -> str:
    return base.Task.format_report(self, report, title)
