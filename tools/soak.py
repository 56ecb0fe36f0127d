#!/usr/bin/env python
"""Soak: train a tiny model for thousands of steps with frequent checkpoints and
evaluations, sample the training process's resident memory (RSS) as it goes,
and report whether it stays flat.

  python tools/soak.py [--steps 3000] [--set checkpoint.every=20 ...] [--workdir /tmp/lmjax_soak]

Runs `train.py --config configs/bert_tiny_pretrain.py:smoke` (the real
Shakespeare corpus, a 0.7M-parameter BERT) with checkpoints every 20 steps and
an evaluation every 50 by default, reads /proc/PID/status (VmRSS) every
second, and prints one JSON report: RSS after warm-up (10% of the steps), at
the half and at 95% (the last samples see the shutdown), and the growth from
the half to 95% in MiB per 1,000 steps (least squares). A flat run grows by well under a MiB per 1,000 steps; a leak (records,
checkpoint managers, compiled programs kept per step) shows up as a steady
slope. Not part of the test run (it takes minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def rss_mib(pid: int) -> float | None:
  try:
    with open(f"/proc/{pid}/status") as f:
      for line in f:
        if line.startswith("VmRSS:"):
          return int(line.split()[1]) / 1024
  except OSError:
    return None
  return None


def steps_done(workdir: Path) -> int:
  try:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
  except FileNotFoundError:
    return 0
  for line in reversed(lines):
    try:
      record = json.loads(line)
    except ValueError:
      continue
    if record.get("split") == "train":
      return int(record["step"])
  return 0


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", default="configs/bert_tiny_pretrain.py:smoke")
  parser.add_argument("--steps", type=int, default=3000)
  parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
  parser.add_argument("--workdir", default="/tmp/lmjax_soak", help="emptied first")
  args = parser.parse_args()
  workdir = Path(args.workdir)
  shutil.rmtree(workdir, ignore_errors=True)
  sets = [f"train.steps={args.steps}", "checkpoint.every=20", "checkpoint.keep=2", "train.eval_every=50",
          "train.eval_batches=2", "logging.every=10", "logging.tensorboard=true", *args.sets]
  cmd = [sys.executable, str(REPO / "train.py"), "--config", args.config, "--workdir", str(workdir)]
  for s in sets:
    cmd += ["--set", s]
  began = time.time()
  proc = subprocess.Popen(cmd, cwd=REPO, env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)
  samples = []  # (seconds, step, RSS MiB)
  while proc.poll() is None:
    rss = rss_mib(proc.pid)
    if rss is not None:
      samples.append((round(time.time() - began, 1), steps_done(workdir), round(rss, 1)))
    time.sleep(1.0)
  err = proc.stderr.read()
  if proc.returncode != 0:
    print(err[-3000:], file=sys.stderr)
    return proc.returncode

  def at(fraction: float):
    target = fraction * args.steps
    return min(samples, key=lambda s: abs(s[1] - target))
  # "end" = 95% of the steps: the last samples see the final evaluation and the shutdown, not the loop
  warm, half, end = at(0.1), at(0.5), at(0.95)
  second_half = [s for s in samples if 0.5 * args.steps <= s[1] <= 0.95 * args.steps]
  slope = None
  if len(second_half) >= 2 and second_half[-1][1] > second_half[0][1]:
    xs = [s[1] for s in second_half]
    ys = [s[2] for s in second_half]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / max(1e-9, sum((x - mx) ** 2 for x in xs)) * 1000
  report = {"steps": args.steps, "settings": sets, "wall_s": round(time.time() - began, 1), "samples": len(samples),
            "rss_mib_after_warmup": warm[2], "rss_mib_at_half": half[2], "rss_mib_at_95_percent": end[2],
            "rss_mib_peak": max(s[2] for s in samples),
            "growth_mib_per_1000_steps_second_half": None if slope is None else round(slope, 2),
            "checkpoints_kept": sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())}
  print(json.dumps(report, indent=1))
  return 0


if __name__ == "__main__":
  sys.exit(main())
