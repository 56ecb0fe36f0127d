"""BERT pretraining examples, made on the host, deterministic from (seed, epoch, index).

Following the original `create_pretraining_data.py`:
  * each document is cut into chunks of whole sentences filling the sequence;
  * a chunk splits at a random sentence into segment A and the true next
    segment B, or (with `random_next_prob`) B is a random stretch of another
    document; the pair is truncated to fit [CLS] A [SEP] B [SEP];
  * 15% of the non-special tokens (at most `max_predictions_per_seq`) are
    predicted: 80% become [MASK], 10% a random token, 10% stay unchanged.
Pairs and masks are drawn anew every epoch. Example k of the global stream
belongs to epoch k // num_chunks, and its chunk is that epoch's permutation at
k % num_chunks, so the stream position alone (saved in checkpoints) fixes
every later batch (lmjax.data.stream). Each process of a multi-host run builds only its share.
"""

from __future__ import annotations

import array
import os

import numpy as np

from lmjax.data import tokenizer as tk
from lmjax.data.corpus import TokenizedCorpus
from lmjax.data.stream import EpochShuffle


class BertExamples:
  """Random access to BERT pretraining examples by global stream index."""

  def __init__(self, corpus: TokenizedCorpus, data_cfg, vocab_size: int, seed: int):
    self.corpus = corpus
    self.cfg = data_cfg
    self.vocab_size = vocab_size
    self.seed = seed
    self.max_tokens = data_cfg.max_seq_len - 3  # [CLS] A [SEP] B [SEP]
    self.chunks = self._chunk()
    if len(self.chunks) == 0:
      raise ValueError("corpus has no sentences")
    self.order = EpochShuffle(len(self.chunks), seed, salt=0)

  def _chunk(self) -> np.ndarray:
    """(doc, first sentence, end sentence) triples filling max_tokens: a chunk
    ends after the first sentence that brings it to max_tokens, or with its
    document. Kept next to a memory-mapped part's cache, so a large part is
    cut once."""
    c = self.corpus
    path = None if c.directory is None else c.directory / f"chunks-{self.max_tokens}.npy"
    if path is not None and path.exists():
      return np.load(path, mmap_mode="r")
    sent_start = np.asarray(c.sent_start)
    doc_start = np.asarray(c.doc_start)
    out = array.array("q")  # 24 bytes a chunk, not a Python tuple each
    for d in range(c.num_docs):
      s, end = int(doc_start[d]), int(doc_start[d + 1])
      while s < end:
        # The first e > s whose sentences s..e-1 hold max_tokens, or the document's end.
        e = min(max(int(np.searchsorted(sent_start, sent_start[s] + self.max_tokens, "left")), s + 1), end)
        if sent_start[e] > sent_start[s]:
          out.extend((d, s, e))
        s = e
    chunks = np.frombuffer(out, np.int64).reshape(-1, 3) if out else np.zeros((0, 3), np.int64)
    if path is not None:
      tmp = path.with_name(f"{path.stem}.tmp-{os.getpid()}.npy")
      np.save(tmp, chunks)
      tmp.replace(path)
    return chunks

  def __len__(self) -> int:
    """Examples per epoch (one per chunk)."""
    return len(self.chunks)

  def __getitem__(self, k: int) -> dict[str, np.ndarray]:
    epoch, chunk = self.order(k)
    rng = np.random.default_rng([self.seed, epoch, 1, chunk])
    return self._make(chunk, rng)

  def _concat(self, first: int, end: int) -> np.ndarray:
    c = self.corpus
    return c.tokens[c.sent_start[first]:c.sent_start[end]]

  def _make(self, chunk: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    cfg, c = self.cfg, self.corpus
    doc, first, end = (int(x) for x in self.chunks[chunk])
    target = self.max_tokens
    if rng.random() < cfg.short_seq_prob:
      target = int(rng.integers(2, self.max_tokens + 1))
    # Segment A: sentences [first, a_end) of the chunk, at least one. A chunk
    # of a single sentence is cut inside it, so its true continuation is the
    # rest of the sentence (the original forces such chunks to "random",
    # which skews the 50/50 label balance on short-sentence corpora).
    n = end - first
    a_end = first + (int(rng.integers(1, n)) if n >= 2 else 1)
    a = self._concat(first, a_end)
    true_b = self._concat(a_end, end)
    if n < 2 and len(a) >= 2:
      cut = int(rng.integers(1, len(a)))
      a, true_b = a[:cut], a[cut:]
    random_next = len(true_b) == 0 or c.num_docs < 2 or rng.random() < cfg.random_next_prob
    if random_next:
      other = doc
      while other == doc and c.num_docs > 1:
        other = int(rng.integers(c.num_docs))
      lo, hi = int(c.doc_start[other]), int(c.doc_start[other + 1])
      s = int(rng.integers(lo, hi))
      b_target = max(1, target - len(a))
      e = s
      while e < hi and (e == s or c.sent_start[e] - c.sent_start[s] < b_target):
        e += 1
      b = self._concat(s, e)
    else:
      b = true_b
    a, b = _truncate_pair(a, b, target, rng)
    ids = np.concatenate([[tk.CLS], a, [tk.SEP], b, [tk.SEP]]).astype(np.int32)
    type_ids = np.concatenate([np.zeros(len(a) + 2, np.int32), np.ones(len(b) + 1, np.int32)])
    return self._mask_and_pad(ids, type_ids, int(random_next), rng)

  def _mask_and_pad(self, ids, type_ids, nsp_label, rng):
    cfg = self.cfg
    t, p = cfg.max_seq_len, cfg.max_predictions_per_seq
    candidates = np.flatnonzero((ids != tk.CLS) & (ids != tk.SEP))
    num = min(p, max(1, int(round(len(ids) * cfg.mask_prob))), len(candidates))
    positions = np.sort(rng.choice(candidates, num, replace=False)) if num else np.zeros(0, np.int64)
    labels = ids[positions].copy()
    inputs = ids.copy()
    roll = rng.random(num)
    inputs[positions[roll < 0.8]] = tk.MASK
    rand = positions[roll >= 0.9]
    inputs[rand] = rng.integers(tk.NUM_SPECIAL, self.vocab_size, len(rand))
    out = {
        "input_ids": np.zeros(t, np.int32), "type_ids": np.zeros(t, np.int32),
        "input_mask": np.zeros(t, np.int32), "masked_positions": np.zeros(p, np.int32),
        "masked_ids": np.zeros(p, np.int32), "masked_weights": np.zeros(p, np.float32),
        "nsp_label": np.int32(nsp_label),
    }
    out["input_ids"][:len(inputs)] = inputs
    out["type_ids"][:len(type_ids)] = type_ids
    out["input_mask"][:len(inputs)] = 1
    out["masked_positions"][:num] = positions
    out["masked_ids"][:num] = labels
    out["masked_weights"][:num] = 1.0
    return out


def _truncate_pair(a: np.ndarray, b: np.ndarray, max_tokens: int, rng: np.random.Generator):
  """Trims the longer segment, from the front or back at random, until they fit."""
  a, b = list(a), list(b)
  while len(a) + len(b) > max_tokens:
    longer = a if len(a) > len(b) else b
    if len(longer) <= 1:
      # Both segments are down to one token: drop from B (cannot happen
      # with max_tokens >= 2, kept as a guard).
      b.pop()
      continue
    if rng.random() < 0.5:
      del longer[0]
    else:
      longer.pop()
  if not b:  # never leave segment B empty
    b = [a.pop()] if len(a) > 1 else [tk.UNK]
  return np.asarray(a, np.int32), np.asarray(b, np.int32)


def pretraining_examples(cfg, workdir, *, process_index: int = 0, process_count: int = 1):
  """(training examples, held-out examples, tokenizer) of a BERT pretraining run."""
  from lmjax.data import corpus  # noqa: PLC0415
  tok, corpora = corpus.prepare(cfg, workdir, process_count=process_count)
  train, held_out, _ = corpus.streams(
      cfg, corpora, lambda part, seed: BertExamples(part, cfg.data, tok.vocab_size, seed),
      process_index=process_index, process_count=process_count)
  return train, held_out, tok
