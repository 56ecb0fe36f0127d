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
  """The training stream: example k is row perm(seed, k // N)[k % N].

  With `buckets` > 1 a batch is cut to the smallest of `buckets` equally
  spaced lengths (up to the split's row length) that holds its longest row,
  judged over the whole global batch so every process cuts alike
  (`shape_batch`, called by the batch iterator). With `group` > 0 (and the
  global `batch_size`), each run of `group` batches of an epoch's order is
  sorted by length and its batches shuffled (Hugging Face's group_by_length),
  so a batch holds rows of similar length and the buckets cut more. Either
  way example k is a pure function of (seed, epoch, k): the stream position
  still fixes every later batch."""

  def __init__(self, split: EncodedSplit, seed: int, buckets: int = 1, group: int = 0, batch_size: int = 0):
    self.split = split
    self.seed = seed
    self.order = EpochShuffle(len(split), seed, salt=7)
    self.bucket_lengths = bucket_lengths(split.input_ids.shape[1], buckets)
    self.lengths = split.input_mask.sum(axis=1)
    self.group, self.batch_size = (group, batch_size) if group and batch_size else (0, 0)
    self._grouped: dict[int, np.ndarray] = {}

  def __len__(self) -> int:
    return len(self.split)

  def row(self, k: int) -> int:
    epoch, j = divmod(int(k), len(self.split))
    if not self.group:
      return int(self.order.permutation(epoch)[j])
    if epoch not in self._grouped:
      if len(self._grouped) > 4:
        self._grouped.clear()
      self._grouped[epoch] = self._group_epoch(epoch)
    return int(self._grouped[epoch][j])

  def _group_epoch(self, epoch: int) -> np.ndarray:
    perm = self.order.permutation(epoch)
    n, b = len(perm), self.batch_size
    rng = np.random.default_rng([self.seed, epoch, 8])
    # Batches of the global stream start where (epoch * n + j) % b == 0: groups align with them.
    first = (-epoch * n) % b
    edges = [0, *range(first, n, self.group * b), n]
    out = perm.copy()
    for lo, hi in zip(edges[:-1], edges[1:]):
      if hi <= lo:
        continue
      chunk = perm[lo:hi][np.argsort(self.lengths[perm[lo:hi]], kind="stable")]
      blocks = [chunk[i:i + b] for i in range(0, len(chunk), b)]
      out[lo:hi] = np.concatenate([blocks[i] for i in rng.permutation(len(blocks))])
    return out

  def __getitem__(self, k: int) -> dict[str, np.ndarray]:
    return self.split.rows(self.row(k))

  def shape_batch(self, batch: dict[str, np.ndarray], global_indices: range) -> dict[str, np.ndarray]:
    if len(self.bucket_lengths) == 1:
      return batch
    return cut_to_bucket(batch, self.bucket_lengths, max(int(self.lengths[self.row(k)]) for k in global_indices))


def bucket_lengths(max_len: int, buckets: int) -> list[int]:
  """`buckets` equally spaced lengths up to max_len (data.length_buckets)."""
  return sorted({-(-max_len * (i + 1) // buckets) for i in range(buckets)})


def cut_to_bucket(batch: dict[str, np.ndarray], widths: list[int], longest: int) -> dict[str, np.ndarray]:
  """The batch's [rows, T] fields cut to the smallest of `widths` that holds `longest` tokens."""
  cut = next(w for w in widths if w >= longest)
  return {k: v[:, :cut] if v.ndim == 2 else v for k, v in batch.items()}


def eval_order(split: EncodedSplit, buckets: int) -> np.ndarray:
  """Rows in the order evaluation walks them: as stored, or (buckets > 1)
  shortest first, so each batch is cut to a short bucket."""
  if buckets <= 1:
    return np.arange(len(split))
  return np.argsort(split.input_mask.sum(axis=1), kind="stable")


def eval_batches(split: EncodedSplit, global_batch: int, process_index: int = 0, process_count: int = 1,
                 buckets: int = 1):
  """This process's rows of each global batch, in `eval_order`; the last one
  padded with weight-0 rows. With buckets > 1 each batch is cut to the
  smallest bucket length that holds the longest row of its global batch."""
  local = global_batch // process_count
  n = len(split)
  order = eval_order(split, buckets)
  widths = bucket_lengths(split.input_ids.shape[1], buckets)
  lengths = split.input_mask.sum(axis=1)
  for start in range(0, n, global_batch):
    idx = np.arange(start + process_index * local, start + (process_index + 1) * local)
    valid = idx < n
    batch = split.rows(order[np.where(valid, idx, 0)])
    batch["weight"] = valid.astype(np.float32)
    if len(widths) > 1:
      batch = cut_to_bucket(batch, widths, int(lengths[order[start:start + global_batch]].max()))
    yield batch
