"""T5 pretraining by span corruption: a small T5.1.1-style model (4 + 4 layers,
width 256, gated-GELU, untied output) on Shakespeare + Milton with its own
sentencepiece vocabulary, whose last ids are the sentinels. Rows of 128 input
tokens (15% of a 140-token stretch hidden in spans of mean length 3).
About 15 minutes on 2 CPU cores; the translation recipe fine-tunes it:

  python train.py --config configs/t5_span_shakespeare.py --workdir runs/t5_span
  python train.py --config configs/t5_translate_de.py --workdir runs/t5_translate_de

`--config configs/t5_span_shakespeare.py:smoke` trains a few steps (a wiring check).
"""

import dataclasses

from lmjax.config import CheckpointConfig, Config, DataConfig, LoggingConfig, TrainConfig
from lmjax.models.t5 import T5Config


def get_config(arg=None):
  cfg = Config(
      model=T5Config(vocab_size=8192, hidden_size=256, num_layers=4, num_decoder_layers=4, num_heads=4, head_dim=64,
                     mlp_dim=768, mlp="gated-gelu", tie_embeddings=False, dropout_rate=0.0),
      data=DataConfig(dataset="shakespeare_milton", max_seq_len=128),
      train=TrainConfig(objective="span_corruption", steps=600, batch_size=16, learning_rate=5e-4, warmup_steps=60,
                        schedule="cosine", weight_decay=0.01, eval_every=200, eval_batches=10),
      checkpoint=CheckpointConfig(every=200, keep=2),
      logging=LoggingConfig(every=20),
  )
  if arg == "smoke":
    cfg = dataclasses.replace(
        cfg, train=dataclasses.replace(cfg.train, steps=4, batch_size=4, warmup_steps=1, eval_every=2, eval_batches=1),
        checkpoint=dataclasses.replace(cfg.checkpoint, every=2), logging=dataclasses.replace(cfg.logging, every=1))
  elif arg is not None:
    raise ValueError(f"unknown argument {arg!r}; use 'smoke' or nothing")
  return cfg
