"""The resumable example stream every task trains on.

A task's training examples are random access: `examples[k]` is example k of
the global stream, made deterministically from (seed, epoch, index), so the
stream position alone (saved in checkpoints) fixes every later batch.
`EpochShuffle` gives each epoch its own permutation; `BatchIterator` cuts
the stream into global batches and hands each process its own rows;
`ShardedExamples` makes one such stream of several parts of a corpus so that
each process reads only the parts its rows come from.
"""

from __future__ import annotations

import queue
import threading

import numpy as np

from lmjax.errors import LmjaxError


class EpochShuffle:
  """Row order per epoch: example k of the stream is row perm(k // n)[k % n].

  The permutation of epoch e is `default_rng([seed, e, salt])`; each task keeps
  its own salt (BERT examples 0, packed causal-LM rows 2, classification 7) so
  that recipes keep the batches they have always had.
  """

  def __init__(self, n: int, seed: int, salt: int, shuffle: bool = True):
    self.n, self.seed, self.salt, self.shuffle = n, seed, salt, shuffle
    self._perms: dict[int, np.ndarray] = {}

  def permutation(self, epoch: int) -> np.ndarray:
    if epoch not in self._perms:
      if len(self._perms) > 4:
        self._perms.clear()
      self._perms[epoch] = np.random.default_rng([self.seed, epoch, self.salt]).permutation(self.n)
    return self._perms[epoch]

  def __call__(self, k: int) -> tuple[int, int]:
    """(epoch, row) of stream index k."""
    epoch, j = divmod(int(k), self.n)
    return epoch, (int(self.permutation(epoch)[j]) if self.shuffle else j)


def part_seed(seed: int, part: int) -> int:
  """The seed of part `part` of a sharded stream: `seed` itself for part 0 (so a
  one-part stream is the unsharded one), a derived one for the others."""
  return seed if part == 0 else int(np.random.SeedSequence([seed, part]).generate_state(1)[0])


class ShardedExamples:
  """One global stream over `count` parts, each a stream of its own.

  Slot j of every global batch of `global_batch` rows belongs to part
  j * count // global_batch, and that part's slots of batch b are its
  examples b * size + 0, 1, ..., size - 1 (size = its slots per batch). The
  processes of a multi-host run each feed a contiguous block of slots
  (`BatchIterator`), so with `count` a multiple of the process count each
  reads only its own count / processes parts (`local_parts`), and the stream
  is the same for any process count that divides `count`: a checkpoint
  resumes on another number of hosts with the same batches. With one part
  the stream is that part's own.
  """

  def __init__(self, make_part, count: int, global_batch: int, *, process_index: int = 0, process_count: int = 1):
    if count > global_batch:
      raise LmjaxError(f"data.shards={count} is more than train.batch_size={global_batch}: every batch takes "
                       "at least one row from each part. Lower data.shards.")
    self.make_part, self.count, self.global_batch = make_part, count, global_batch
    self._parts: dict = {}
    local = global_batch // process_count
    lo, hi = process_index * local, (process_index + 1) * local
    self.local_parts = range(lo * count // global_batch, (hi - 1) * count // global_batch + 1)

  def part(self, g: int):
    if g not in self._parts:
      self._parts[g] = self.make_part(g)
    return self._parts[g]

  def _slots(self, g: int) -> tuple[int, int]:
    """(first slot, slots per batch) of part g."""
    b, n = self.global_batch, self.count
    first = -(-g * b // n)
    return first, -(-(g + 1) * b // n) - first

  def locate(self, k: int) -> tuple[int, int]:
    """(part, index in that part's stream) of global stream index k."""
    batch, slot = divmod(int(k), self.global_batch)
    g = slot * self.count // self.global_batch
    first, size = self._slots(g)
    return g, batch * size + slot - first

  def __getitem__(self, k: int) -> dict[str, np.ndarray]:
    g, m = self.locate(k)
    return self.part(g)[m]

  def __len__(self) -> int:
    """Examples of the stream before one of this process's parts starts its second epoch."""
    if self.count == 1:
      return len(self.part(0))
    return min(len(self.part(g)) // self._slots(g)[1] for g in self.local_parts) * self.global_batch


def stack(examples: list[dict]) -> dict[str, np.ndarray]:
  return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


class BatchIterator:
  """Batches of one process's share of the global example stream.

  State is the global stream position (examples consumed), so restoring it
  on any number of processes continues with exactly the next global batch.
  """

  def __init__(self, examples, global_batch: int, *, process_index: int = 0, process_count: int = 1,
               position: int = 0, prefetch: int = 2):
    if global_batch % process_count:
      raise ValueError(f"global batch {global_batch} not divisible by {process_count} processes")
    self.examples = examples
    self.global_batch = global_batch
    self.local = global_batch // process_count
    self.offset = process_index * self.local
    self.position = position
    self.prefetch = prefetch
    self._queue: queue.Queue | None = None
    self._thread: threading.Thread | None = None
    self._stop = threading.Event()

  def batch_at(self, position: int) -> dict[str, np.ndarray]:
    start = position + self.offset
    batch = stack([self.examples[k] for k in range(start, start + self.local)])
    shape = getattr(self.examples, "shape_batch", None)  # e.g. cut padding to a length bucket
    return batch if shape is None else shape(batch, range(position, position + self.global_batch))

  def state(self) -> dict:
    return {"position": int(self.position), "global_batch": self.global_batch}

  def _worker(self, position: int):
    try:
      while not self._stop.is_set():
        item = (position, self.batch_at(position))
        while not self._stop.is_set():
          try:
            self._queue.put(item, timeout=0.1)
            break
          except queue.Full:
            continue
        position += self.global_batch
    except BaseException as e:  # noqa: BLE001  (re-raised in the consumer)
      self._queue.put((None, e))

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self.prefetch <= 0:
      batch = self.batch_at(self.position)
    else:
      if self._thread is None:
        self._queue = queue.Queue(self.prefetch)
        self._stop.clear()
        self._thread = threading.Thread(target=self._worker, args=(self.position,), daemon=True)
        self._thread.start()
      got, batch = self._queue.get()
      if got is None:
        raise batch
      assert got == self.position, (got, self.position)
    self.position += self.global_batch
    return batch

  def close(self):
    if self._thread is not None:
      self._stop.set()
      self._thread.join(timeout=5)
      self._thread = None
