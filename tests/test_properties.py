"""Property-based tests (hypothesis): hostile input either works or fails with an
LmjaxError that says what is wrong; never another exception, a hang or a
silently dropped row."""

import csv
import io
import json
import tempfile
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from lmjax import config as config_lib  # noqa: E402
from lmjax.data import labelled, text  # noqa: E402
from lmjax.errors import LmjaxError  # noqa: E402

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
BASE = config_lib.load_recipe("configs/bert_tiny_pretrain.py")
KEYS = sorted(config_lib.all_keys(BASE))


@SETTINGS
@given(st.text(max_size=60))
def test_any_set_string_configures_or_is_a_clear_error(item):
  try:
    config_lib.override(BASE, [item])
  except LmjaxError as e:
    assert str(e)


@SETTINGS
@given(st.sampled_from(KEYS), st.one_of(st.text(max_size=20), st.integers().map(str),
                                        st.floats(allow_nan=True).map(repr), st.sampled_from(["true", "no", "", "-1"])))
def test_every_key_with_any_value_configures_or_is_a_clear_error(key, value):
  try:
    cfg = config_lib.override(BASE, [f"{key}={value}"])
  except LmjaxError as e:
    assert key in str(e) or "model." in str(e) or str(e)
    return
  section, field = key.split(".")
  assert getattr(getattr(cfg, section), field) is not None


@SETTINGS
@given(st.binary(max_size=400))
def test_any_bytes_decode_or_name_the_offset(data):
  try:
    out = text.decode(data, "f.txt")
  except LmjaxError as e:
    assert "f.txt is not valid UTF-8: byte offset" in str(e)
    return
  assert out == data.decode("utf-8-sig")


_cell = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30)


@SETTINGS
@given(st.lists(st.tuples(_cell, _cell), min_size=0, max_size=12), st.sampled_from([".csv", ".tsv"]))
def test_delimited_files_keep_every_row_or_fail_clearly(rows, suffix):
  """A file written with proper quoting reads back row for row (texts as
  written, stripped); nothing is dropped silently."""
  buffer = io.StringIO(newline="")
  writer = csv.writer(buffer, delimiter="," if suffix == ".csv" else "\t", lineterminator="\n")
  writer.writerow(["text", "label"])
  writer.writerows(rows)
  with tempfile.TemporaryDirectory() as d:
    path = Path(d) / f"data{suffix}"
    path.write_text(buffer.getvalue(), encoding="utf-8")
    try:
      got = labelled.read_labelled_file(path, "text", "", "label")
    except LmjaxError as e:
      assert str(path) in str(e)
      return
    assert [(r.text, r.label) for r in got] == [(t.strip(), lab.strip()) for t, lab in rows]


@SETTINGS
@given(st.lists(st.one_of(st.dictionaries(st.sampled_from(["text", "label", "x"]),
                                          st.one_of(_cell, st.integers(), st.booleans(), st.none())),
                          st.text(max_size=20)), max_size=10))
def test_jsonl_files_keep_every_record_or_name_the_line(lines):
  with tempfile.TemporaryDirectory() as d:
    path = Path(d) / "data.jsonl"
    path.write_text("\n".join(json.dumps(x) if isinstance(x, dict) else x for x in lines), encoding="utf-8")
    try:
      got = labelled.read_labelled_file(path, "text", "", "label")
    except LmjaxError as e:
      assert str(path) in str(e)
      return
    objects = [x for x in lines if isinstance(x, dict)]
    assert len(got) == len(objects)


@SETTINGS
@given(st.binary(max_size=300), st.sampled_from([".csv", ".tsv", ".jsonl"]))
def test_random_bytes_as_a_labelled_file_fail_clearly_or_read(data, suffix):
  with tempfile.TemporaryDirectory() as d:
    path = Path(d) / f"data{suffix}"
    path.write_bytes(data)
    try:
      labelled.read_labelled_file(path, "text", "", "label")
    except LmjaxError as e:
      assert str(path) in str(e)


@pytest.fixture(scope="module")
def small_tokenizer(tmp_path_factory):
  from lmjax.data import tokenizer  # noqa: PLC0415
  sentences = [f"the {w} of the {v} is {n}" for n, (w, v) in enumerate(
      [("king", "land"), ("queen", "sea"), ("fool", "court"), ("ghost", "castle")] * 40)]
  return tokenizer.train(sentences, 120, tmp_path_factory.mktemp("spm") / "t.model", seed=0, max_sentences=1000)


@SETTINGS
@given(st.lists(st.text(max_size=80), min_size=1, max_size=4))
def test_the_tokenizer_takes_any_text(small_tokenizer, texts):
  """Any Unicode text (control characters, emoji, other scripts) encodes to ids in the
  vocabulary, and decodes without an error."""
  ids = small_tokenizer.encode(texts)
  assert len(ids) == len(texts)
  for row in ids:
    assert all(0 <= i < small_tokenizer.vocab_size for i in row)
    small_tokenizer.decode(row)


_words = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Zs", "Zl", "Zp", "Cc")), min_size=1, max_size=12)
_text_body = st.one_of(
    # sentences, blank lines, CR/CRLF line ends, leading BOM
    st.lists(st.one_of(_words, st.sampled_from([". ", "! ", "\n", "\n\n", "\r\n", "\r", "  ", "\t", "。"])),
             max_size=40).map("".join),
    st.builds(lambda w, n: (w + " ") * n, _words, st.integers(2_000, 40_000)),  # one huge line
    st.just(""), st.just("\n\n  \n"))
_file = st.one_of(
    _text_body.map(lambda t: ("utf-8", t.encode("utf-8"))),
    _text_body.map(lambda t: ("utf-8", b"\xef\xbb\xbf" + t.encode("utf-8"))),
    st.sampled_from(["caf\xe9 cr\xe8me br\xfbl\xe9e.", "na\xefve r\xe9sum\xe9!"]).map(lambda t: ("latin-1", t.encode("latin-1"))),
    st.binary(max_size=200).map(lambda b: ("bytes", b)))


@SETTINGS
@given(st.lists(_file, min_size=1, max_size=5), st.sampled_from(["file", "blank_line"]),
       st.sampled_from(["error", "skip"]))
def test_a_text_directory_reads_every_word_or_fails_clearly(files, doc_split, on_decode_error):
  """Random files (huge lines, empty files, Latin-1 among UTF-8, random bytes)
  in a text directory: the builder either keeps every word of every readable
  file, in both splits' documents, or stops with an LmjaxError."""
  import warnings  # noqa: PLC0415

  from lmjax.config import DataConfig  # noqa: PLC0415
  from lmjax.data import builders  # noqa: PLC0415

  with tempfile.TemporaryDirectory() as tmp:
    root = Path(tmp) / "corpus"
    (root / "sub").mkdir(parents=True)
    for i, (_, data) in enumerate(files):
      (root / ("sub" if i % 2 else "") / f"f{i}.txt").write_bytes(data)
    cfg = DataConfig(dataset="text_dir", text_dir=str(root), doc_split=doc_split,
                     on_decode_error=on_decode_error, cache_dir=tmp)
    try:
      with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        builder = builders.builder_for(cfg)
    except LmjaxError as e:
      assert str(e) and ("corpus" in str(e) or "UTF-8" in str(e)), e
      return
    readable = []
    for _, data in files:
      try:
        readable.append(data.decode("utf-8-sig"))
      except UnicodeDecodeError:
        assert on_decode_error == "skip", "an undecodable file was read without an error"
    assert len(caught) == len(files) - len(readable), "a skipped file must be named in a warning"
    docs = builders.read_text_directory([f.resolve() for f in sorted(root.rglob("*.txt"))], root.resolve(),
                                        doc_split, on_decode_error)
    kept = sorted(w for _, sentences in docs for s in sentences for w in s.split())
    assert kept == sorted(w for t in readable for w in t.split())
    splits = text.split_documents(docs)
    assert splits["train"] and splits["validation"]
    assert sorted(d[0] for d in splits["train"] + splits["validation"]) == sorted(d[0] for d in docs)
    assert builder.builder_config.doc_split == doc_split
