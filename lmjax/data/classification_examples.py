"""Labelled text -> fixed-shape classification batches.

Each example becomes `[CLS] text [SEP]` (or `[CLS] text [SEP] pair [SEP]`
with segment ids 0/1), padded to `data.max_seq_len`. A longer input is cut
from the end of the longer segment first (Hugging Face's "longest_first");
how many were cut is reported, or it is an error with data.truncation=error.

Training order is a fresh permutation of the split each epoch, fixed by
(seed, epoch), so the stream position saved in checkpoints fixes every later
batch, as for pretraining. Evaluation walks a split in order; the last batch
is padded with rows of weight 0 that count nowhere.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from lmjax.data.stream import EpochShuffle
from lmjax.errors import LmjaxError
from lmjax.metrics import log


@dataclasses.dataclass
class EncodedSplit:
  """A whole split as arrays [N, T] (ids, segments, mask) and [N] (labels)."""
  input_ids: np.ndarray
  type_ids: np.ndarray
  input_mask: np.ndarray
  label: np.ndarray
  texts: list[str]
  truncated: int = 0

  def __len__(self) -> int:
    return len(self.label)

  def rows(self, idx) -> dict[str, np.ndarray]:
    return {"input_ids": self.input_ids[idx], "type_ids": self.type_ids[idx], "input_mask": self.input_mask[idx],
            "label": self.label[idx], "weight": np.ones(np.shape(idx), np.float32)}


def encode(tok, texts: list[str], pairs: list[str] | None, labels, max_seq_len: int) -> EncodedSplit:
  """Tokenizes, adds [CLS]/[SEP], truncates and pads; labels may be None (prediction)."""
  n = len(texts)
  a_ids = tok.encode(texts)
  b_ids = tok.encode(pairs) if pairs is not None else [None] * n
  ids = np.full((n, max_seq_len), tok.pad_id, np.int32)
  type_ids = np.zeros((n, max_seq_len), np.int32)
  mask = np.zeros((n, max_seq_len), np.int32)
  truncated = 0
  for i, (a, b) in enumerate(zip(a_ids, b_ids)):
    a = list(a)
    b = None if b is None else list(b)
    budget = max_seq_len - (2 if b is None else 3)
    cut = False
    while len(a) + (len(b) if b is not None else 0) > budget:
      cut = True
      longer = a if b is None or len(a) >= len(b) else b
      longer.pop()
    truncated += cut
    row = [tok.cls_id] + a + [tok.sep_id]
    seg = [0] * len(row)
    if b is not None:
      row += b + [tok.sep_id]
      seg += [1] * (len(b) + 1)
    ids[i, :len(row)] = row
    type_ids[i, :len(seg)] = seg
    mask[i, :len(row)] = 1
  label = np.zeros(n, np.int32) if labels is None else np.asarray(labels, np.int32)
  return EncodedSplit(ids, type_ids, mask, label, list(texts), truncated)


def read_split(labelled, split: str) -> tuple[list[str], list[str] | None, np.ndarray]:
  """(texts, pairs or None, label ids) of one split; rows without text are dropped."""
  if split not in labelled.sources:
    raise LmjaxError(f"Data set {labelled.identity} has no {split!r} split (it has "
                     f"{', '.join(labelled.sources)}); set data.eval_split / data.test_split.")
  source = labelled.sources[split]
  texts, pairs, labels = [], [], []
  for i in range(len(source)):
    row = source[i]
    t = _str(row[labelled.text_column]).strip()
    p = _str(row[labelled.pair_column]).strip() if labelled.pair_column else ""
    if not t:
      continue
    texts.append(t)
    pairs.append(p)
    labels.append(int(row[labelled.label_column]))
  labels = np.asarray(labels, np.int32)
  if not texts:
    raise LmjaxError(f"The {split!r} split of {labelled.identity} is empty (after dropping rows without text).")
  if (labels < 0).any():
    raise LmjaxError(f"The {split!r} split of {labelled.identity} has unlabelled rows (label -1, as in GLUE test "
                     f"sets); evaluate on a labelled split instead, e.g. --set data.test_split=validation.")
  return texts, (pairs if labelled.pair_column else None), labels


def _str(v) -> str:
  return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def prepare(labelled, tok, data_cfg, splits: tuple[str, ...]) -> dict[str, EncodedSplit]:
  """Encoded splits; reports (or refuses) truncation."""
  out = {}
  for split in splits:
    texts, pairs, labels = read_split(labelled, split)
    enc = encode(tok, texts, pairs, labels, data_cfg.max_seq_len)
    if enc.truncated:
      msg = (f"{enc.truncated} of {len(enc)} examples in the {split!r} split are longer than "
             f"data.max_seq_len={data_cfg.max_seq_len} tokens")
      if data_cfg.truncation == "error":
        raise LmjaxError(f"{msg}. Raise data.max_seq_len (up to the model's positions) or set "
                         "data.truncation=warn to cut them.")
      log(f"warning: {msg}; they were truncated (data.truncation=warn).")
    out[split] = enc
  return out


class ClassificationExamples:
  """The training stream: example k is row perm(seed, k // N)[k % N]."""

  def __init__(self, split: EncodedSplit, seed: int):
    self.split = split
    self.seed = seed
    self.order = EpochShuffle(len(split), seed, salt=7)

  def __len__(self) -> int:
    return len(self.split)

  def __getitem__(self, k: int) -> dict[str, np.ndarray]:
    return self.split.rows(self.order(k)[1])


def eval_batches(split: EncodedSplit, global_batch: int, process_index: int = 0, process_count: int = 1):
  """This process's rows of each global batch, in order; the last one padded with weight-0 rows."""
  local = global_batch // process_count
  n = len(split)
  for start in range(0, n, global_batch):
    idx = np.arange(start + process_index * local, start + (process_index + 1) * local)
    valid = idx < n
    batch = split.rows(np.where(valid, idx, 0))
    batch["weight"] = valid.astype(np.float32)
    yield batch
