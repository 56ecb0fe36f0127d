"""Unlabelled text for pretraining: corpus -> the run's tokenizer -> token arrays.

`prepare(cfg, workdir)` is the one setup every pretraining task uses: load the
corpus (`data.dataset`, a tfds builder), train or reuse the run's
sentencepiece model (cached by corpus, vocabulary size, seed and sample
size), and tokenize each split once into a `TokenizedCorpus` (cached by
corpus, split and tokenizer fingerprint).
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np

from lmjax.data import tokenizer as tk


@dataclasses.dataclass
class TokenizedCorpus:
  """All sentences of a split as one token array.

  tokens[sent_start[i]:sent_start[i+1]] is sentence i; sentences
  doc_start[d]:doc_start[d+1] belong to document d.
  """
  tokens: np.ndarray
  sent_start: np.ndarray
  doc_start: np.ndarray

  @property
  def num_docs(self) -> int:
    return len(self.doc_start) - 1

  def sentence(self, i: int) -> np.ndarray:
    return self.tokens[self.sent_start[i]:self.sent_start[i + 1]]

  def documents(self) -> list[np.ndarray]:
    """Each document's tokens, sentences concatenated."""
    return [self.tokens[self.sent_start[self.doc_start[d]]:self.sent_start[self.doc_start[d + 1]]]
            for d in range(self.num_docs)]

  @classmethod
  def build(cls, source, tok: tk.Tokenizer, cache: Path | None = None) -> TokenizedCorpus:
    if cache is not None and cache.exists():
      with np.load(cache) as z:
        return cls(z["tokens"], z["sent_start"], z["doc_start"])
    sentences, doc_start = [], [0]
    for i in range(len(source)):
      doc = source[i]["sentences"]
      sentences.extend(s.decode("utf-8") for s in doc)
      doc_start.append(len(sentences))
    ids = tok.encode(sentences)
    lengths = np.fromiter((len(x) for x in ids), np.int64, len(ids))
    sent_start = np.concatenate([[0], np.cumsum(lengths)])
    tokens = np.fromiter((t for x in ids for t in x), np.int32, int(sent_start[-1]))
    corpus = cls(tokens, sent_start, np.asarray(doc_start, np.int64))
    if cache is not None:
      cache.parent.mkdir(parents=True, exist_ok=True)
      tmp = cache.with_suffix(".tmp.npz")
      np.savez(tmp, tokens=tokens, sent_start=sent_start, doc_start=corpus.doc_start)
      tmp.replace(cache)
    return corpus


def corpus_sentences(source) -> list[str]:
  return [s.decode("utf-8") for i in range(len(source)) for s in source[i]["sentences"]]


def tokenizer_fingerprint(tok: tk.Tokenizer) -> str:
  return hashlib.sha256(tok.path.read_bytes()).hexdigest()[:16]


def tokenizer_cache_name(identity: str, cfg, vocab_size: int | None = None) -> str:
  """File name of a cached sentencepiece model trained on data set `identity` for this run."""
  kind = "" if cfg.data.tokenizer_model == "unigram" else f"-{cfg.data.tokenizer_model}"
  return (f"{identity}-v{vocab_size or cfg.model.vocab_size}-s{cfg.train.seed}-n{cfg.data.tokenizer_sentences}"
          f"{kind}.model")


def prepare(cfg, workdir: Path, splits=("train", "validation"), vocab_size: int | None = None
            ) -> tuple[tk.Tokenizer, dict[str, TokenizedCorpus]]:
  """The run's tokenizer and each split tokenized (see the module docstring). `vocab_size`:
  the tokenizer's pieces (default model.vocab_size; span corruption keeps the last ids for sentinels)."""
  from lmjax.data import builders, fetch  # noqa: PLC0415  (tfds import is slow)

  identity, sources = builders.load_corpus(cfg.data)
  cache = fetch.cache_root(cfg.data.cache_dir)
  vocab_size = vocab_size or cfg.model.vocab_size
  tok = tk.for_run(Path(workdir), cache / "tokenizers" / tokenizer_cache_name(identity, cfg, vocab_size),
                   lambda: corpus_sentences(sources["train"]), vocab_size, seed=cfg.train.seed,
                   max_sentences=cfg.data.tokenizer_sentences, model_type=cfg.data.tokenizer_model)
  fp = tokenizer_fingerprint(tok)
  corpora = {split: TokenizedCorpus.build(sources[split], tok, cache / "tokens" / f"{identity}-{split}-{fp}.npz")
             for split in splits}
  return tok, corpora
