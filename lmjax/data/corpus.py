"""Unlabelled text for pretraining: corpus -> the run's tokenizer -> token arrays on disk.

`prepare(cfg, workdir)` is the one setup every pretraining task uses: load the
corpus (`data.dataset`, a tfds builder or data source), train or reuse the
run's sentencepiece model (cached by corpus, vocabulary size, seed and sample
size), and describe each split as `CorpusParts`: its documents in
`data.shards` contiguous parts, each tokenized once into its own cache
directory and read back memory-mapped, so no split is ever held in memory and
each process of a multi-host run tokenizes and reads only the parts its rows
come from (`lmjax.data.stream.ShardedExamples`).

A part's cache directory (`tokens/CORPUS-SPLIT-TOKENIZER-partGofS/`):

  tokens.bin      every sentence's tokens end to end (uint16, or int32 for
                  vocabularies over 65,536 pieces)
  sent_start.bin  int64 [sentences + 1]: where each sentence starts in tokens
  doc_start.bin   int64 [documents + 1]: each document's first sentence
  doc_tokens.bin  int64 [documents + 1]: each document's first token
  meta.json       counts, dtype, the document range of the split it holds
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import json
import mmap
import os
import re
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np

from lmjax import host
from lmjax.data import tokenizer as tk
from lmjax.errors import LmjaxError
from lmjax.metrics import log

CACHE_VERSION = 1
# Documents read and tokenized together while a part is written: this many,
# or fewer when they already hold _BLOCK_CHARS characters.
_BLOCK_DOCS = 2048
_BLOCK_CHARS = 4 << 20


@dataclasses.dataclass
class TokenizedCorpus:
  """Sentences and documents of (a part of) a split as token arrays.

  tokens[sent_start[i]:sent_start[i+1]] is sentence i; sentences
  doc_start[d]:doc_start[d+1] belong to document d. The arrays are plain
  arrays or read-only memory maps of a part's cache (`open`).
  """
  tokens: np.ndarray
  sent_start: np.ndarray
  doc_start: np.ndarray
  doc_tokens_: np.ndarray | None = None  # doc_start's token offsets, stored by `write`
  directory: Path | None = None  # the cache directory of a part read back with `open`

  @property
  def num_docs(self) -> int:
    return len(self.doc_start) - 1

  @property
  def doc_tokens(self) -> np.ndarray:
    """int64 [documents + 1]: the token offset where each document starts."""
    if self.doc_tokens_ is None:
      self.doc_tokens_ = np.asarray(self.sent_start)[np.asarray(self.doc_start)]
    return self.doc_tokens_

  def sentence(self, i: int) -> np.ndarray:
    return self.tokens[self.sent_start[i]:self.sent_start[i + 1]]

  def documents(self) -> list[np.ndarray]:
    """Each document's tokens, sentences concatenated (small corpora: it copies them all)."""
    return [self.tokens[self.sent_start[self.doc_start[d]]:self.sent_start[self.doc_start[d + 1]]]
            for d in range(self.num_docs)]

  def packed(self, eos_id: int) -> PackedTokens:
    return PackedTokens(self, eos_id)

  @classmethod
  def from_documents(cls, docs: list[np.ndarray]) -> TokenizedCorpus:
    """A corpus of token arrays in memory, one sentence per document."""
    lengths = np.asarray([len(d) for d in docs], np.int64)
    sent_start = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    tokens = np.concatenate([np.asarray(d, np.int32) for d in docs]) if docs else np.zeros(0, np.int32)
    return cls(tokens, sent_start, np.arange(len(docs) + 1, dtype=np.int64))

  @classmethod
  def write(cls, documents, num_docs: int, tok: tk.Tokenizer, directory: Path, *, label: str = "",
            meta: dict | None = None) -> TokenizedCorpus:
    """Tokenizes `documents` (an iterable of lists of sentences, `num_docs` of
    them) block by block into `directory` and opens it. Only one block of
    text is in memory at a time; the directory appears whole or not at all."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.with_name(f"{directory.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    dtype = np.uint16 if tok.vocab_size <= 1 << 16 else np.int32
    threads = max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    names = ("tokens", "sent_start", "doc_start", "doc_tokens")
    files = {n: open(tmp / f"{n}.bin", "wb") for n in names}
    n_tokens = n_sents = n_docs = 0
    started = last_log = time.monotonic()
    try:
      files["sent_start"].write(np.zeros(1, np.int64).tobytes())
      files["doc_start"].write(np.zeros(1, np.int64).tobytes())
      files["doc_tokens"].write(np.zeros(1, np.int64).tobytes())
      block: list[list[str]] = []
      chars = 0

      def flush():
        nonlocal n_tokens, n_sents, n_docs, chars
        sentences = [s for doc in block for s in doc]
        ids = tok.encode(sentences, threads=threads) if sentences else []
        lengths = np.fromiter((len(x) for x in ids), np.int64, len(ids))
        flat = np.fromiter((t for x in ids for t in x), dtype, int(lengths.sum()))
        files["tokens"].write(flat.tobytes())
        files["sent_start"].write((n_tokens + np.cumsum(lengths)).tobytes())
        per_doc = np.fromiter((len(doc) for doc in block), np.int64, len(block))
        doc_sent_end = n_sents + np.cumsum(per_doc)
        files["doc_start"].write(doc_sent_end.tobytes())
        sent_end = np.concatenate([[0], np.cumsum(lengths)])
        files["doc_tokens"].write((n_tokens + sent_end[doc_sent_end - n_sents]).tobytes())
        n_tokens += int(lengths.sum())
        n_sents += len(ids)
        n_docs += len(block)
        block.clear()
        chars = 0

      for doc in documents:
        block.append(doc)
        chars += sum(len(s) for s in doc)
        if len(block) >= _BLOCK_DOCS or chars >= _BLOCK_CHARS:
          flush()
          now = time.monotonic()
          if now - last_log > 30:
            last_log = now
            rate = n_tokens / (now - started)
            left = (num_docs - n_docs) / max(n_docs, 1) * (now - started)
            log(f"tokenizing {label}: {n_docs:,}/{num_docs:,} documents, {n_tokens:,} tokens "
                f"({rate:,.0f} tokens/s, ~{left / 60:.0f} min left)")
      flush()
    finally:
      for f in files.values():
        f.close()
    info = {"version": CACHE_VERSION, "dtype": np.dtype(dtype).name, "tokens": n_tokens, "sentences": n_sents,
            "documents": n_docs, "tokenizer_pieces": tok.vocab_size} | (meta or {})
    (tmp / "meta.json").write_text(json.dumps(info, indent=1))
    try:
      tmp.rename(directory)
    except OSError:  # another process wrote the same part first: keep theirs
      if not (directory / "meta.json").exists():
        raise
      shutil.rmtree(tmp, ignore_errors=True)
    return cls.open(directory)

  @classmethod
  def open(cls, directory: Path) -> TokenizedCorpus:
    """A part written by `write`, memory-mapped read-only."""
    directory = Path(directory)
    try:
      info = json.loads((directory / "meta.json").read_text())
    except (OSError, ValueError) as e:
      raise LmjaxError(f"The token cache {directory} cannot be read ({e}); delete the directory and run again "
                       "to tokenize it anew.") from None

    def array(name: str, dtype, count: int) -> np.ndarray:
      path = directory / f"{name}.bin"
      if path.stat().st_size != count * np.dtype(dtype).itemsize:
        raise LmjaxError(f"The token cache file {path} is {path.stat().st_size} bytes, not the "
                         f"{count * np.dtype(dtype).itemsize} its meta.json says; delete {directory} and run again.")
      if not count:
        return np.zeros(0, dtype)
      mapped = np.memmap(path, dtype, "r", shape=(count,))
      # Examples read small stretches at random: no readahead around each one (the kernel's
      # default would map ~128 KB per access into this process).
      advise = getattr(getattr(mapped, "_mmap", None), "madvise", None)
      if advise is not None and hasattr(mmap, "MADV_RANDOM"):
        advise(mmap.MADV_RANDOM)
      return mapped

    tokens = array("tokens", info["dtype"], info["tokens"])
    return cls(tokens, array("sent_start", np.int64, info["sentences"] + 1),
               array("doc_start", np.int64, info["documents"] + 1),
               array("doc_tokens", np.int64, info["documents"] + 1), directory)


class PackedTokens:
  """A corpus's documents end to end, each closed by `eos_id`, without
  building that stream: position x of document d's stretch is its token
  x - (doc_tokens[d] + d), or the end-of-document id after its last token."""

  def __init__(self, corpus: TokenizedCorpus, eos_id: int):
    self.corpus, self.eos_id = corpus, eos_id
    self.doc_tokens = corpus.doc_tokens
    self.length = int(self.doc_tokens[-1]) + corpus.num_docs

  def __len__(self) -> int:
    return self.length

  def window(self, start: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(tokens int32 [n], document index int64 [n]) of stream[start:start+n]."""
    if n <= 0:
      return np.zeros(0, np.int32), np.zeros(0, np.int64)
    starts = self.doc_tokens
    d0 = bisect.bisect_right(range(self.corpus.num_docs), start, key=lambda d: int(starts[d]) + d) - 1
    # Every document takes at least one position (its end id), so at most n start in the window.
    hi = min(d0 + n + 2, self.corpus.num_docs + 1)
    first = np.asarray(starts[d0:hi], np.int64) + np.arange(d0, hi)  # stream position of each document
    pos = np.arange(start, start + n, dtype=np.int64)
    doc = d0 + np.searchsorted(first, pos, side="right") - 1
    offset = pos - first[doc - d0]
    length = np.asarray(starts[d0 + 1:hi], np.int64) - np.asarray(starts[d0:hi - 1], np.int64)
    is_end = offset == length[doc - d0]
    toks = np.full(n, self.eos_id, np.int32)
    inner = ~is_end
    if inner.any():
      at = np.asarray(starts[d0:hi], np.int64)[doc[inner] - d0] + offset[inner]
      toks[inner] = np.asarray(self.corpus.tokens[at.min():at.max() + 1])[at - at.min()]
    return toks, doc


class CorpusParts:
  """A split's documents in `count` contiguous parts (part g holds documents
  g*D//count up to (g+1)*D//count), each tokenized into its own cache
  directory the first time it is needed and memory-mapped after that."""

  def __init__(self, source, tok: tk.Tokenizer, prefix: Path, count: int, label: str):
    self.source, self.tok, self.prefix, self.count, self.label = source, tok, Path(prefix), count, label
    self.num_docs = len(source)
    if count < 1:
      raise LmjaxError(f"data.shards={count}: use a positive number of parts (0 = one per process).")
    if count > self.num_docs:
      raise LmjaxError(f"{label} has {self.num_docs} documents, fewer than data.shards={count} parts; "
                       "lower data.shards.")
    self._parts: dict[int, TokenizedCorpus] = {}

  def __len__(self) -> int:
    return self.count

  def doc_range(self, g: int) -> tuple[int, int]:
    return g * self.num_docs // self.count, (g + 1) * self.num_docs // self.count

  def directory(self, g: int) -> Path:
    return self.prefix.with_name(f"{self.prefix.name}-part{g}of{self.count}")

  def part(self, g: int) -> TokenizedCorpus:
    if g not in self._parts:
      path = self.directory(g)
      if not (path / "meta.json").exists():
        lo, hi = self.doc_range(g)
        where = self.label if self.count == 1 else f"{self.label}, part {g + 1} of {self.count}"
        log(f"tokenizing {where}: {hi - lo:,} documents into {path}")
        TokenizedCorpus.write(read_documents(self.source, lo, hi), hi - lo, self.tok, path, label=where,
                              meta={"documents_of_split": [lo, hi], "parts": self.count})
      self._parts[g] = TokenizedCorpus.open(path)
    return self._parts[g]


def read_documents(source, lo: int, hi: int, block: int = 256):
  """Documents lo..hi of a data source as lists of sentences (str), read a block at a time."""
  getitems = getattr(source, "__getitems__", None)
  for start in range(lo, hi, block):
    keys = list(range(start, min(start + block, hi)))
    records = getitems(keys) if getitems is not None else [source[k] for k in keys]
    for record in records:
      yield [s.decode("utf-8") if isinstance(s, bytes) else s for s in record["sentences"]]


def sample_sentences(source, limit: int) -> list[str]:
  """Sentences of the first documents of a split, enough for the tokenizer's
  sample: all of them when there are fewer than 4 x `limit` (which then
  draws `limit` at random), so a large corpus is never read whole for it."""
  out: list[str] = []
  for doc in read_documents(source, 0, len(source)):
    out.extend(doc)
    if limit and len(out) >= 4 * limit:
      break
  return out


def tokenizer_fingerprint(tok: tk.Tokenizer) -> str:
  return hashlib.sha256(tok.path.read_bytes()).hexdigest()[:16]


def tokenizer_cache_name(identity: str, cfg, vocab_size: int | None = None) -> str:
  """File name of a cached sentencepiece model trained on data set `identity` for this run."""
  kind = "" if cfg.data.tokenizer_model == "unigram" else f"-{cfg.data.tokenizer_model}"
  return (f"{identity}-v{vocab_size or cfg.model.vocab_size}-s{cfg.train.seed}-n{cfg.data.tokenizer_sentences}"
          f"{kind}.model")


def parts_count(cfg, process_count: int = 1) -> int:
  """data.shards, or one part per process when it is 0."""
  return cfg.data.shards or process_count


def prepare(cfg, workdir: Path, splits=("train", "validation"), vocab_size: int | None = None, *,
            process_count: int = 1) -> tuple[tk.Tokenizer, dict[str, CorpusParts]]:
  """The run's tokenizer and each split as `CorpusParts` (see the module docstring;
  nothing is tokenized until a part is asked for). `vocab_size`: the tokenizer's
  pieces (default model.vocab_size; span corruption keeps the last ids for sentinels)."""
  from lmjax.data import builders, fetch  # noqa: PLC0415  (tfds import is slow)

  identity, sources = builders.load_corpus(cfg.data)
  cache = fetch.cache_root(cfg.data.cache_dir)
  vocab_size = vocab_size or cfg.model.vocab_size
  tok = tk.for_run(Path(workdir), cache / "tokenizers" / tokenizer_cache_name(identity, cfg, vocab_size),
                   lambda: sample_sentences(sources["train"], cfg.data.tokenizer_sentences), vocab_size,
                   seed=cfg.train.seed, max_sentences=cfg.data.tokenizer_sentences,
                   model_type=cfg.data.tokenizer_model)
  host.release_free_memory()  # what training a tokenizer freed (the sample, sentencepiece's tables)
  fp = tokenizer_fingerprint(tok)
  count = parts_count(cfg, process_count)
  out = {}
  for split in splits:
    spec = split_spec(cfg.data, split)
    prefix = cache / "tokens" / f"{identity}-{_safe(spec)}-{fp}"
    # The training stream's part count is part of its order (saved, checked on resume); a held-out
    # split smaller than that just has fewer parts.
    n = count if split == "train" or count < 1 else min(count, len(sources[split]))
    out[split] = CorpusParts(sources[split], tok, prefix, n, f"the {spec} split of {identity}")
  return tok, out


def split_spec(data_cfg, split: str) -> str:
  """The tfds split a corpus split is read from ("train" -> data.corpus_train_split, ...)."""
  return {"train": data_cfg.corpus_train_split, "validation": data_cfg.corpus_eval_split}.get(split, split)


def _safe(spec: str) -> str:
  return re.sub(r"[^A-Za-z0-9_.-]+", "_", spec).strip("_")


def sharded(cfg, parts: CorpusParts, make: Callable[[TokenizedCorpus, int], object], seed: int, *,
            process_index: int = 0, process_count: int = 1):
  """The examples `make(part, part_seed)` builds from each part, as one global
  stream whose every batch takes its slots from all parts
  (`lmjax.data.stream.ShardedExamples`). The parts this process reads are
  tokenized now, so errors and the wait come before the first step. With
  one part that part's examples are the stream."""
  from lmjax.data.stream import ShardedExamples, part_seed  # noqa: PLC0415
  stream = ShardedExamples(lambda g: make(parts.part(g), part_seed(seed, g)), len(parts), cfg.train.batch_size,
                           process_index=process_index, process_count=process_count)
  for g in stream.local_parts:
    try:
      stream.part(g)
    except LmjaxError as e:
      where = parts.label if len(parts) == 1 else f"{parts.label}, part {g + 1} of {len(parts)}"
      raise LmjaxError(f"{where}: {e}") from None
  return stream.part(0) if len(parts) == 1 else stream


def streams(cfg, corpora: dict[str, CorpusParts], make: Callable[[TokenizedCorpus, int], object], *,
            process_index: int = 0, process_count: int = 1) -> tuple[object, object, dict]:
  """(training stream, held-out stream, TaskData fields) of a pretraining task from
  `prepare`'s parts: `make(part, seed)` makes one part's examples (training from
  train.seed, held-out from train.seed + 1). The fields record the part count with
  the checkpoint's stream position; a checkpoint from before parts had one."""
  where = {"process_index": process_index, "process_count": process_count}
  train = sharded(cfg, corpora["train"], make, cfg.train.seed, **where)
  held_out = sharded(cfg, corpora["validation"], make, cfg.train.seed + 1, **where)
  return train, held_out, {"stream": {"data.shards": len(corpora["train"])}, "stream_before": {"data.shards": 1}}


def processes() -> dict:
  """This process's place among the run's processes, for `prepare` and `streams`."""
  import jax  # noqa: PLC0415
  return {"process_index": jax.process_index(), "process_count": jax.process_count()}
