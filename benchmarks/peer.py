"""lmjax vs Hugging Face transformers (PyTorch), side by side on this machine.

  python benchmarks/peer.py --model bert-base --seq 128 --batch 8 --steps 5 --rounds 3
  python benchmarks/peer.py --model gpt2 --seq 512 --batch 2 --steps 5 --rounds 3

Each round runs one timing of each side, each in its own fresh Python
process started from this one (so neither inherits the other's threads or
caches), alternating lmjax / PyTorch so that load from elsewhere on a shared
machine hits both. Both sides time the same thing: a full training step
(forward, backward, gradient clipping, AdamW) of the same model size,
sequence length, batch and precision (float32) on random tokens
(`BertForPreTraining` with MLM + NSP, or `GPT2LMHeadModel` with the causal-LM
loss at every position; dropout 0.1 on both sides), the median
of --steps timed steps after 2 warm-up steps. Prints each round and a final
JSON line with the medians and the ratio lmjax / PyTorch (tokens/s).

Needs the `bench` extra: pip install -e ".[bench]" (torch + transformers).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# name -> (layers, hidden, heads, mlp, vocab, positions)
MODELS = {
    "bert-tiny": (2, 128, 2, 512, 30522, 512),
    "bert-mini": (4, 256, 4, 1024, 30522, 512),
    "bert-base": (12, 768, 12, 3072, 30522, 512),
    "gpt2-mini": (4, 256, 4, 1024, 50257, 1024),
    "gpt2": (12, 768, 12, 3072, 50257, 1024),  # GPT-2 small, 124M
}


def torch_side(model: str, seq: int, batch: int, steps: int, warmup: int, predictions: int) -> dict:
  try:
    import torch
    import transformers
  except ImportError:
    raise SystemExit("error: the PyTorch side needs torch and transformers: pip install -e \".[bench]\"") from None
  layers, hidden, heads, mlp, vocab, positions = MODELS[model]
  torch.manual_seed(0)
  if model.startswith("gpt2"):
    return _torch_gpt2(torch, transformers, model, seq, batch, steps, warmup)
  cfg = transformers.BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                                num_attention_heads=heads, intermediate_size=mlp, max_position_embeddings=positions,
                                hidden_act="gelu")
  net = transformers.BertForPreTraining(cfg)
  net.train()
  opt = torch.optim.AdamW(net.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01)
  ids = torch.randint(5, vocab, (batch, seq))
  types = (torch.arange(seq)[None, :] >= seq // 2).long().repeat(batch, 1)
  mask = torch.ones(batch, seq, dtype=torch.long)
  labels = torch.full((batch, seq), -100)
  for b in range(batch):  # the same number of predicted positions as lmjax's batch
    pos = torch.randperm(seq - 1)[:predictions] + 1
    labels[b, pos] = torch.randint(5, vocab, (predictions,))
  nsp = torch.randint(0, 2, (batch,))
  times = []
  for i in range(warmup + steps):
    t = time.perf_counter()
    out = net(input_ids=ids, token_type_ids=types, attention_mask=mask, labels=labels, next_sentence_label=nsp)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    if i >= warmup:
      times.append(time.perf_counter() - t)
  step = statistics.median(times)
  return {"side": "pytorch", "torch": torch.__version__, "transformers": transformers.__version__,
          "threads": torch.get_num_threads(), "step_time_s": step, "tokens_per_sec": batch * seq / step}


def _timed(torch, net, opt, loss_fn, steps, warmup):
  times = []
  for i in range(warmup + steps):
    t = time.perf_counter()
    loss_fn().backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    if i >= warmup:
      times.append(time.perf_counter() - t)
  return statistics.median(times)


def _torch_gpt2(torch, transformers, model, seq, batch, steps, warmup):
  layers, hidden, heads, mlp, vocab, positions = MODELS[model]
  cfg = transformers.GPT2Config(vocab_size=vocab, n_embd=hidden, n_layer=layers, n_head=heads, n_inner=mlp,
                                n_positions=positions)
  net = transformers.GPT2LMHeadModel(cfg)
  net.train()
  opt = torch.optim.AdamW(net.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01)
  ids = torch.randint(5, vocab, (batch, seq))
  step = _timed(torch, net, opt, lambda: net(input_ids=ids, labels=ids).loss, steps, warmup)
  return {"side": "pytorch", "torch": torch.__version__, "transformers": transformers.__version__,
          "threads": torch.get_num_threads(), "step_time_s": step, "tokens_per_sec": batch * seq / step}


def lmjax_side(model: str, seq: int, batch: int, steps: int, warmup: int, predictions: int) -> dict:
  from lmjax import bench
  from lmjax.config import Config, DataConfig, MeshConfig, TrainConfig
  from lmjax.models.bert import BertConfig

  layers, hidden, heads, mlp, vocab, positions = MODELS[model]
  if model.startswith("gpt2"):
    from lmjax.models.gpt import GptConfig
    cfg = Config(
        model=GptConfig.preset("gpt2", vocab_size=vocab, hidden_size=hidden, num_layers=layers, num_heads=heads,
                               mlp_dim=mlp, max_position_embeddings=positions),
        data=DataConfig(max_seq_len=seq),
        train=TrainConfig(objective="causal_lm", batch_size=batch, learning_rate=1e-4, eps=1e-6, weight_decay=0.01,
                          max_grad_norm=1.0),
        mesh=MeshConfig(data=-1))
    out = bench.run(cfg, steps=steps, warmup=warmup)
    return {"side": "lmjax", **{k: out[k] for k in ("step_time_s", "tokens_per_sec", "mfu", "compile_time_s")}}
  cfg = Config(
      model=BertConfig(vocab_size=vocab, hidden_size=hidden, num_layers=layers, num_heads=heads, mlp_dim=mlp,
                       max_position_embeddings=positions),
      data=DataConfig(max_seq_len=seq, max_predictions_per_seq=predictions),
      train=TrainConfig(objective="mlm_nsp", batch_size=batch, learning_rate=1e-4, eps=1e-6, weight_decay=0.01,
                        max_grad_norm=1.0),
      mesh=MeshConfig(data=-1))
  out = bench.run(cfg, steps=steps, warmup=warmup)
  return {"side": "lmjax", **{k: out[k] for k in ("step_time_s", "tokens_per_sec", "mfu", "compile_time_s")}}


def _child(side: str, args) -> dict:
  cmd = [sys.executable, __file__, "--side", side, "--model", args.model, "--seq", str(args.seq),
         "--batch", str(args.batch), "--steps", str(args.steps), "--predictions", str(args.predictions)]
  env = {**os.environ, "PYTHONPATH": str(REPO)}
  env.pop("XLA_FLAGS", None)  # one CPU device, as a user's run
  proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
  if proc.returncode:
    raise SystemExit(proc.stderr[-3000:])
  return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--model", default="bert-base", choices=sorted(MODELS))
  p.add_argument("--seq", type=int, default=128)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--predictions", type=int, default=20, help="masked positions per sequence")
  p.add_argument("--side", choices=["lmjax", "pytorch"], help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.side:
    if args.side == "lmjax":
      from lmjax import host  # the settings train.py and lmjax.bench apply (see lmjax/host.py)
      host.tune()
    fn = lmjax_side if args.side == "lmjax" else torch_side
    print(json.dumps(fn(args.model, args.seq, args.batch, args.steps, 2, args.predictions)))
    return 0
  results = {"lmjax": [], "pytorch": []}
  for r in range(args.rounds):
    for side in ("lmjax", "pytorch"):
      out = _child(side, args)
      results[side].append(out["tokens_per_sec"])
      print(f"round {r + 1}: {side:8s} {out['tokens_per_sec']:10,.0f} tokens/s  (step {out['step_time_s']:.3f} s)",
            flush=True)
  med = {k: statistics.median(v) for k, v in results.items()}
  print(json.dumps({"model": args.model, "seq": args.seq, "batch": args.batch, "dtype": "float32",
                    "lmjax_tokens_per_sec": med["lmjax"], "pytorch_tokens_per_sec": med["pytorch"],
                    "ratio": med["lmjax"] / med["pytorch"], "rounds": args.rounds}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
