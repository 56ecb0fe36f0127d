"""Causal-LM examples: documents packed into fixed-length rows.

Every document's tokens are followed by the tokenizer's end-of-document id,
and all documents of a split are concatenated into one stream. Row r holds
stream[r*T : r*T + T] as inputs and the same span shifted by one as targets,
so no token is dropped or repeated between rows. Within a row:

  segment_ids   1, 2, ... per document piece (attention stays inside one)
  positions     0, 1, ... restarting at each piece (learned or rotary positions)
  target_weights 0 where the target is the first token of the next document
                 (nothing in a document predicts what follows it), else 1

Rows are shuffled per epoch by (seed, epoch); example k of the global stream
is row perm_{k // rows}[k % rows], so the stream position saved in a
checkpoint fixes every later batch (as for BERT, see lmjax.data.pretrain).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lmjax.data import pretrain
from lmjax.data import tokenizer as tk
from lmjax.errors import LmjaxError


def pack_stream(docs: list[np.ndarray], eos_id: int) -> tuple[np.ndarray, np.ndarray]:
  """(tokens, document id of each token) with eos_id closing every document."""
  lengths = np.asarray([len(d) + 1 for d in docs], np.int64)
  tokens = np.empty(int(lengths.sum()), np.int32)
  ends = np.cumsum(lengths)
  starts = ends - lengths
  for d, s, e in zip(docs, starts, ends):
    tokens[s:e - 1] = d
    tokens[e - 1] = eos_id
  doc_ids = np.repeat(np.arange(len(docs), dtype=np.int64), lengths)
  return tokens, doc_ids


def corpus_documents(corpus: pretrain.TokenizedCorpus) -> list[np.ndarray]:
  c = corpus
  return [c.tokens[c.sent_start[c.doc_start[d]]:c.sent_start[c.doc_start[d + 1]]] for d in range(c.num_docs)]


class PackedExamples:
  """Random access to packed causal-LM rows by global stream index."""

  def __init__(self, tokens: np.ndarray, doc_ids: np.ndarray, seq_len: int, seed: int, shuffle: bool = True):
    self.tokens, self.doc_ids = tokens, doc_ids
    self.seq_len = seq_len
    self.seed = seed
    self.shuffle = shuffle
    self.num_rows = (len(tokens) - 1) // seq_len
    if self.num_rows < 1:
      raise LmjaxError(f"The corpus has {len(tokens)} tokens, fewer than one row of data.max_seq_len={seq_len} "
                       "(+1); add text or lower data.max_seq_len.")
    self._perms: dict[int, np.ndarray] = {}

  @classmethod
  def from_documents(cls, docs: list[np.ndarray], eos_id: int, seq_len: int, seed: int, shuffle: bool = True):
    tokens, doc_ids = pack_stream(docs, eos_id)
    return cls(tokens, doc_ids, seq_len, seed, shuffle)

  def __len__(self) -> int:
    return self.num_rows

  def _row(self, k: int) -> int:
    epoch, j = divmod(int(k), self.num_rows)
    if not self.shuffle:
      return j
    if epoch not in self._perms:
      if len(self._perms) > 4:
        self._perms.clear()
      self._perms[epoch] = np.random.default_rng([self.seed, epoch, 2]).permutation(self.num_rows)
    return int(self._perms[epoch][j])

  def __getitem__(self, k: int) -> dict[str, np.ndarray]:
    t = self.seq_len
    s = self._row(k) * t
    toks, docs = self.tokens[s:s + t + 1], self.doc_ids[s:s + t + 1]
    segment = (docs[:t] - docs[0] + 1).astype(np.int32)  # document ids are consecutive along the stream
    first = np.concatenate([[0], np.flatnonzero(np.diff(segment)) + 1])  # where each piece starts
    positions = np.arange(t, dtype=np.int32) - first[segment - 1].astype(np.int32)
    return {
        "input_ids": toks[:t].astype(np.int32),
        "target_ids": toks[1:].astype(np.int32),
        "positions": positions,
        "segment_ids": segment,
        "target_weights": (docs[1:] == docs[:t]).astype(np.float32),
    }


def causal_lm_data(cfg, workdir: Path):
  """Corpus -> tokenizer -> (train rows, held-out rows, tokenizer)."""
  from lmjax.data import builders, fetch  # noqa: PLC0415  (tfds import is slow)

  identity, sources = builders.load_corpus(cfg.data)
  cache = fetch.cache_root(cfg.data.cache_dir)
  vocab = cfg.model.vocab_size
  tok = tk.for_run(
      Path(workdir),
      cache / "tokenizers" / f"{identity}-v{vocab}-s{cfg.train.seed}-n{cfg.data.tokenizer_sentences}.model",
      lambda: pretrain.corpus_sentences(sources["train"]), vocab, seed=cfg.train.seed,
      max_sentences=cfg.data.tokenizer_sentences)
  fp = pretrain.tokenizer_fingerprint(tok)
  out = []
  for split, seed_offset in (("train", 0), ("validation", 1)):
    corpus = pretrain.TokenizedCorpus.build(sources[split], tok, cache / "tokens" / f"{identity}-{split}-{fp}.npz")
    try:
      out.append(PackedExamples.from_documents(corpus_documents(corpus), tok.eos_id, cfg.data.max_seq_len,
                                               cfg.train.seed + seed_offset))
    except LmjaxError as e:
      raise LmjaxError(f"{split} split: {e}") from None
  return out[0], out[1], tok
