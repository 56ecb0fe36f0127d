"""BERT-tiny (2 layers, hidden 128) pretrained with masked LM + next-sentence
prediction on Shakespeare and Milton, with its own sentencepiece vocabulary.
The README's main job: about 15 minutes on a 2-core CPU, from a fresh clone.

  python train.py --config configs/bert_tiny_pretrain.py --workdir runs/bert_tiny

`:smoke` shrinks it to a few seconds of training for tests.
"""

import dataclasses

from lmjax.config import CheckpointConfig, Config, DataConfig, LoggingConfig, TrainConfig
from lmjax.models.bert import BertConfig


def get_config(arg=None):
  cfg = Config(
      model=BertConfig.preset("tiny", vocab_size=8000, max_position_embeddings=128),
      data=DataConfig(max_seq_len=128, max_predictions_per_seq=20),
      train=TrainConfig(objective="mlm_nsp", steps=1500, batch_size=32, learning_rate=1e-3,
                        warmup_steps=100, weight_decay=0.01, eval_every=500, eval_batches=20),
      checkpoint=CheckpointConfig(every=500, keep=2),
      logging=LoggingConfig(every=50),
  )
  if arg == "smoke":
    cfg = dataclasses.replace(
        cfg,
        model=dataclasses.replace(cfg.model, vocab_size=2000, max_position_embeddings=64),
        data=dataclasses.replace(cfg.data, max_seq_len=64, max_predictions_per_seq=10, tokenizer_sentences=20000),
        train=dataclasses.replace(cfg.train, steps=6, batch_size=16, warmup_steps=2, eval_every=3, eval_batches=2),
        checkpoint=dataclasses.replace(cfg.checkpoint, every=3),
        logging=dataclasses.replace(cfg.logging, every=1))
  elif arg is not None:
    raise ValueError(f"unknown argument {arg!r}; use 'smoke' or nothing")
  return cfg
