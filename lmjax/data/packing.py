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
checkpoint fixes every later batch (lmjax.data.stream).
"""

from __future__ import annotations

import numpy as np

from lmjax.data.stream import EpochShuffle
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


class PackedExamples:
  """Random access to packed causal-LM rows by global stream index.

  `stream` is the documents end to end with their end ids
  (`lmjax.data.corpus.PackedTokens`, read from a memory-mapped cache).
  """

  def __init__(self, stream, seq_len: int, seed: int, shuffle: bool = True):
    self.stream = stream
    self.seq_len = seq_len
    self.seed = seed
    self.shuffle = shuffle
    self.num_rows = (len(stream) - 1) // seq_len
    if self.num_rows < 1:
      raise LmjaxError(f"The corpus has {len(stream)} tokens, fewer than one row of data.max_seq_len={seq_len} "
                       "(+1); add text or lower data.max_seq_len.")
    self.order = EpochShuffle(self.num_rows, seed, salt=2, shuffle=shuffle)

  @classmethod
  def from_documents(cls, docs: list[np.ndarray], eos_id: int, seq_len: int, seed: int, shuffle: bool = True):
    from lmjax.data.corpus import TokenizedCorpus  # noqa: PLC0415
    return cls(TokenizedCorpus.from_documents(docs).packed(eos_id), seq_len, seed, shuffle)

  def __len__(self) -> int:
    return self.num_rows

  def __getitem__(self, k: int) -> dict[str, np.ndarray]:
    t = self.seq_len
    toks, docs = self.stream.window(self.order(k)[1] * t, t + 1)
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
