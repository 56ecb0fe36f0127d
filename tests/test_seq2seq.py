"""The seq2seq task: pairs from files, packed rows, decoding evaluation, metrics, errors."""

import json
import re
import random

import jax
import numpy as np
import pytest

from lmjax import sharding as sh
from lmjax import tasks, trainer
from lmjax.config import CheckpointConfig, Config, DataConfig, DecodeConfig, LoggingConfig, MeshConfig, TrainConfig
from lmjax.errors import LmjaxError
from lmjax.models.t5 import T5Config
from lmjax.tasks.seq2seq import EncodedPairs, Seq2SeqExamples, seq2seq_report

from conftest import TINY_BERT, replace

WORDS = "red green blue black white cat dog bird fish tree stone river hill road star moon".split()


def _write_pairs(path, n, seed, sep="\t"):
  """Inputs of 2-4 words; the target is the same words in reverse order."""
  rng = random.Random(seed)
  lines = [f"src{sep}tgt"]
  for _ in range(n):
    words = [rng.choice(WORDS) for _ in range(rng.randint(2, 4))]
    lines.append(f"{' '.join(words)}{sep}{' '.join(reversed(words))}")
  path.write_text("\n".join(lines) + "\n", encoding="utf-8")
  return path


@pytest.fixture
def pairs_cfg(tmp_path, cache_dir):
  files = {name: _write_pairs(tmp_path / f"{name}.tsv", n, seed)
           for name, n, seed in (("train", 300, 0), ("validation", 24, 1), ("test", 24, 2))}
  return Config(
      model=T5Config.preset("t5-tiny", dropout_rate=0.0),
      data=DataConfig(dataset="pair_files", train_file=str(files["train"]), validation_file=str(files["validation"]),
                      test_file=str(files["test"]), input_column="src", target_column="tgt",
                      input_template="reverse: {input}", cache_dir=str(cache_dir), max_seq_len=32,
                      max_target_len=16, pack_examples=True, prefetch=1),
      train=TrainConfig(objective="seq2seq", steps=30, batch_size=8, learning_rate=3e-3, warmup_steps=3,
                        eval_every=15, eval_batches=2),
      mesh=MeshConfig(data=-1),
      checkpoint=CheckpointConfig(every=15, keep=2, async_save=False),
      decode=DecodeConfig(num_beams=2, max_new_tokens=8, batch_size=16),
      logging=LoggingConfig(every=5, tensorboard=False, progress_bar=False),
  )


def test_seq2seq_trains_from_pair_files_reports_and_generates(pairs_cfg, tmp_path, capsys):
  workdir = tmp_path / "run"
  trainer.train(pairs_cfg, workdir)
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  train = [r for r in records if r["split"] == "train"]
  assert train[-1]["loss"] < train[0]["loss"] - 1.0
  evals = [r for r in records if r["split"] == "eval"]
  assert [r["step"] for r in evals] == [15, 30]
  assert all({"loss", "exact_match", "bleu", "chrf"} <= set(r) for r in evals)
  test = records[-1]
  assert test["split"] == "test" and test["checkpoint"] == "best" and test["examples"] == len(
      {line.split("\t")[0] for line in (tmp_path / "test.tsv").read_text().splitlines()[1:]})
  assert 0.0 <= test["exact_match"] <= 1.0 and 0.0 <= test["bleu"] <= 100.0
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["data"]["input_template"] == "reverse: {input}"

  from lmjax import generate
  capsys.readouterr()
  generate.main(["--workdir", str(workdir), "--checkpoint", "best", "--prompt", "red cat",
                 "--num-beams", "3", "--num-return-sequences", "2"])
  lines = capsys.readouterr().out.strip().splitlines()
  assert lines[0] == "red cat" and len(lines) == 3
  scores = [float(line.split("\t")[0]) for line in lines[1:]]
  assert scores == sorted(scores, reverse=True)
  # Parameters split over fsdp x tensor (sharded inference): the same beams and scores.
  generate.main(["--workdir", str(workdir), "--checkpoint", "best", "--prompt", "red cat",
                 "--num-beams", "3", "--num-return-sequences", "2", "--mesh", "1,4,2"])
  assert capsys.readouterr().out.strip().splitlines() == lines


def _encoded(n=40, seed=0):
  rng = np.random.default_rng(seed)
  inputs = [rng.integers(5, 50, rng.integers(2, 9)).astype(np.int32) for _ in range(n)]
  targets = [rng.integers(5, 50, rng.integers(2, 7)).astype(np.int32) for _ in range(n)]
  return EncodedPairs(inputs, targets, [str(i) for i in range(n)], [str(i) for i in range(n)])


def test_packed_rows_cover_every_pair_once_per_epoch_and_fit():
  pairs = _encoded()
  stream = Seq2SeqExamples(pairs, 16, 12, seed=3, pack=True)
  for epoch_start in (0, len(stream)):
    members = [stream.row_members(epoch_start + k) for k in range(len(stream._epoch_rows(epoch_start > 0)))]
    assert sorted(i for m in members for i in m) == list(range(len(pairs)))
    assert all(sum(len(pairs.inputs[i]) for i in m) <= 16 and sum(len(pairs.targets[i]) for i in m) <= 12
               for m in members)
  assert stream.row_members(0) != stream.row_members(len(stream))  # each epoch has its own order
  row = stream[0]
  members = stream.row_members(0)
  assert row["input_segments"].max() == len(members) == row["target_segments"].max()
  first = pairs.targets[members[0]]
  np.testing.assert_array_equal(row["target_ids"][:len(first)], first)
  np.testing.assert_array_equal(row["decoder_input_ids"][:len(first)], np.concatenate([[0], first[:-1]]))
  # Rebuilt from scratch, the stream is the same (resume needs nothing but the position).
  again = Seq2SeqExamples(pairs, 16, 12, seed=3, pack=True)
  for k in (0, 7, len(stream) + 2):
    for key, value in stream[k].items():
      np.testing.assert_array_equal(again[k][key], value)


def test_seq2seq_report_matches_hand_count():
  import sacrebleu
  predictions = ["K AE T", "D AO G", "B ER D"]
  references = [["K AE T"], ["D AA G", "D AO G Z"], ["B ER D Z"]]
  r = seq2seq_report(predictions, references, ("wer", "per", "bleu", "chrf"))
  assert r["exact_match"] == pytest.approx(1 / 3) and r["wer"] == pytest.approx(2 / 3)
  # closest references: "K AE T" (0 of 3), "D AA G" (1 of 3), "B ER D Z" (1 of 4)
  assert r["per"] == pytest.approx(2 / 10)
  streams = [["K AE T", "D AA G", "B ER D Z"], ["K AE T", "D AO G Z", "B ER D Z"]]
  assert r["bleu"] == pytest.approx(sacrebleu.corpus_bleu(predictions, streams).score)
  assert r["chrf"] == pytest.approx(sacrebleu.corpus_chrf(predictions, streams).score)


def test_bad_pair_input_is_a_clear_error(pairs_cfg, tmp_path):
  bad = tmp_path / "bad.tsv"
  bad.write_text("src\ttgt\nred cat\tcat red\nblue dog\t\n", encoding="utf-8")
  with pytest.raises(LmjaxError, match=r"bad.tsv:3: the target \('tgt'\) is empty"):
    trainer.train(replace(pairs_cfg, data=dict(train_file=str(bad))), tmp_path / "r1")
  with pytest.raises(LmjaxError, match=r"has no column 'target'.*data.input_column / data.target_column"):
    trainer.train(replace(pairs_cfg, data=dict(target_column="target")), tmp_path / "r2")
  with pytest.raises(LmjaxError, match="has no '\\{input\\}'"):
    trainer.train(replace(pairs_cfg, data=dict(input_template="reverse:")), tmp_path / "r3")
  with pytest.raises(LmjaxError, match="targets in the 'train' split are longer than data.max_target_len=3"):
    trainer.train(replace(pairs_cfg, data=dict(max_target_len=3, truncation="error")), tmp_path / "r4")
  with pytest.raises(LmjaxError, match="decode.num_beams=300 must be between 1 and the vocabulary size"):
    trainer.train(replace(pairs_cfg, decode=dict(num_beams=300)), tmp_path / "r5")
  with pytest.raises(LmjaxError, match="seq2seq"):
    trainer.train(Config(model=TINY_BERT, data=pairs_cfg.data, train=pairs_cfg.train), tmp_path / "r6")


def test_sharded_fsdp_tp_equals_unsharded():
  cfg = T5Config.preset("t5-tiny", dropout_rate=0.0)
  run = lambda mesh_cfg: Config(model=cfg, data=DataConfig(max_seq_len=16, max_target_len=8),  # noqa: E731
                                train=TrainConfig(objective="seq2seq", batch_size=8), mesh=mesh_cfg)
  task = tasks.get("seq2seq")
  stream = Seq2SeqExamples(_encoded(60), 16, 8, seed=0, pack=True)
  batch = {k: np.stack([stream[i][k] for i in range(8)]) for k in stream[0]}
  results = []
  for mesh_cfg, devices in ((MeshConfig(data=1, rules="dp"), jax.devices()[:1]),
                            (MeshConfig(data=2, fsdp=2, tensor=2, rules="fsdp_tp"), jax.devices())):
    mesh = sh.make_mesh(mesh_cfg.data, mesh_cfg.fsdp, mesh_cfg.tensor, devices=devices)
    trainer.validate(run(mesh_cfg), mesh)
    s = trainer.build(run(mesh_cfg), mesh)
    state = trainer.init_state(s)
    train_fn, _ = trainer.compile_steps(s)
    with jax.set_mesh(mesh):
      _, metrics = train_fn(state, trainer.to_global(batch, s))
    metrics = jax.device_get(metrics)
    results.append((task.finalize(metrics["stats"])["lm_loss"], float(metrics["grad_norm"]),
                    float(metrics["param_norm"])))
  np.testing.assert_allclose(results[1], results[0], rtol=2e-5)


# --- span corruption ---------------------------------------------------------------

def test_span_corruption_statistics_sentinels_and_reconstruction():
  from lmjax.data import span_corruption as sc
  raw_len, target_len = sc.lengths_for(512, 0.15, 3.0)
  assert (raw_len, target_len) == (568, 114)  # T5's sizes for inputs of 512 tokens
  vocab, eos = 1000, 3
  tokens = np.random.default_rng(0).integers(10, 900, 20 * raw_len).astype(np.int32)
  stream = sc.SpanCorruptionExamples(tokens, 512, 0.15, 3.0, vocab, eos, seed=0)
  span_lengths, hidden = [], 0
  for k in range(20):
    row = stream[k]
    x = row["input_ids"][row["input_segments"] > 0]
    y = row["target_ids"][row["target_weights"] > 0]
    assert len(x) <= 512 and len(y) == target_len and x[-1] == eos and y[-1] == eos
    sentinels = [t for t in x if t > 900]
    assert sentinels == list(range(vocab - 1, vocab - 1 - len(sentinels), -1))  # in order, from the end
    assert [t for t in y if t > 900] == sentinels
    # Putting each span back where its sentinel stands gives the original row.
    spans, cur = {}, None
    for t in y[:-1]:
      if t > 900:
        cur = int(t)
        spans[cur] = []
      else:
        spans[cur].append(int(t))
    rebuilt = [t for s in x[:-1] for t in (spans[int(s)] if s > 900 else [int(s)])]
    row_index = stream.order(k)[1]
    np.testing.assert_array_equal(rebuilt, tokens[row_index * raw_len:(row_index + 1) * raw_len])
    span_lengths += [len(v) for v in spans.values()]
    hidden += sum(len(v) for v in spans.values())
    np.testing.assert_array_equal(row["decoder_input_ids"][1:len(y)], y[:-1])
  assert hidden / (20 * raw_len) == pytest.approx(0.15, abs=0.002)
  assert np.mean(span_lengths) == pytest.approx(3.0, abs=0.1) and min(span_lengths) >= 1
  again = sc.SpanCorruptionExamples(tokens, 512, 0.15, 3.0, vocab, eos, seed=0)
  np.testing.assert_array_equal(again[37]["input_ids"], stream[37]["input_ids"])  # (seed, epoch, index) fix it
  assert not np.array_equal(stream[3]["input_ids"], stream[3 + len(stream)]["input_ids"])  # new noise each epoch


def test_span_corruption_pretrains_then_seq2seq_fine_tunes_from_it(corpus_dir, cache_dir, pairs_cfg, tmp_path):
  pre = Config(
      model=T5Config.preset("t5-tiny", vocab_size=320, dropout_rate=0.0),
      data=DataConfig(dataset="text_dir", text_dir=str(corpus_dir), doc_split="blank_line", cache_dir=str(cache_dir),
                      max_seq_len=32, prefetch=1),
      train=TrainConfig(objective="span_corruption", steps=6, batch_size=8, learning_rate=3e-3, warmup_steps=1,
                        eval_every=3, eval_batches=1),
      checkpoint=CheckpointConfig(every=3, keep=2, async_save=False),
      logging=LoggingConfig(every=1, tensorboard=False, progress_bar=False))
  trainer.train(pre, tmp_path / "pre")
  records = [json.loads(line) for line in (tmp_path / "pre" / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records if r["split"] == "eval"] == [3, 6]
  from lmjax.data.tokenizer import Tokenizer
  from lmjax.tasks.span_corruption import sentinels_needed
  assert Tokenizer.load(tmp_path / "pre" / "tokenizer.model").vocab_size <= 320 - sentinels_needed(pre)

  fine = replace(pairs_cfg, model=dict(vocab_size=999, num_layers=5), train=dict(init_from=str(tmp_path / "pre"),
                                                                                 steps=4, eval_every=4),
                 decode=dict(num_beams=1))
  trainer.train(fine, tmp_path / "fine")
  saved = json.loads((tmp_path / "fine" / "config.json").read_text())
  assert saved["model"]["vocab_size"] == 320 and saved["model"]["num_layers"] == 2  # the architecture of init_from
  assert (tmp_path / "fine" / "tokenizer.model").read_bytes() == (tmp_path / "pre" / "tokenizer.model").read_bytes()
  assert json.loads((tmp_path / "fine" / "metrics.jsonl").read_text().splitlines()[-1])["split"] == "test"


def test_span_corruption_needs_room_for_sentinels(corpus_dir, cache_dir, tmp_path):
  cfg = Config(model=T5Config.preset("t5-tiny", vocab_size=60),
               data=DataConfig(dataset="text_dir", text_dir=str(corpus_dir), cache_dir=str(cache_dir), max_seq_len=64),
               train=TrainConfig(objective="span_corruption"))
  with pytest.raises(LmjaxError, match="no room for the 3 sentinel ids"):
    trainer.train(cfg, tmp_path / "run")


# --- the registry-shipped pair data sets (fetched once into the default cache) -------

@pytest.mark.xdist_group("default_cache")
def test_cmu_pronunciation_builder_counts_and_split_by_word():
  from lmjax.data import pairs
  data = pairs.load_pairs(DataConfig(dataset="cmu_pronunciation"))
  sizes = {k: len(v) for k, v in data.splits.items()}
  assert sum(sizes.values()) == 135_166 and sizes["train"] > 0.79 * 135_166
  words = {k: set(v.inputs) for k, v in data.splits.items()}
  assert sum(map(len, words.values())) == 126_052  # distinct words, each in exactly one split
  assert not (words["train"] & words["test"]) and not (words["train"] & words["validation"])
  train = data.splits["train"]
  assert all(not any(c.isdigit() for c in t) for t in train.targets[:2000])  # stress removed
  assert data.metrics == ("wer", "per") and data.best_metric == "exact_match"


@pytest.mark.xdist_group("default_cache")
def test_django_translation_builder_keeps_placeholders():
  from lmjax.data import pairs
  data = pairs.load_pairs(DataConfig(dataset="django_translation/de"))
  sizes = {k: len(v) for k, v in data.splits.items()}
  assert 700 <= sum(sizes.values()) <= 800 and sizes["test"] >= 60
  everything = [(x, y) for s in data.splits.values() for x, y in zip(s.inputs, s.targets)]
  assert len({x for x, _ in everything}) == len(everything)  # one translation per source string
  with_placeholders = [(x, y) for x, y in everything if "%(" in x]
  assert len(with_placeholders) > 20
  assert all(set(re.findall(r"%\(\w+\)s", x)) == set(re.findall(r"%\(\w+\)s", y)) for x, y in with_placeholders)
  with pytest.raises(LmjaxError, match="needs a language"):
    pairs.load_pairs(DataConfig(dataset="django_translation"))
