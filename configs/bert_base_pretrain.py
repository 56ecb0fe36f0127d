"""BERT-base pretraining with the original hyper-parameters (Devlin et al. 2019):
12 layers, hidden 768, 12 heads, 30,522-piece vocabulary, sequence 128 with up
to 20 predictions (the paper's first 90% of steps), batch 256, Adam 1e-4 with
beta2 0.999 and epsilon 1e-6, weight decay 0.01, 10k warmup steps then linear
decay over 1M steps, dropout 0.1. Meant for a TPU slice or GPUs:

  python train.py --config configs/bert_base_pretrain.py --workdir gs://BUCKET/bert_base \
      --set data.dataset=text_dir --set data.text_dir=/data/wiki_books --set data.doc_split=blank_line

`:smoke` keeps the base shape but trains 2 steps at batch 8 (a shape check).
"""

import dataclasses

from lmjax.config import CheckpointConfig, Config, DataConfig, LoggingConfig, MeshConfig, TrainConfig
from lmjax.models.bert import BertConfig


def get_config(arg=None):
  cfg = Config(
      model=BertConfig.preset("base", vocab_size=30522, dtype="bfloat16"),
      data=DataConfig(max_seq_len=128, max_predictions_per_seq=20, tokenizer_sentences=2_000_000),
      train=TrainConfig(objective="mlm_nsp", steps=1_000_000, batch_size=256, learning_rate=1e-4,
                        warmup_steps=10_000, schedule="linear", weight_decay=0.01, b1=0.9, b2=0.999,
                        eps=1e-6, max_grad_norm=1.0, eval_every=10_000, eval_batches=50),
      mesh=MeshConfig(data=-1, fsdp=1, tensor=1, rules="fsdp_tp"),
      checkpoint=CheckpointConfig(every=10_000, keep=3),
      logging=LoggingConfig(every=100),
  )
  if arg == "smoke":
    cfg = dataclasses.replace(
        cfg, model=dataclasses.replace(cfg.model, dtype="float32"),
        train=dataclasses.replace(cfg.train, steps=2, batch_size=8, warmup_steps=1, eval_every=0, eval_batches=1),
        data=dataclasses.replace(cfg.data, tokenizer_sentences=20000))
  elif arg is not None:
    raise ValueError(f"unknown argument {arg!r}; use 'smoke' or nothing")
  return cfg
