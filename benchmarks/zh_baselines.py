"""Classical baselines for the Chinese recipes, on exactly their splits and scored
by the same functions as lmjax's reports (scikit-learn, no neural network).

  python benchmarks/zh_baselines.py sentiment   # beside configs/bert_zh_sentiment.py
  python benchmarks/zh_baselines.py ner         # beside configs/bert_zh_ner.py

sentiment: character 1-3-gram TF-IDF + logistic regression; C picked on the
validation split from a small grid, then the test report (accuracy, macro-F1
via lmjax.tasks.classification.classification_report).

ner: two taggers, scored with lmjax.tasks.token_classification.tagging_report
(entity-level P/R/F1 with exact spans, as CoNLL scores them):
  * most-frequent tag per character (O for characters never seen in training);
  * a linear model over a window of characters (the character, its two
    neighbours on each side, the bigrams around it; hashed features, logistic
    loss, SGD), each character tagged on its own.
Prints a JSON line per model with the figures and the seconds it took.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lmjax.config import DataConfig  # noqa: E402


def sentiment(cache_dir: str) -> list[dict]:
  from sklearn.feature_extraction.text import TfidfVectorizer
  from sklearn.linear_model import LogisticRegression

  from lmjax.data import classification_examples as examples
  from lmjax.data import labelled
  from lmjax.tasks.classification import classification_report

  start = time.perf_counter()
  data = labelled.load_labelled(DataConfig(dataset="chinese_review_sentiment", cache_dir=cache_dir))
  split = {name: examples.read_split(data, name) for name in ("train", "validation", "test")}
  vec = TfidfVectorizer(analyzer="char", ngram_range=(1, 3), min_df=2, sublinear_tf=True)
  x_train = vec.fit_transform(split["train"][0])
  x_val, x_test = vec.transform(split["validation"][0]), vec.transform(split["test"][0])
  best = None
  for c in (0.3, 1.0, 3.0, 10.0):
    model = LogisticRegression(C=c, max_iter=2000).fit(x_train, split["train"][2])
    acc = float((model.predict(x_val) == split["validation"][2]).mean())
    if best is None or acc > best[0]:
      best = (acc, c, model)
  acc, c, model = best
  report = classification_report(split["test"][2], model.predict_proba(x_test), data.names)
  return [{"model": "char 1-3-gram TF-IDF + logistic regression", "C": c, "validation_accuracy": acc,
           "test_accuracy": report["accuracy"], "test_f1": report["f1"], "test_examples": report["examples"],
           "seconds": round(time.perf_counter() - start, 1)}]


def _window_features(chars: list[str], i: int) -> list[str]:
  c = lambda k: chars[k] if 0 <= k < len(chars) else "<>"  # noqa: E731
  return [f"c0={c(i)}", f"c-1={c(i - 1)}", f"c+1={c(i + 1)}", f"c-2={c(i - 2)}", f"c+2={c(i + 2)}",
          f"b-1={c(i - 1)}{c(i)}", f"b+1={c(i)}{c(i + 1)}", f"t={c(i - 1)}{c(i)}{c(i + 1)}"]


def ner(cache_dir: str) -> list[dict]:
  from sklearn.feature_extraction import FeatureHasher
  from sklearn.linear_model import SGDClassifier

  from lmjax.data import tagging
  from lmjax.tasks.token_classification import tagging_report

  start = time.perf_counter()
  data = tagging.load_tagged(DataConfig(dataset="peoples_daily_1998", cache_dir=cache_dir))
  words = {s: tagging.read_split(data, s) for s in ("train", "test")}
  out = []

  counts: dict[str, Counter] = defaultdict(Counter)
  for sent, tags in zip(*words["train"]):
    for ch, t in zip(sent, tags):
      counts[ch][int(t)] += 1
  most = {ch: c.most_common(1)[0][0] for ch, c in counts.items()}
  pred = [np.asarray([most.get(ch, 0) for ch in sent], np.int32) for sent in words["test"][0]]
  r = tagging_report(words["test"][1], pred, data.names)
  out.append({"model": "most frequent tag per character", **_figures(r),
              "seconds": round(time.perf_counter() - start, 1)})

  start = time.perf_counter()
  hasher = FeatureHasher(n_features=2**20, input_type="string", alternate_sign=False)

  def rows(split):
    feats = [_window_features(sent, i) for sent in words[split][0] for i in range(len(sent))]
    return hasher.transform(feats)
  y = np.concatenate(words["train"][1])
  model = SGDClassifier(loss="log_loss", alpha=1e-6, max_iter=15, tol=None, random_state=0)
  model.fit(rows("train"), y)
  flat = model.predict(rows("test"))
  bounds = np.cumsum([0, *(len(s) for s in words["test"][0])])
  pred = [flat[a:b].astype(np.int32) for a, b in zip(bounds[:-1], bounds[1:])]
  r = tagging_report(words["test"][1], pred, data.names)
  out.append({"model": "linear model over a 5-character window (hashed n-grams, SGD logistic)", **_figures(r),
              "seconds": round(time.perf_counter() - start, 1)})
  return out


def _figures(r: dict) -> dict:
  keys = ["f1", "precision", "recall", *(f"f1/{k}" for k in r["types"]), "token_accuracy", "entities"]
  return {k: (round(r[k], 4) if isinstance(r[k], float) else r[k]) for k in keys}


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("task", choices=("sentiment", "ner"))
  parser.add_argument("--cache-dir", default="", help="lmjax's data cache (default: $LMJAX_DATA_DIR or ~/.cache/lmjax)")
  args = parser.parse_args()
  for row in (sentiment if args.task == "sentiment" else ner)(args.cache_dir):
    print(json.dumps(row, ensure_ascii=False))
  return 0


if __name__ == "__main__":
  sys.exit(main())
