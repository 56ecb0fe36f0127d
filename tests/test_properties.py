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
