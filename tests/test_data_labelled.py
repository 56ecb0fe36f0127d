"""Sentence-classification data sets: cleaning and a fixed, stratified, disjoint split."""

import numpy as np

from lmjax.data import labelled as classification


def test_stratified_split_is_disjoint_complete_and_stable():
  labels = np.asarray([0] * 503 + [1] * 497)
  a = classification.stratified_split(labels)
  b = classification.stratified_split(labels)
  allidx = np.concatenate(list(a.values()))
  assert len(allidx) == 1000 and len(np.unique(allidx)) == 1000
  for name in a:
    np.testing.assert_array_equal(a[name], b[name])
    share = labels[a[name]].mean()
    assert abs(share - 0.497) < 0.01, (name, share)
  assert [len(a[n]) for n in ("train", "validation", "test")] == [800, 100, 100]
  c = classification.stratified_split(labels, seed=1)
  assert not np.array_equal(a["test"], c["test"])


def test_sentence_polarity_from_pypi(tmp_path):
  source = classification.load("sentence_polarity", str(tmp_path))
  rows = {name: [source[name][i] for i in range(len(source[name]))] for name in ("train", "validation", "test")}
  sizes = {k: len(v) for k, v in rows.items()}
  # 10,605 rows - 37 zero scores - 2 duplicate texts = 10,566
  assert sum(sizes.values()) == 10566
  assert abs(sizes["train"] / 10566 - 0.8) < 0.002 and abs(sizes["test"] / 10566 - 0.1) < 0.002
  texts = {k: {r["text"] for r in v} for k, v in rows.items()}
  assert texts["train"].isdisjoint(texts["test"]) and texts["train"].isdisjoint(texts["validation"])
  assert texts["validation"].isdisjoint(texts["test"])
  positive = {k: np.mean([r["label"] for r in v]) for k, v in rows.items()}
  for share in positive.values():
    assert abs(share - 5242 / (5242 + 5326)) < 0.01
  # A second preparation (fresh cache) gives the same test split.
  again = classification.load("sentence_polarity", str(tmp_path / "again"))["test"]
  assert {again[i]["text"] for i in range(len(again))} == texts["test"]
  assert any(t.decode().startswith("The gorgeously elaborate continuation") for t in texts["train"] | texts["validation"] | texts["test"])


def test_chinese_review_sentiment_from_pypi(tmp_path):
  source = classification.load("chinese_review_sentiment", str(tmp_path))
  rows = [source[name][i] for name in ("train", "validation", "test") for i in range(len(source[name]))]
  # 8,379 unique positive + 9,078 unique negative lines, minus the 47 in both lists, twice
  assert len(rows) == 8379 - 47 + 9078 - 47
  texts = [r["text"] for r in rows]
  assert len(set(texts)) == len(texts)
  assert sum(r["label"] for r in rows) == 8379 - 47
  assert len(source["test"]) == round(0.1 * (8379 - 47)) + round(0.1 * (9078 - 47))
