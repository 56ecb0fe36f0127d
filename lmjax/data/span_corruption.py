"""T5's span corruption (Raffel et al. 2020, section 3.1.4): the pretraining
examples of an encoder-decoder.

The corpus is one token stream (documents joined by the end-of-text id) cut
into rows of `raw_len` tokens. In each row, `round(raw_len * noise_density)`
tokens are hidden in `round(noise / mean_span)` spans whose lengths, like
those of the kept stretches between them, are a random partition (T5's
`random_spans_noise_mask`; a row starts with kept tokens and ends with a
span). The input keeps the visible tokens with one sentinel in place of each
span; the target lists each sentinel followed by the tokens it hides:

    row     a b c d e f g h i j
    input   a b <s0> e f g <s1> j </s>     (c d and h i hidden)
    target  <s0> c d <s1> h i </s>

Sentinel i is token id `vocab_size - 1 - i`: the last ids of the model's
vocabulary, which the tokenizer leaves free. `raw_len` is the longest row
whose input fits `input_len` (T5's `random_spans_helper`), so every row has
the same input and target lengths.

Row k of the training stream is row perm_epoch[k % rows] with the noise drawn
from (seed, epoch, row): resuming at a stream position recreates every later
example exactly.
"""

from __future__ import annotations

import numpy as np

from lmjax.data.stream import EpochShuffle
from lmjax.errors import LmjaxError

SALT = 13


def span_counts(raw_len: int, noise_density: float, mean_span: float) -> tuple[int, int]:
  """(hidden tokens, spans) of a row of raw_len tokens."""
  noise = min(max(int(round(raw_len * noise_density)), 1), raw_len - 1)
  spans = max(int(round(noise / mean_span)), 1)
  return noise, spans


def lengths_for(input_len: int, noise_density: float, mean_span: float) -> tuple[int, int]:
  """(raw_len, target_len): the longest row whose input (visible tokens + one sentinel per
  span + end-of-text) fits input_len, and the target length it gives."""
  def sizes(raw):
    noise, spans = span_counts(raw, noise_density, mean_span)
    return raw - noise + spans + 1, noise + spans + 1
  raw = 2
  if sizes(raw)[0] > input_len:
    raise LmjaxError(f"data.max_seq_len={input_len} is too short for span corruption; use at least 8.")
  while sizes(raw + 1)[0] <= input_len:
    raw += 1
  return raw, sizes(raw)[1]


def _segmentation(rng: np.random.Generator, items: int, segments: int) -> np.ndarray:
  """Random positive lengths of `segments` pieces summing to `items`."""
  cuts = np.sort(rng.choice(np.arange(1, items), segments - 1, replace=False)) if segments > 1 else np.zeros(0, int)
  return np.diff(np.concatenate([[0], cuts, [items]]))


def noise_mask(rng: np.random.Generator, length: int, noise_density: float, mean_span: float) -> np.ndarray:
  """Boolean [length]: True where a token is hidden; kept stretches and spans alternate, kept first."""
  noise, spans = span_counts(length, noise_density, mean_span)
  noise_lengths = _segmentation(rng, noise, spans)
  kept_lengths = _segmentation(rng, length - noise, spans)
  mask = np.zeros(length, bool)
  at = 0
  for kept, hidden in zip(kept_lengths, noise_lengths):
    at += kept
    mask[at:at + hidden] = True
    at += hidden
  return mask


def corrupt(tokens: np.ndarray, mask: np.ndarray, vocab_size: int, eos_id: int) -> tuple[np.ndarray, np.ndarray]:
  """(input, target) token arrays of one row (see the module docstring)."""
  starts = np.flatnonzero(mask & ~np.concatenate([[False], mask[:-1]]))  # first token of each span
  sentinel = np.full(len(tokens), -1, np.int64)
  sentinel[starts] = vocab_size - 1 - np.arange(len(starts))
  inputs = [sentinel[i] if sentinel[i] >= 0 else tokens[i] for i in range(len(tokens))
            if not mask[i] or sentinel[i] >= 0]
  targets = []
  for i in range(len(tokens)):
    if sentinel[i] >= 0:
      targets.append(sentinel[i])
    if mask[i]:
      targets.append(tokens[i])
  return np.asarray(inputs + [eos_id], np.int32), np.asarray(targets + [eos_id], np.int32)


class SpanCorruptionExamples:
  """Random access to span-corrupted rows by global stream index (seq2seq batch fields).

  `tokens`: the documents end to end with their end ids, as an array or as
  `lmjax.data.corpus.PackedTokens` (read from a memory-mapped cache)."""

  def __init__(self, tokens, input_len: int, noise_density: float, mean_span: float, vocab_size: int,
               eos_id: int, seed: int, shuffle: bool = True, start_id: int = 0):
    self.raw_len, self.target_len = lengths_for(input_len, noise_density, mean_span)
    self.tokens, self.input_len = tokens, input_len
    self.noise_density, self.mean_span = noise_density, mean_span
    self.vocab_size, self.eos_id, self.seed, self.start_id = vocab_size, eos_id, seed, start_id
    self.num_rows = len(tokens) // self.raw_len
    if self.num_rows < 1:
      raise LmjaxError(f"The corpus has {len(tokens)} tokens, fewer than one span-corruption row of {self.raw_len} "
                       "tokens; add text or lower data.max_seq_len.")
    self.order = EpochShuffle(self.num_rows, seed, salt=SALT, shuffle=shuffle)

  def __len__(self) -> int:
    return self.num_rows

  def __getitem__(self, k: int) -> dict[str, np.ndarray]:
    epoch, row = self.order(k)
    if isinstance(self.tokens, np.ndarray):
      raw = self.tokens[row * self.raw_len:(row + 1) * self.raw_len]
    else:
      raw = self.tokens.window(row * self.raw_len, self.raw_len)[0]
    rng = np.random.default_rng([self.seed, epoch, row, SALT])
    x, y = corrupt(raw, noise_mask(rng, self.raw_len, self.noise_density, self.mean_span), self.vocab_size,
                   self.eos_id)
    s, t = self.input_len, self.target_len
    out = {"input_ids": np.zeros(s, np.int32), "input_segments": np.zeros(s, np.int32),
           "decoder_input_ids": np.zeros(t, np.int32), "target_ids": np.zeros(t, np.int32),
           "target_segments": np.zeros(t, np.int32), "target_weights": np.zeros(t, np.float32)}
    out["input_ids"][:len(x)], out["input_segments"][:len(x)] = x, 1
    out["target_ids"][:len(y)], out["target_segments"][:len(y)], out["target_weights"][:len(y)] = y, 1, 1.0
    out["decoder_input_ids"][0] = self.start_id
    out["decoder_input_ids"][1:len(y)] = y[:-1]
    return out
