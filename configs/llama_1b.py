"""A 1.1B-parameter Llama-architecture decoder (TinyLlama's shape: 22 layers,
hidden 2048, 32 query heads sharing 4 key/value heads, SwiGLU 5632, RoPE)
pretrained as a causal LM at 2,048 tokens, for GPUs / TPUs: bfloat16 compute,
parameters and optimizer state sharded over every device (FSDP), about 0.5M
tokens per step (256 x 2048), AdamW lr 4e-4 with betas (0.9, 0.95), cosine
to 4e-5.

  python train.py --config configs/llama_1b.py --workdir runs/llama_1b --set data.text_dir=/data/corpus

It is also the 1B row of the throughput benchmark:

  python -m lmjax.bench --config configs/llama_1b.py --set train.batch_size=8 --steps 10

`:smoke` keeps the Llama architecture, shrunk to run on a CPU in seconds on
the registry-shipped Shakespeare corpus.
"""

import dataclasses

from lmjax.config import CheckpointConfig, Config, DataConfig, LoggingConfig, MeshConfig, TrainConfig
from lmjax.models.gpt import GptConfig


def get_config(arg=None):
  cfg = Config(
      model=GptConfig.preset("llama-1b", dtype="bfloat16"),
      data=DataConfig(dataset="text_dir", text_dir="data/corpus", doc_split="file", max_seq_len=2048,
                      tokenizer_sentences=2_000_000),
      train=TrainConfig(objective="causal_lm", steps=100_000, batch_size=256, learning_rate=4e-4, warmup_steps=2000,
                        schedule="cosine", end_learning_rate=4e-5, weight_decay=0.1, b2=0.95, eps=1e-8,
                        eval_every=2000, eval_batches=20),
      mesh=MeshConfig(data=1, fsdp=-1, rules="fsdp"),
      checkpoint=CheckpointConfig(every=1000, keep=3),
      logging=LoggingConfig(every=10),
  )
  if arg == "smoke":
    cfg = dataclasses.replace(
        cfg,
        model=GptConfig.preset("llama-tiny", vocab_size=2000, hidden_size=64, max_position_embeddings=64),
        data=DataConfig(max_seq_len=64, tokenizer_sentences=20000),
        train=dataclasses.replace(cfg.train, steps=4, batch_size=8, warmup_steps=1, eval_every=2, eval_batches=1),
        mesh=MeshConfig(data=-1),
        checkpoint=dataclasses.replace(cfg.checkpoint, every=2),
        logging=dataclasses.replace(cfg.logging, every=1))
  elif arg is not None:
    raise ValueError(f"unknown argument {arg!r}; use 'smoke' or nothing")
  return cfg
