"""Sentiment analysis with lmjax's own BERT-tiny: the checkpoint written by
configs/bert_tiny_pretrain.py (the README's main job) fine-tuned on English
sentence polarity (fixed stratified 80/10/10 split). A few minutes on a
2-core CPU once the pretraining run exists:

  python train.py --config configs/bert_tiny_pretrain.py --workdir runs/bert_tiny
  python train.py --config configs/bert_tiny_sentiment.py --workdir runs/bert_tiny_sentiment

Another pretraining run: --set train.init_from=PATH (a run directory or one of
its checkpoints/STEP). `:smoke` trains a few steps (a wiring check).
"""

import dataclasses

from lmjax.config import CheckpointConfig, Config, DataConfig, LoggingConfig, TrainConfig
from lmjax.models.bert import BertConfig


def get_config(arg=None):
  cfg = Config(
      # Sizes, vocabulary and tokenizer come from the pretraining run.
      model=BertConfig(num_labels=2, dropout_rate=0.1, attention_dropout_rate=0.1),
      # The Shakespeare tokenizer cuts modern English finer than WordPiece:
      # 96 tokens hold all but one training snippet (64 would cut 5%).
      data=DataConfig(dataset="sentence_polarity", max_seq_len=96),
      # 264 steps per epoch at batch 32: four epochs. A small model takes a
      # larger learning rate than BERT-base's 2e-5..5e-5.
      train=TrainConfig(objective="classification", init_from="runs/bert_tiny", steps=1056, batch_size=32,
                        learning_rate=5e-4, warmup_steps=100, weight_decay=0.01, eval_every=264),
      checkpoint=CheckpointConfig(every=264, keep=1, best_metric="accuracy"),
      logging=LoggingConfig(every=44),
  )
  if arg == "smoke":
    cfg = dataclasses.replace(
        cfg, train=dataclasses.replace(cfg.train, steps=4, batch_size=16, warmup_steps=1, eval_every=2),
        checkpoint=dataclasses.replace(cfg.checkpoint, every=2), logging=dataclasses.replace(cfg.logging, every=1))
  elif arg is not None:
    raise ValueError(f"unknown argument {arg!r}; use 'smoke' or nothing")
  return cfg
