"""What a model family provides, as one record (`Family`), and the shape of
work one token costs (`Workload`).

A family is one file under `lmjax/models/` holding its frozen config (with
named presets, `__post_init__` checks raising `LmjaxError`,
`flops_per_token(workload, training)` and `mesh_divisors()`), its modules,
and a `FAMILY` record at the bottom; `lmjax/models/__init__.py` lists the
records. Generic code (the trainer, the run loader, the benchmark,
generation) asks the record, never the family's name.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable


@dataclasses.dataclass(frozen=True)
class Workload:
  """The sequence shapes a task runs a model on, for counting FLOPs per token.

  seq_len: tokens per row (the encoder's input length for an encoder-decoder).
  predictions_per_seq: positions per row projected onto the vocabulary;
    None = every position (causal LM), 0 = none (a classifier).
  target_len: decoder tokens per row of an encoder-decoder (0 otherwise).
  """
  seq_len: int
  predictions_per_seq: int | None = None
  target_len: int = 0


@dataclasses.dataclass(frozen=True)
class Generation:
  """The hooks `lmjax.generate` needs to decode with a KV cache.

  init_cache(cfg, batch, length) -> the decoder's cache of `length` slots per row.
  prefill(model, ids_bt, positions_bt, cache) -> (logits [B, T, V] float32, cache)
  step(model, ids_b1, positions_b1, cache) -> (logits [B, 1, V] float32, cache)
  forward(model, ids_bt, encoder_inputs) -> logits [B, T, V]: the whole
    sequence, no cache (the baseline of the decode benchmark and of tests);
    encoder_inputs is None for a decoder, (ids_bs, segments_bs) otherwise.
  encode (encoder-decoders only): encode(model, ids_bs, segments_bs, cache) ->
    the cache with whatever the decoder reads of the input (computed once).
  start_id (encoder-decoders only): the token every output starts from.

  Every array in a cache has the batch as its leading axis (beam search
  copies and reorders rows of it).
  """
  model: str  # which of the family's models decodes
  init_cache: Callable
  prefill: Callable
  step: Callable
  forward: Callable
  encode: Callable | None = None
  start_id: int | None = None

  @property
  def encoder_decoder(self) -> bool:
    return self.encode is not None


@dataclasses.dataclass(frozen=True)
class Family:
  name: str  # written into checkpoints and config.json ("model": {"family": ...})
  config: type  # its frozen config dataclass
  # Model class per kind of head: "pretraining" (the family's own objective),
  # "classification", ... A task names the kind it trains.
  models: dict[str, type]
  # Module with config_from_hf(dict), load_pretrained(dir) -> (cfg, {path: array})
  # and save_pretrained(dir, cfg, params): Hugging Face interop.
  converter: str = ""
  hf_model_types: tuple[str, ...] = ()  # config.json "model_type" values the converter reads
  # Model fields that fine-tuning copies from the model it starts from
  # (`train.init_from`): the architecture, not training settings.
  arch_fields: tuple[str, ...] = ()
  # Top-level parameter subtree shared by all of the family's models, which
  # `train.init_from` carries from one task's model into another's ("bert").
  backbone: str = ""
  generation: Generation | None = None

  @property
  def default_model(self) -> str:
    """The kind a Hugging Face checkpoint of the family loads into (the first listed)."""
    return next(iter(self.models))

  def model_class(self, kind: str) -> type:
    from lmjax.errors import LmjaxError  # noqa: PLC0415
    if kind not in self.models:
      raise LmjaxError(f"The {self.name!r} family has no model for {kind!r}; it has: {', '.join(self.models)}.")
    return self.models[kind]

  def convert(self) -> Any:
    """The Hugging Face converter module (imported on first use)."""
    from lmjax.errors import LmjaxError  # noqa: PLC0415
    if not self.converter:
      raise LmjaxError(f"The {self.name!r} family has no Hugging Face converter.")
    return importlib.import_module(self.converter)
