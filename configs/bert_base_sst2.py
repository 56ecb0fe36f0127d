"""BERT-base (uncased, Hugging Face weights) fine-tuned on GLUE SST-2 from the
tfds catalog, with the paper's recipe (Devlin et al. 2019: batch 32, Adam
2e-5, 3 epochs, 10% warmup, sequence 128). For real hardware (a GPU or TPU
VM with internet access for tfds and the weights):

  huggingface-cli download bert-base-uncased config.json model.safetensors vocab.txt tokenizer.json \
      tokenizer_config.json --local-dir models/bert-base-uncased
  python train.py --config configs/bert_base_sst2.py --workdir runs/bert_base_sst2

GLUE's test labels are hidden, so the final report is on the validation
(dev) split, which also picks the best checkpoint: the figure is a dev-set
accuracy, as GLUE papers report alongside the server's test score.
`:smoke` trains 2 steps at batch 8 (a shape check).
"""

import dataclasses

from lmjax.config import CheckpointConfig, Config, DataConfig, LoggingConfig, TrainConfig
from lmjax.models.bert import BertConfig


def get_config(arg=None):
  cfg = Config(
      model=BertConfig(num_labels=2),
      data=DataConfig(dataset="glue/sst2", text_column="sentence", label_column="label", max_seq_len=128,
                      eval_split="validation", test_split="validation"),
      # 67,349 sentences / 32 = 2,105 steps per epoch.
      train=TrainConfig(objective="classification", init_from="models/bert-base-uncased", steps=6315,
                        batch_size=32, learning_rate=2e-5, warmup_steps=632, weight_decay=0.01, eval_every=1000),
      checkpoint=CheckpointConfig(every=1000, keep=2, best_metric="accuracy"),
      logging=LoggingConfig(every=50),
  )
  if arg == "smoke":
    cfg = dataclasses.replace(
        cfg, train=dataclasses.replace(cfg.train, steps=2, batch_size=8, warmup_steps=1, eval_every=0),
        logging=dataclasses.replace(cfg.logging, every=1))
  elif arg is not None:
    raise ValueError(f"unknown argument {arg!r}; use 'smoke' or nothing")
  return cfg
