"""python -m lmjax.export: runs as Hugging Face directories that transformers loads with the same predictions."""

import json
import random

import numpy as np
import pytest
import torch
import transformers

from lmjax import export, predict, trainer
from lmjax.config import CheckpointConfig, Config, DataConfig, LoggingConfig, TrainConfig
from lmjax.data import tokenizer as tk
from lmjax.errors import LmjaxError
from lmjax.models.gpt import GptConfig

from conftest import replace
from test_classification import write_labelled
from test_token_classification import write_tagged

_ZH = ["迈向充满希望的新世纪——一九九八年新年讲话", "中共中央总书记、国家主席江泽民发表１９９８年新年讲话。",
       "同胞们、朋友们、女士们、先生们：在１９９８年来临之际，我十分高兴。", "香港特别行政区同胞、澳门和台湾同胞"] * 10


@pytest.mark.parametrize("model_type", ["unigram", "char"])
def test_sentencepiece_as_hf_cuts_text_alike(tmp_path, model_type):
  rng = random.Random(0)
  english = [" ".join(rng.choice("the king sweet night castle unbelievable crown".split()) for _ in range(8))
             for _ in range(60)]
  tok = tk.train(english + _ZH, 120, tmp_path / "t.model", seed=0, max_sentences=0, model_type=model_type)
  hf = tk.sentencepiece_as_hf(tok.path)
  texts = [*english[:5], *_ZH[:4], "  two  spaces  and ＡＢＣ full-width ", "unseen 字 and ｘ kept", "x"]
  for text in texts:
    assert hf.encode(text, add_special_tokens=False).ids == tok.encode([text])[0], text


@pytest.fixture(scope="module")
def classification_run(tmp_path_factory, corpus_dir, cache_dir):
  from conftest import make_tiny_cfg
  data = write_labelled(tmp_path_factory.mktemp("labelled"), n_train=64, n_eval=16)
  cfg = replace(
      make_tiny_cfg(corpus_dir, cache_dir), model=dict(num_labels=2),
      data=dict(dataset="labelled_files", train_file=str(data / "train.csv"), validation_file=str(data / "valid.jsonl"),
                test_file=str(data / "test.tsv"), text_column="review", label_column="sentiment", max_seq_len=32,
                text_dir="", doc_split="file", max_predictions_per_seq=20),
      train=dict(objective="classification", steps=8, batch_size=16, learning_rate=3e-3, warmup_steps=2, eval_every=4),
      checkpoint=dict(every=4, keep=2))
  work = tmp_path_factory.mktemp("cls_run")
  trainer.train(cfg, work)
  return work


def test_export_sequence_classification_predicts_alike(classification_run, tmp_path):
  out = export.export(classification_run, tmp_path / "hf")
  hf_cfg = json.loads((out / "config.json").read_text())
  assert hf_cfg["architectures"] == ["BertForSequenceClassification"]
  assert hf_cfg["id2label"] == {"0": "neg", "1": "pos"}
  model = transformers.AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
  tokenizer = transformers.AutoTokenizer.from_pretrained(str(out))
  texts = ["the king bright sweet noble day", "the queen dark bitter storm night", "a"]
  clf = predict.Classifier(classification_run)
  probs, _ = clf.predict(texts)
  for text, p in zip(texts, probs):
    ids = tokenizer(text, return_tensors="pt")
    assert ids["input_ids"][0].tolist() == [clf.tok.cls_id, *clf.tok.encode([text])[0], clf.tok.sep_id]
    with torch.no_grad():
      got = torch.softmax(model(**ids).logits, -1)[0].numpy()
    np.testing.assert_allclose(got, p, atol=2e-5)
  pipe = transformers.pipeline("text-classification", model=model, tokenizer=tokenizer)
  assert [r["label"] for r in pipe(texts)] == [clf.names[int(i)] for i in probs.argmax(-1)]


def test_export_token_classification_tags_alike(tiny_cfg, tmp_path):
  data = write_tagged(tmp_path / "tagged", n_train=64, n_eval=16)
  cfg = replace(
      tiny_cfg, model=dict(num_labels=7),
      data=dict(dataset="tagged_files", train_file=str(data / "train.jsonl"), validation_file=str(data / "valid.conll"),
                max_seq_len=32, text_dir="", doc_split="file", max_predictions_per_seq=20),
      train=dict(objective="token_classification", steps=8, batch_size=16, learning_rate=3e-3, warmup_steps=2,
                 eval_every=4),
      checkpoint=dict(every=4, keep=2))
  work = tmp_path / "run"
  trainer.train(cfg, work)
  out = export.export(work, tmp_path / "hf", checkpoint="latest")
  model = transformers.AutoModelForTokenClassification.from_pretrained(str(out)).eval()
  assert type(model).__name__ == "BertForTokenClassification"
  tokenizer = transformers.AutoTokenizer.from_pretrained(str(out))
  tagger = predict.Tagger(work, "latest")
  texts = ["yesterday mary brown said that globex left cape town", "john smith visited rome today"]
  results, _ = tagger.tag(texts)
  for r in results:
    enc = tokenizer(r["words"], is_split_into_words=True, return_tensors="pt")
    with torch.no_grad():
      logits = model(**enc).logits[0].numpy()
    firsts = [enc.word_ids().index(j) for j in range(len(r["words"]))]
    assert [model.config.id2label[int(logits[i].argmax())] for i in firsts] == r["tags"]


def test_export_decoder_run_generates_alike(tmp_path, corpus_dir, cache_dir):
  cfg = Config(
      model=GptConfig.preset("tiny", vocab_size=256, hidden_size=32, mlp_dim=64, max_position_embeddings=64),
      data=DataConfig(dataset="text_dir", text_dir=str(corpus_dir), doc_split="blank_line", cache_dir=str(cache_dir),
                      max_seq_len=32, prefetch=0),
      train=TrainConfig(objective="causal_lm", steps=4, batch_size=8, learning_rate=3e-3, warmup_steps=1,
                        eval_every=4, eval_batches=1),
      checkpoint=CheckpointConfig(every=4, keep=1, async_save=False),
      logging=LoggingConfig(every=2, tensorboard=False, progress_bar=False))
  work = tmp_path / "gpt"
  trainer.train(cfg, work)
  assert export.main(["--workdir", str(work), "--out", str(tmp_path / "hf")]) == 0
  model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf")).eval()
  tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
  from lmjax import generate
  loaded = generate.load(work)
  gen = generate.Generator(loaded.cfg, loaded.params)
  prompt = "the king"
  ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
  prompt_ids = loaded.tokenizer.encode_prompts([prompt])[0]
  assert ids[0].tolist() == prompt_ids
  with torch.no_grad():
    hf_new = model.generate(ids, max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0)[0, len(prompt_ids):]
  mine = gen.generate([prompt_ids], generate.Sampling(max_new_tokens=8, temperature=0.0))
  assert hf_new.tolist() == mine.tokens[0]


def test_export_errors(tmp_path, classification_run):
  with pytest.raises(LmjaxError, match="no Hugging Face counterpart"):
    from lmjax.convert import bert
    bert.save_pretrained(tmp_path / "x", tiny_bert(), {}, kind="seq2seq")
  assert export.main(["--workdir", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
  (tmp_path / "busy").mkdir()
  (tmp_path / "busy" / "notes.txt").write_text("mine")
  with pytest.raises(LmjaxError, match="holds other files"):
    export.export(classification_run, tmp_path / "busy")


def tiny_bert():
  from conftest import TINY_BERT
  return TINY_BERT


