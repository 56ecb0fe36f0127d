"""Pretraining corpora at scale (lmjax.data.corpus, the catalog and streaming
paths of lmjax.data.builders, lmjax.data.stream.ShardedExamples): token caches
written block by block and memory-mapped, parts that each process tokenizes
and reads alone, tfds catalog data sets, text directories read a file at a time."""

import dataclasses
import importlib
import json
import sys
import textwrap

import numpy as np
import pytest

from lmjax.config import Config, DataConfig
from lmjax.data import bert_examples, builders, corpus, packing, stream, text
from lmjax.errors import LmjaxError

from conftest import TINY_BERT, write_corpus


def _random_corpus(rng, docs=40, empty_every=7):
  """A TokenizedCorpus in memory with empty sentences and empty documents among the others."""
  sents_per_doc = rng.integers(0, 6, docs)
  sents_per_doc[::empty_every] = 0
  lengths = rng.integers(0, 9, int(sents_per_doc.sum()))
  sent_start = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
  doc_start = np.concatenate([[0], np.cumsum(sents_per_doc)]).astype(np.int64)
  return corpus.TokenizedCorpus(rng.integers(5, 200, int(lengths.sum())).astype(np.int32), sent_start, doc_start)


def test_packed_tokens_are_the_concatenated_stream():
  rng = np.random.default_rng(0)
  c = _random_corpus(rng)
  tokens, doc_ids = packing.pack_stream(c.documents(), eos_id=3)
  packed = c.packed(3)
  assert len(packed) == len(tokens)
  for start, n in [(0, 1), (0, len(tokens)), (len(tokens) - 1, 1)] + [
      (int(rng.integers(0, len(tokens) - 20)), int(rng.integers(1, 20))) for _ in range(200)]:
    toks, docs = packed.window(start, n)
    np.testing.assert_array_equal(toks, tokens[start:start + n])
    np.testing.assert_array_equal(docs, doc_ids[start:start + n])


def _chunks_by_sentence_loop(c, max_tokens):
  """The chunking BERT's create_pretraining_data does: a sentence at a time."""
  lengths = np.diff(c.sent_start)
  out = []
  for d in range(c.num_docs):
    start, total = c.doc_start[d], 0
    for s in range(c.doc_start[d], c.doc_start[d + 1]):
      total += lengths[s]
      if total >= max_tokens or s == c.doc_start[d + 1] - 1:
        if total > 0:
          out.append((d, start, s + 1))
        start, total = s + 1, 0
  return np.asarray(out, np.int64).reshape(-1, 3)


def test_bert_chunks_equal_the_sentence_loop():
  rng = np.random.default_rng(1)
  c = _random_corpus(rng, docs=300)
  for max_seq_len in (8, 12, 32):
    examples = bert_examples.BertExamples(c, DataConfig(max_seq_len=max_seq_len, max_predictions_per_seq=3), 256, 0)
    np.testing.assert_array_equal(examples.chunks, _chunks_by_sentence_loop(c, max_seq_len - 3))


class _Part:
  """A stream that returns (part, index) so that the mapping can be read off."""

  def __init__(self, g, n=1000):
    self.g, self.n = g, n

  def __len__(self):
    return self.n

  def __getitem__(self, m):
    return {"where": np.asarray([self.g, m])}


def test_sharded_stream_gives_each_part_its_slots_and_is_the_same_on_any_process_count():
  made = []
  s = stream.ShardedExamples(lambda g: made.append(g) or _Part(g), 4, 8)
  rows = [s[k]["where"].tolist() for k in range(24)]
  # 2 slots per part per batch, contiguous; each part's own stream advances by 2 per batch.
  assert rows[:8] == [[0, 0], [0, 1], [1, 0], [1, 1], [2, 0], [2, 1], [3, 0], [3, 1]]
  assert rows[8:10] == [[0, 2], [0, 3]] and rows[16:18] == [[0, 4], [0, 5]]
  # Uneven parts (3 into 8 slots: 3, 3, 2): every index of every part appears once.
  uneven = stream.ShardedExamples(lambda g: _Part(g), 3, 8)
  seen = [tuple(uneven[k]["where"]) for k in range(80)]
  assert sorted(seen) == sorted({(g, m) for g, n in ((0, 30), (1, 30), (2, 20)) for m in range(n)})
  # Two processes: each feeds 4 slots and reads only its 2 parts; together they make the one-process batches.
  halves = []
  for p in range(2):
    made.clear()
    sp = stream.ShardedExamples(lambda g: made.append(g) or _Part(g), 4, 8, process_index=p, process_count=2)
    assert list(sp.local_parts) == [2 * p, 2 * p + 1]
    it = stream.BatchIterator(sp, 8, process_index=p, process_count=2, prefetch=0)
    halves.append([next(it)["where"].tolist() for _ in range(3)])
    assert sorted(set(made)) == [2 * p, 2 * p + 1]
  one = stream.BatchIterator(s, 8, prefetch=0)
  for b in range(3):
    assert next(one)["where"].tolist() == halves[0][b] + halves[1][b]
  assert stream.part_seed(7, 0) == 7 and len({stream.part_seed(7, g) for g in range(4)}) == 4
  with pytest.raises(LmjaxError, match="data.shards=9 is more than train.batch_size=8"):
    stream.ShardedExamples(lambda g: _Part(g), 9, 8)


def _bert_cfg(corpus_dir, cache, **data) -> Config:
  return Config(model=TINY_BERT, data=DataConfig(dataset="text_dir", text_dir=str(corpus_dir), doc_split="blank_line",
                                                 cache_dir=str(cache), max_seq_len=32, max_predictions_per_seq=5,
                                                 **data))


def test_token_cache_is_memory_mapped_and_equals_tokenizing_in_memory(tmp_path, corpus_dir, monkeypatch):
  cfg = _bert_cfg(corpus_dir, tmp_path / "cache")
  tok, parts = corpus.prepare(cfg, tmp_path / "run")
  _, sources = builders.load_corpus(cfg.data)
  for split in ("train", "validation"):
    part = parts[split].part(0)
    assert isinstance(part.tokens, np.memmap) and part.tokens.dtype == np.uint16
    docs = list(corpus.read_documents(sources[split], 0, len(sources[split])))
    ids = tok.encode([s for d in docs for s in d])
    np.testing.assert_array_equal(np.asarray(part.tokens, np.int32), np.concatenate(ids))
    np.testing.assert_array_equal(np.diff(part.sent_start), [len(x) for x in ids])
    np.testing.assert_array_equal(np.diff(part.doc_start), [len(d) for d in docs])
    np.testing.assert_array_equal(part.doc_tokens, np.asarray(part.sent_start)[np.asarray(part.doc_start)])
    assert json.loads((part.directory / "meta.json").read_text())["documents"] == len(docs)
  # A second run reads the cache back instead of tokenizing again.
  monkeypatch.setattr(corpus.TokenizedCorpus, "write", classmethod(lambda *a, **k: pytest.fail("tokenized again")))
  _, again = corpus.prepare(cfg, tmp_path / "run2")
  np.testing.assert_array_equal(again["train"].part(0).tokens, parts["train"].part(0).tokens)


def test_a_damaged_token_cache_is_named(tmp_path, corpus_dir):
  cfg = _bert_cfg(corpus_dir, tmp_path / "cache")
  _, parts = corpus.prepare(cfg, tmp_path / "run")
  directory = parts["train"].part(0).directory
  with open(directory / "tokens.bin", "r+b") as f:
    f.truncate(10)
  with pytest.raises(LmjaxError, match=r"tokens\.bin is 10 bytes.*delete"):
    corpus.TokenizedCorpus.open(directory)


def test_parts_are_tokenized_by_the_process_that_reads_them(tmp_path, corpus_dir):
  """Each of two processes tokenizes only its own part, and together their rows
  are the global batches of one process reading both parts."""
  base = _bert_cfg(corpus_dir, tmp_path / "one", shards=2)
  base = dataclasses.replace(base, train=dataclasses.replace(base.train, batch_size=8))
  one, _, _ = bert_examples.pretraining_examples(base, tmp_path / "run")
  rows = {}
  for p in range(2):
    cfg = dataclasses.replace(base, data=dataclasses.replace(base.data, cache_dir=str(tmp_path / f"p{p}")))
    train, _, _ = bert_examples.pretraining_examples(cfg, tmp_path / f"run{p}", process_index=p, process_count=2)
    written = sorted(d.name.rsplit("-", 1)[1] for d in (tmp_path / f"p{p}" / "tokens").iterdir() if "train" in d.name)
    assert written == [f"part{p}of2"]
    it = stream.BatchIterator(train, 8, process_index=p, process_count=2, prefetch=0)
    rows[p] = [next(it) for _ in range(3)]
  it = stream.BatchIterator(one, 8, prefetch=0)
  for b in range(3):
    whole = next(it)
    for key, value in whole.items():
      np.testing.assert_array_equal(value, np.concatenate([rows[0][b][key], rows[1][b][key]]))


def test_one_part_keeps_the_unsharded_stream(tmp_path, corpus_dir):
  """data.shards=1 is the stream of the whole split (what runs got before parts existed)."""
  cfg = _bert_cfg(corpus_dir, tmp_path / "cache", shards=1)
  train, _, tok = bert_examples.pretraining_examples(cfg, tmp_path / "run")
  assert isinstance(train, bert_examples.BertExamples)
  _, parts = corpus.prepare(cfg, tmp_path / "run")
  whole = parts["train"].part(0)
  in_memory = corpus.TokenizedCorpus(np.asarray(whole.tokens, np.int32), np.asarray(whole.sent_start),
                                     np.asarray(whole.doc_start))
  again = bert_examples.BertExamples(in_memory, cfg.data, tok.vocab_size, cfg.train.seed)
  for k in (0, 5, 77):
    for key, value in train[k].items():
      np.testing.assert_array_equal(value, again[k][key])


# --- tfds catalog data sets ---------------------------------------------------

_CATALOG = '''
import numpy as np
import tensorflow_datasets as tfds

WORDS = "north wind sun traveller cloak stronger agreed first succeeded making take off".split()


def _text(i):
  rng = np.random.default_rng(i)
  sentences = [" ".join(rng.choice(WORDS, rng.integers(4, 12))).capitalize() + "." for _ in range(rng.integers(2, 9))]
  return " ".join(sentences)


class LmjaxTestDocuments(tfds.core.GeneratorBasedBuilder):
  """Generated web-like documents: text plus other features, written in several shards."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return self.dataset_info_from_configs(features=tfds.features.FeaturesDict(
        {"text": tfds.features.Text(), "url": tfds.features.Text(), "length": np.int32}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(0, 300), "validation": self._generate_examples(300, 330)}

  def _generate_examples(self, lo, hi):
    for i in range(lo, hi):
      yield i, {"text": _text(i), "url": f"https://example.org/{i}", "length": len(_text(i))}


class LmjaxTestNumbers(tfds.core.GeneratorBasedBuilder):
  """A data set without text."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({"x": np.int32, "y": np.float32}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    for i in range(5):
      yield i, {"x": i, "y": i / 2}


class LmjaxTestTitled(tfds.core.GeneratorBasedBuilder):
  """Two text features, neither called text."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return self.dataset_info_from_configs(features=tfds.features.FeaturesDict(
        {"title": tfds.features.Text(), "body": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    for i in range(40):
      yield i, {"title": f"Title {i}.", "body": f"Body {i} one. Body {i} two."}
'''


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
  """A tfds data set registered in the catalog (from a package module, as tfds
  requires) and prepared in three array_record shards per split, as a large
  data set would be."""
  import tensorflow_datasets as tfds
  root = tmp_path_factory.mktemp("catalog")
  package = root / "lmjax_test_catalog"
  package.mkdir()
  (package / "__init__.py").write_text("")
  (package / "documents.py").write_text(textwrap.dedent(_CATALOG))
  sys.path.insert(0, str(root))
  try:
    importlib.import_module("lmjax_test_catalog.documents")
  finally:
    sys.path.remove(str(root))
  tfds_dir = root / "tfds"
  config = tfds.download.DownloadConfig(num_shards=3, try_download_gcs=False)
  for name in ("lmjax_test_documents", "lmjax_test_numbers", "lmjax_test_titled"):
    tfds.builder(name, data_dir=str(tfds_dir), file_format="array_record").download_and_prepare(
        download_config=config)
  return tfds_dir


def test_a_catalog_corpus_is_read_through_its_text_feature(catalog, tmp_path):
  data = DataConfig(dataset="lmjax_test_documents", tfds_dir=str(catalog), cache_dir=str(tmp_path))
  shards = sorted(p.name for p in (catalog / "lmjax_test_documents" / "1.0.0").glob("*train.array_record*"))
  assert len(shards) == 3
  identity, sources = builders.load_corpus(data)
  assert identity.startswith("lmjax_test_documents-") and len(sources["train"]) == 300
  doc = sources["train"][0]
  assert set(doc) == {"sentences"} and all(s.endswith(b".") for s in doc["sentences"])
  # Sliced splits hold documents out of one split.
  held = dataclasses.replace(data, corpus_train_split="train[:90%]", corpus_eval_split="train[90%:]")
  identity2, sliced = builders.load_corpus(held)
  assert (len(sliced["train"]), len(sliced["validation"])) == (270, 30) and identity2 != identity


def test_catalog_corpus_errors_name_what_is_there(catalog, tmp_path):
  def load(**kw):
    return builders.load_corpus(DataConfig(tfds_dir=str(catalog), cache_dir=str(tmp_path), **kw))
  with pytest.raises(LmjaxError, match=r"no text feature to pretrain on; its features are x \(Tensor\), y"):
    load(dataset="lmjax_test_numbers")
  with pytest.raises(LmjaxError, match="several text features .*title, body.*data.text_feature"):
    load(dataset="lmjax_test_titled")
  assert len(load(dataset="lmjax_test_titled", text_feature="body", corpus_eval_split="train[90%:]",
                  corpus_train_split="train[:90%]")[1]["train"]) == 36
  with pytest.raises(LmjaxError, match="no feature 'content'.*title"):
    load(dataset="lmjax_test_titled", text_feature="content")
  with pytest.raises(LmjaxError, match="'length' of 'lmjax_test_documents' is not text"):
    load(dataset="lmjax_test_documents", text_feature="length")
  with pytest.raises(LmjaxError, match=r"no split 'validation' \(data.corpus_eval_split\); its splits are train"):
    load(dataset="lmjax_test_titled", text_feature="body")
  with pytest.raises(LmjaxError, match="Unknown data.dataset 'no_such_corpus'.*tfds catalog name"):
    load(dataset="no_such_corpus")
  # A data set prepared as tfrecord (tfds build's default) needs TensorFlow to read: said before anything runs.
  import shutil
  tfrecord = tmp_path / "tfrecord"
  shutil.copytree(catalog / "lmjax_test_documents", tfrecord / "lmjax_test_documents")
  info = tfrecord / "lmjax_test_documents" / "1.0.0" / "dataset_info.json"
  info.write_text(info.read_text().replace('"fileFormat": "array_record"', '"fileFormat": "tfrecord"'))
  with pytest.raises(LmjaxError, match="prepared as tfrecord, which needs TensorFlow.*--file_format=array_record"):
    builders.load_corpus(DataConfig(dataset="lmjax_test_documents", tfds_dir=str(tfrecord), cache_dir=str(tmp_path)))


def test_causal_lm_trains_on_a_catalog_corpus_in_two_parts(catalog, tmp_path):
  """The whole pretraining path on the generated multi-shard data set: train.py, held-out evaluation, resume."""
  from lmjax import trainer
  from lmjax.models.gpt import GptConfig
  cfg = Config(model=GptConfig.preset("tiny", vocab_size=256, max_position_embeddings=32),
               data=DataConfig(dataset="lmjax_test_documents", tfds_dir=str(catalog), cache_dir=str(tmp_path / "c"),
                               max_seq_len=32, shards=2))
  cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, objective="causal_lm", steps=3, batch_size=8,
                                                           eval_every=3, eval_batches=2, warmup_steps=1),
                            checkpoint=dataclasses.replace(cfg.checkpoint, every=3),
                            logging=dataclasses.replace(cfg.logging, every=1, tensorboard=False))
  result = trainer.train(cfg, tmp_path / "run")
  assert np.isfinite(result["loss"]) and result["perplexity"] > 1
  parts = sorted(p.name.rsplit("-", 1)[1] for p in (tmp_path / "c" / "tokens").iterdir())
  assert parts == ["part0of2", "part0of2", "part1of2", "part1of2"]  # train and validation
  more = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=4),
                             data=dataclasses.replace(cfg.data, shards=1))
  with pytest.raises(LmjaxError, match=r"written with data.shards=2 \(this run has 1\).*--set data.shards=2"):
    trainer.train(more, tmp_path / "run")
  # A checkpoint from before parts existed records no count: it had one, and a run with two is refused.
  saved = tmp_path / "run" / "checkpoints" / "3" / "data" / "metadata"  # Orbax JsonSave writes the dict here
  state = json.loads(saved.read_text())
  assert state.pop("data.shards") == 2
  saved.write_text(json.dumps(state))
  with pytest.raises(LmjaxError, match=r"written with data.shards=1 \(this run has 2\)"):
    trainer.train(dataclasses.replace(more, data=cfg.data), tmp_path / "run")


# --- text directories read a file at a time -----------------------------------

def test_a_large_text_directory_is_written_a_file_at_a_time_with_the_same_documents(tmp_path, monkeypatch):
  """Over READ_AHEAD_BYTES a directory goes to array_record shards without tfds (whose writer
  would need TensorFlow past 1 GB): the same documents, held out by the same hash."""
  root = write_corpus(tmp_path / "c", num_files=30, paragraphs=4)
  data = DataConfig(dataset="text_dir", text_dir=str(root), doc_split="blank_line", cache_dir=str(tmp_path / "a"))
  _, whole = builders.load_corpus(data)
  monkeypatch.setattr(builders, "READ_AHEAD_BYTES", 0)
  monkeypatch.setattr(builders.LargeTextDirectory, "SHARD_BYTES", 2000)
  large = dataclasses.replace(data, cache_dir=str(tmp_path / "b"))
  assert isinstance(builders.builder_for(large), builders.LargeTextDirectory)
  identity, streamed = builders.load_corpus(large)
  shards = sorted(p.name for p in (tmp_path / "b" / "text_dirs").glob("*/train-*.array_record"))
  assert len(shards) > 3 and identity.startswith("text_dir-d")

  def docs(sources):
    return {split: sorted((s[i]["id"], tuple(s[i]["sentences"])) for i in range(len(s)))
            for split, s in sources.items()}
  assert docs(streamed) == docs(whole)
  assert all(text.is_eval(i.decode()) for i, _ in docs(streamed)["validation"])
  # The rest of the pretraining path reads it like any corpus.
  cfg = _bert_cfg(root, tmp_path / "b")
  train, held_out, _ = bert_examples.pretraining_examples(cfg, tmp_path / "run")
  assert len(train) > 0 and len(held_out) > 0 and train[0]["input_ids"].shape == (32,)
  with pytest.raises(LmjaxError, match="a text directory has the splits train and validation"):
    builders.load_corpus(dataclasses.replace(large, corpus_eval_split="train[90%:]"))
  # An undecodable file stops the preparation with its name, and nothing half-written is kept.
  (root / "latin1.txt").write_bytes("Caf\u00e9 society.\n".encode("latin-1"))
  with pytest.raises(LmjaxError, match=r"latin1\.txt is not valid UTF-8"):
    builders.load_corpus(dataclasses.replace(large, cache_dir=str(tmp_path / "d")))
  assert not list((tmp_path / "d" / "text_dirs").iterdir())


def test_the_tokenizer_sample_reads_only_the_first_documents():
  class Counting:
    def __init__(self):
      self.read = 0

    def __len__(self):
      return 10_000

    def __getitem__(self, i):
      self.read += 1
      return {"sentences": [b"One sentence.", b"Two sentences."]}
  source = Counting()
  sample = corpus.sample_sentences(source, limit=100)
  assert len(sample) == 400 and source.read <= 456  # 4 x the sample, in blocks of 256 documents
  assert len(corpus.sample_sentences(Counting(), limit=0)) == 20_000


def test_a_vocabulary_over_65536_pieces_is_stored_as_int32(tmp_path):
  class Big:
    vocab_size = 70_000

    def encode(self, texts, threads=1):
      return [[69_999, 5] for _ in texts]
  part = corpus.TokenizedCorpus.write(iter([["a", "b"], ["c"]]), 2, Big(), tmp_path / "p")
  assert part.tokens.dtype == np.int32 and part.tokens.tolist() == [69_999, 5] * 3
  assert part.doc_start.tolist() == [0, 2, 3] and part.doc_tokens.tolist() == [0, 4, 6]


def test_two_processes_preparing_one_data_set_write_it_once(tmp_path, corpus_dir):
  """`fetch.prepare` holds a lock on the data set's directory: a second
  preparer (another run sharing the cache) waits, and its builder, made
  before the data existed, then reads the prepared splits from disk instead
  of failing tfds's final rename or finding no splits."""
  import fcntl  # noqa: PLC0415
  import threading  # noqa: PLC0415
  from pathlib import Path  # noqa: PLC0415

  from lmjax.data import fetch  # noqa: PLC0415
  data = DataConfig(dataset="text_dir", text_dir=str(corpus_dir), doc_split="blank_line", cache_dir=str(tmp_path))
  first, second = builders.builder_for(data), builders.builder_for(data)  # both made before anything is prepared
  assert not second.info.splits
  version_dir = Path(first.data_dir)
  version_dir.parent.mkdir(parents=True)
  done = threading.Event()
  with open(version_dir.with_name(f".{version_dir.name}.lock"), "a") as held:  # another process preparing
    fcntl.flock(held, fcntl.LOCK_EX)
    waiting = threading.Thread(target=lambda: (fetch.prepare(second, "text_dir"), done.set()))
    waiting.start()
    assert not done.wait(1.0) and not version_dir.exists()  # it waits for the lock
    first.download_and_prepare()  # what the other process does before it lets go
    fcntl.flock(held, fcntl.LOCK_UN)
  waiting.join(30)
  assert done.is_set()
  assert set(second.info.splits) == {"train", "validation"}
  ids = lambda b: sorted(x["id"] for x in b.as_data_source(split="validation"))  # noqa: E731
  assert ids(second) == ids(first) and ids(first)
