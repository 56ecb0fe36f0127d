"""lmjax vs Hugging Face transformers (PyTorch), side by side on this machine.

  python benchmarks/peer.py --model bert-base --rounds 3     # MLM + NSP, seq 128, batch 8
  python benchmarks/peer.py --model gpt2 --rounds 3          # causal LM, seq 512, batch 2
  python benchmarks/peer.py --model minilm-cls --rounds 3    # MiniLM-shaped classifier, seq 64, batch 32
  python benchmarks/peer.py --model t5-small --rounds 3      # seq2seq, input 512, target 128, batch 4

Each round times each side once, each in its own fresh Python process started
from this one (neither inherits the other's threads or caches), alternating
lmjax / PyTorch so that load from elsewhere on a shared machine hits both.
Both sides time the same thing: a full training step (forward, backward,
global-norm clipping at 1.0, AdamW with lr 1e-4, betas (0.9, 0.999), eps 1e-6,
weight decay 0.01 on weight matrices and embeddings but not on biases, norm
scales and T5's relative position table, as both lmjax and Hugging Face's
Trainer do), same model shape, sequence length, batch and precision (float32)
on random tokens, dropout as the workload says (0.1 by default) on both
sides, the median of --steps timed steps after 2 warm-up steps.

A peer that cannot flatter: before any timing is believed, each side reports
the work it did (parameter count, tokens per step, dropout rates, clipping,
optimizer, loss, compute threads) and the comparison stops with exit status 2
when the two reports differ, unless --allow-different-work is given. The
machine (CPU model, cores usable, thread counts of both sides), library
versions, the PyTorch attention implementation and lmjax's attention kernel
are printed with the result.

Tokens per step: batch x sequence length (x (input + target) length for T5).
Prints each round, then one JSON line with the medians, the spread (min-max)
and the ratio lmjax / PyTorch of the medians.

Needs the `bench` extra: pip install -e ".[bench]" (torch + transformers).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# The optimizer and clipping both sides use.
LR, BETAS, EPS, WEIGHT_DECAY, CLIP = 1e-4, (0.9, 0.999), 1e-6, 0.01, 1.0


@dataclasses.dataclass(frozen=True)
class Workload:
  family: str  # bert, gpt2, t5
  objective: str  # mlm_nsp, causal_lm, classification, seq2seq
  layers: int
  hidden: int
  heads: int
  mlp: int
  vocab: int
  seq: int  # default sequence (T5: input) length
  batch: int  # default batch
  target: int = 0  # T5: default target length
  positions: int = 512
  labels: int = 2  # classification


MODELS = {
    "bert-tiny": Workload("bert", "mlm_nsp", 2, 128, 2, 512, 30522, 128, 8),
    "bert-mini": Workload("bert", "mlm_nsp", 4, 256, 4, 1024, 30522, 128, 8),
    "bert-base": Workload("bert", "mlm_nsp", 12, 768, 12, 3072, 30522, 128, 8),
    # all-MiniLM-L6-v2's shape, fine-tuned as the sentiment recipe does
    "minilm-cls": Workload("bert", "classification", 6, 384, 12, 1536, 30522, 64, 32),
    "bert-tiny-cls": Workload("bert", "classification", 2, 128, 2, 512, 30522, 64, 8),
    "gpt2-mini": Workload("gpt2", "causal_lm", 4, 256, 4, 1024, 50257, 512, 2, positions=1024),
    "gpt2": Workload("gpt2", "causal_lm", 12, 768, 12, 3072, 50257, 512, 2, positions=1024),  # GPT-2 small, 124M
    "t5-tiny": Workload("t5", "seq2seq", 2, 64, 4, 128, 256, 64, 4, target=16),  # lmjax's t5-tiny preset
    "t5-small": Workload("t5", "seq2seq", 6, 512, 8, 2048, 32128, 512, 4, target=128),
}


def machine() -> dict:
  model, flags = platform.processor() or "unknown", set()
  try:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        model = line.split(":", 1)[1].strip()
      elif line.startswith("flags"):
        flags = set(line.split(":", 1)[1].split())
        break
  except OSError:
    pass
  usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  vector = [f for f in ("avx512f", "avx512_bf16", "amx_tile", "avx2") if f in flags]
  return {"cpu": model, "vector": vector, "cores_online": os.cpu_count(), "cores_usable": usable,
          "python": platform.python_version()}


def _threads_named(prefix: str) -> int:
  """Threads of this process whose name starts with `prefix` (Linux)."""
  try:
    return sum(1 for t in Path("/proc/self/task").iterdir()
               if (t / "comm").read_text().strip().startswith(prefix))
  except OSError:
    return -1


def _tokens(w: Workload, seq: int, batch: int, target: int) -> int:
  return batch * (seq + target)


# ---------------------------------------------------------------- PyTorch side

def torch_side(w: Workload, seq: int, batch: int, target: int, steps: int, warmup: int, predictions: int,
               dropout: float) -> dict:
  try:
    import torch
    import transformers
  except ImportError:
    raise SystemExit("error: the PyTorch side needs torch and transformers: pip install -e \".[bench]\"") from None
  torch.manual_seed(0)
  net, batch_fn, loss_desc = _torch_model(torch, transformers, w, seq, batch, target, predictions, dropout)
  net.train()
  # Decay as lmjax.optim.decays: matrices and embeddings, not biases / norm scales / T5's relative table.
  decay = [p for n, p in net.named_parameters() if p.ndim >= 2 and "relative_attention_bias" not in n]
  rest = [p for n, p in net.named_parameters() if not (p.ndim >= 2 and "relative_attention_bias" not in n)]
  opt = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": rest, "weight_decay": 0.0}],
                          lr=LR, betas=BETAS, eps=EPS)
  inputs = batch_fn()
  times = []
  for i in range(warmup + steps):
    t = time.perf_counter()
    net(**inputs).loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), CLIP)
    opt.step()
    opt.zero_grad(set_to_none=True)
    if i >= warmup:
      times.append(time.perf_counter() - t)
  cfg = net.config
  drop = getattr(cfg, "dropout_rate", None)
  hidden_drop = drop if drop is not None else getattr(cfg, "hidden_dropout_prob", getattr(cfg, "resid_pdrop", None))
  attn_drop = drop if drop is not None else getattr(cfg, "attention_probs_dropout_prob", getattr(cfg, "attn_pdrop", None))
  step = statistics.median(times)
  work = {
      "params": sum(p.numel() for p in net.parameters()),  # tied weights once
      "tokens_per_step": _tokens(w, seq, batch, target), "dtype": str(next(net.parameters()).dtype).replace("torch.", ""),
      "dropout": round(float(hidden_drop), 6), "attention_dropout": round(float(attn_drop), 6),
      "clip_global_norm": CLIP, "optimizer": _opt_desc(opt.defaults["lr"], opt.defaults["betas"], opt.defaults["eps"],
                                                        WEIGHT_DECAY),
      "loss": loss_desc, "compute_threads": torch.get_num_threads(),
  }
  return {"side": "pytorch", "work": work, "step_time_s": step, "step_times_s": times,
          "tokens_per_sec": work["tokens_per_step"] / step,
          "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
          "attention": getattr(cfg, "_attn_implementation", "unknown"),
          "interop_threads": torch.get_num_interop_threads()}


def _torch_model(torch, transformers, w: Workload, seq, batch, target, predictions, dropout):
  v = w.vocab
  if w.family == "gpt2":
    cfg = transformers.GPT2Config(vocab_size=v, n_embd=w.hidden, n_layer=w.layers, n_head=w.heads, n_inner=w.mlp,
                                  n_positions=w.positions, resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout)
    ids = torch.randint(5, v, (batch, seq))
    return transformers.GPT2LMHeadModel(cfg), lambda: {"input_ids": ids, "labels": ids}, "causal_lm(every position)"
  if w.family == "t5":
    cfg = transformers.T5Config(vocab_size=v, d_model=w.hidden, d_kv=w.hidden // w.heads, d_ff=w.mlp, num_layers=w.layers,
                                num_decoder_layers=w.layers, num_heads=w.heads, dropout_rate=dropout,
                                feed_forward_proj="relu", tie_word_embeddings=True, decoder_start_token_id=0,
                                pad_token_id=0, eos_token_id=1)
    src = torch.randint(5, v, (batch, seq))
    tgt = torch.randint(5, v, (batch, target))
    return (transformers.T5ForConditionalGeneration(cfg),
            lambda: {"input_ids": src, "attention_mask": torch.ones_like(src), "labels": tgt},
            "seq2seq(every target position)")
  cfg = transformers.BertConfig(vocab_size=v, hidden_size=w.hidden, num_hidden_layers=w.layers,
                                num_attention_heads=w.heads, intermediate_size=w.mlp,
                                max_position_embeddings=w.positions, hidden_act="gelu", hidden_dropout_prob=dropout,
                                attention_probs_dropout_prob=dropout, num_labels=w.labels)
  ids = torch.randint(5, v, (batch, seq))
  types = (torch.arange(seq)[None, :] >= seq // 2).long().repeat(batch, 1)
  mask = torch.ones(batch, seq, dtype=torch.long)
  if w.objective == "classification":
    labels = torch.randint(0, w.labels, (batch,))
    return (transformers.BertForSequenceClassification(cfg),
            lambda: {"input_ids": ids, "attention_mask": mask, "labels": labels}, "classification")
  labels = torch.full((batch, seq), -100)
  for b in range(batch):  # the same number of predicted positions as lmjax's batch
    pos = torch.randperm(seq - 1)[:predictions] + 1
    labels[b, pos] = torch.randint(5, v, (predictions,))
  nsp = torch.randint(0, 2, (batch,))
  return (transformers.BertForPreTraining(cfg),
          lambda: {"input_ids": ids, "token_type_ids": types, "attention_mask": mask, "labels": labels,
                   "next_sentence_label": nsp},
          f"mlm({predictions} positions/row)+nsp")


def _opt_desc(lr, betas, eps, wd) -> str:
  return f"adamw(lr={lr:g}, b1={betas[0]:g}, b2={betas[1]:g}, eps={eps:g}, weight_decay={wd:g} on matrices)"


# ------------------------------------------------------------------ lmjax side

def lmjax_config(w: Workload, seq: int, batch: int, target: int, predictions: int, dropout: float):
  from lmjax.config import Config, DataConfig, MeshConfig, TrainConfig

  train = dict(batch_size=batch, learning_rate=LR, b1=BETAS[0], b2=BETAS[1], eps=EPS, weight_decay=WEIGHT_DECAY,
               max_grad_norm=CLIP, warmup_steps=0, steps=10_000)
  if w.family == "gpt2":
    from lmjax.models.gpt import GptConfig
    model = GptConfig.preset("gpt2", vocab_size=w.vocab, hidden_size=w.hidden, num_layers=w.layers,
                             num_heads=w.heads, mlp_dim=w.mlp, max_position_embeddings=w.positions,
                             dropout_rate=dropout, attention_dropout_rate=dropout)
    data = DataConfig(max_seq_len=seq)
  elif w.family == "t5":
    from lmjax.models.t5 import T5Config
    model = T5Config.preset("t5-small", vocab_size=w.vocab, hidden_size=w.hidden, num_layers=w.layers,
                            num_decoder_layers=w.layers, num_heads=w.heads, head_dim=w.hidden // w.heads,
                            mlp_dim=w.mlp, dropout_rate=dropout)
    data = DataConfig(max_seq_len=seq, max_target_len=target)
  else:
    from lmjax.models.bert import BertConfig
    model = BertConfig(vocab_size=w.vocab, hidden_size=w.hidden, num_layers=w.layers, num_heads=w.heads,
                       mlp_dim=w.mlp, max_position_embeddings=w.positions, num_labels=w.labels,
                       dropout_rate=dropout, attention_dropout_rate=dropout)
    data = DataConfig(max_seq_len=seq, max_predictions_per_seq=predictions)
  return Config(model=model, data=data, train=TrainConfig(objective=w.objective, **train), mesh=MeshConfig(data=-1))


def lmjax_side(w: Workload, seq: int, batch: int, target: int, steps: int, warmup: int, predictions: int,
               dropout: float) -> dict:
  import jax

  from lmjax import bench
  from lmjax import layers as L

  cfg = lmjax_config(w, seq, batch, target, predictions, dropout)
  out = bench.run(cfg, steps=steps, warmup=warmup)
  m, tc = cfg.model, cfg.train
  attn_drop = getattr(m, "attention_dropout_rate", m.dropout_rate)
  loss = {"gpt2": "causal_lm(every position)", "t5": "seq2seq(every target position)"}.get(w.family)
  loss = loss or ("classification" if w.objective == "classification" else f"mlm({predictions} positions/row)+nsp")
  work = {
      "params": out["params"], "tokens_per_step": _tokens(w, seq, batch, target), "dtype": m.dtype,
      "dropout": round(float(m.dropout_rate), 6), "attention_dropout": round(float(attn_drop), 6),
      "clip_global_norm": tc.max_grad_norm, "optimizer": _opt_desc(tc.learning_rate, (tc.b1, tc.b2), tc.eps,
                                                                    tc.weight_decay),
      "loss": loss,
      # XLA's CPU runtime computes on a pool of threads named tf_XLAEigen (one per usable core).
      "compute_threads": _threads_named("tf_XLAEigen") if out["platform"] == "cpu" else out["devices"],
  }
  step = out["step_time_s"]
  return {"side": "lmjax", "work": work, "step_time_s": step, "tokens_per_sec": work["tokens_per_step"] / step,
          "mfu": out["mfu"], "peak_flops": out["peak_flops"], "compile_time_s": out["compile_time_s"],
          "versions": {"jax": jax.__version__}, "attention": L.pick_attention(m.attention, m.dtype, attn_drop > 0),
          "cpu_tuning": out["cpu_tuning"]}


# -------------------------------------------------------------------- driver

def different_work(a: dict, b: dict) -> dict:
  """{field: (lmjax, pytorch)} where the two sides' work reports differ."""
  return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def _child(side: str, args) -> dict:
  cmd = [sys.executable, __file__, "--side", side, "--model", args.model, "--seq", str(args.seq),
         "--batch", str(args.batch), "--target", str(args.target), "--steps", str(args.steps),
         "--predictions", str(args.predictions), "--dropout", str(args.dropout)]
  env = {**os.environ, "PYTHONPATH": str(REPO)}
  env.pop("XLA_FLAGS", None)  # one CPU device, as a user's run
  proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
  if proc.returncode:
    raise SystemExit(proc.stderr[-3000:])
  return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--model", default="bert-base", choices=sorted(MODELS))
  p.add_argument("--seq", type=int, help="sequence (T5: input) length; default: the workload's")
  p.add_argument("--batch", type=int, help="default: the workload's")
  p.add_argument("--target", type=int, help="T5 target length; default: the workload's")
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--predictions", type=int, default=20, help="masked positions per sequence (MLM)")
  p.add_argument("--dropout", type=float, default=0.1, help="hidden and attention dropout, both sides")
  p.add_argument("--allow-different-work", action="store_true",
                 help="report a ratio even when the two sides' work reports differ")
  p.add_argument("--side", choices=["lmjax", "pytorch"], help=argparse.SUPPRESS)
  args = p.parse_args()
  w = MODELS[args.model]
  args.seq = args.seq or w.seq
  args.batch = args.batch or w.batch
  args.target = (args.target or w.target) if w.family == "t5" else 0
  if args.side:
    if args.side == "lmjax":
      from lmjax import host  # the settings train.py and lmjax.bench apply (see lmjax/host.py)
      host.tune()
    fn = lmjax_side if args.side == "lmjax" else torch_side
    print(json.dumps(fn(w, args.seq, args.batch, args.target, args.steps, 2, args.predictions, args.dropout)))
    return 0
  print(f"machine: {json.dumps(machine())}", flush=True)
  results = {"lmjax": [], "pytorch": []}
  last = {}
  for r in range(args.rounds):
    for side in ("lmjax", "pytorch"):
      out = last[side] = _child(side, args)
      results[side].append(out["tokens_per_sec"])
      extra = f"  MFU {out['mfu']:.2f}" if out.get("mfu") else ""
      print(f"round {r + 1}: {side:8s} {out['tokens_per_sec']:10,.1f} tokens/s  (step {out['step_time_s']:.3f} s)"
            f"{extra}", flush=True)
    if r == 0:
      for side in ("lmjax", "pytorch"):
        print(f"{side} work: {json.dumps(last[side]['work'])}; attention {last[side]['attention']}; "
              f"{json.dumps(last[side]['versions'])}", flush=True)
      diff = different_work(last["lmjax"]["work"], last["pytorch"]["work"])
      if diff:
        lines = "\n".join(f"  {k}: lmjax {a!r}, pytorch {b!r}" for k, (a, b) in diff.items())
        if not args.allow_different_work:
          print(f"error: the two sides did different work, so their speeds do not compare:\n{lines}\n"
                "Make them agree (e.g. the same thread count: OMP_NUM_THREADS / taskset for both), or pass "
                "--allow-different-work to print a ratio anyway.", file=sys.stderr)
          return 2
        print(f"warning: different work (--allow-different-work):\n{lines}", file=sys.stderr)
  med = {k: statistics.median(v) for k, v in results.items()}
  print(json.dumps({
      "model": args.model, "objective": w.objective, "seq": args.seq, "target": args.target or None,
      "batch": args.batch, "dtype": "float32", "dropout": args.dropout, "rounds": args.rounds,
      "lmjax_tokens_per_sec": med["lmjax"], "pytorch_tokens_per_sec": med["pytorch"],
      "lmjax_spread": [min(results["lmjax"]), max(results["lmjax"])],
      "pytorch_spread": [min(results["pytorch"]), max(results["pytorch"])],
      "ratio": med["lmjax"] / med["pytorch"], "lmjax_mfu": last["lmjax"].get("mfu"),
      "same_work": not different_work(last["lmjax"]["work"], last["pytorch"]["work"]),
      "machine": machine(), "torch_attention": last["pytorch"]["attention"],
      "lmjax_attention": last["lmjax"]["attention"], "work": last["lmjax"]["work"]}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
