#!/usr/bin/env python
"""Kill train.py with SIGKILL at random moments, restart it each time, and
check that nothing was lost: the run that was killed over and over ends with
the same parameters (bitwise), the same per-step losses and norms, and the
same evaluations as one uninterrupted run, and its metrics.jsonl holds every
step exactly once.

  python tools/kill_harness.py --config configs/bert_tiny_pretrain.py:smoke --kills 20 \\
      --set train.steps=60 --set checkpoint.every=3 [--seed 0] [--max-delay 1.5] [--root /tmp/kill_harness]

A kill lands a random time (0 to --max-delay seconds) after the run last
made progress (a new line in metrics.jsonl), so kills fall inside the
training loop: during steps, evaluations, metric writes and asynchronous
checkpoint writes alike, not only during start-up (checkpoints are written in
the background, `checkpoint.async_save=true`, unless a --set says otherwise:
the CPU backend's default is synchronous). Prints one JSON report:
kills survived, restarts, and what was compared. Exit code 0 when everything
matches, 1 otherwise. The default test run holds a short form of it
(tests/test_trainer.py).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Measured times differ from run to run; everything else in a record must not.
TIMING = ("tokens_per_sec", "steps_per_sec", "first_step_s", "compile_s")


def _lines(workdir: Path) -> int:
  try:
    return (workdir / "metrics.jsonl").read_bytes().count(b"\n")
  except FileNotFoundError:
    return 0


def train_cmd(config: str, workdir: Path, sets: list[str]) -> list[str]:
  cmd = [sys.executable, str(REPO / "train.py"), "--config", config, "--workdir", str(workdir)]
  for s in sets:
    cmd += ["--set", s]
  return cmd


def with_async_saves(sets: list[str]) -> list[str]:
  """Kills must also land inside background checkpoint writes: asynchronous saves unless set otherwise."""
  if any(s.split("=", 1)[0].strip() == "checkpoint.async_save" for s in sets):
    return list(sets)
  return ["checkpoint.async_save=true", *sets]


def run_straight(cmd: list[str], env: dict, timeout: float) -> None:
  done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
  if done.returncode != 0:
    raise RuntimeError(f"the uninterrupted run failed (exit {done.returncode}):\n{done.stderr[-3000:]}")


def run_with_kills(cmd: list[str], workdir: Path, env: dict, *, kills: int, seed: int, max_delay: float,
                   timeout: float) -> dict:
  """Starts `cmd` again and again, SIGKILLing it `kills` times; then lets it finish."""
  rng = random.Random(seed)
  survived, restarts, stderr_tail = 0, 0, ""
  deadline = time.time() + timeout
  while True:
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    restarts += 1
    if survived >= kills:
      _, err = proc.communicate(timeout=max(1.0, deadline - time.time()))
      if proc.returncode != 0:
        raise RuntimeError(f"the last restart failed (exit {proc.returncode}):\n{err[-3000:]}")
      break
    seen = _lines(workdir)
    while proc.poll() is None and _lines(workdir) <= seen and time.time() < deadline:
      time.sleep(0.02)
    if proc.poll() is not None:  # finished (or failed) before a kill landed
      err = proc.stderr.read()
      if proc.returncode != 0:
        raise RuntimeError(f"a restart failed (exit {proc.returncode}):\n{err[-3000:]}")
      break
    time.sleep(rng.uniform(0.0, max_delay))
    if proc.poll() is None:
      proc.send_signal(signal.SIGKILL)
      survived += 1
    proc.wait()
    stderr_tail = proc.stderr.read()[-2000:]
    if time.time() > deadline:
      raise RuntimeError(f"out of time after {survived} kills; last stderr:\n{stderr_tail}")
  return {"kills_survived": survived, "starts": restarts}


def compare(straight: Path, killed: Path) -> dict:
  """Raises AssertionError on the first difference; returns what was compared."""
  import numpy as np  # noqa: PLC0415

  from lmjax import runs  # noqa: PLC0415
  from lmjax.metrics import read_records  # noqa: PLC0415

  a = [{k: v for k, v in r.items() if k not in TIMING} for r in read_records(straight / "metrics.jsonl")]
  b = [{k: v for k, v in r.items() if k not in TIMING} for r in read_records(killed / "metrics.jsonl")]
  steps = [r["step"] for r in b if r["split"] == "train"]
  assert steps == sorted(set(steps)) and steps == [r["step"] for r in a if r["split"] == "train"], (
      f"train steps logged: {steps}")
  for ra, rb in zip(a, b, strict=True):
    assert ra == rb, f"records differ at step {ra.get('step')}:\n{ra}\n{rb}"
  pa = runs.open_run(straight, tokenizer=False)
  pb = runs.open_run(killed, tokenizer=False)
  assert pa.step == pb.step, (pa.step, pb.step)
  import jax  # noqa: PLC0415
  leaves_a = jax.tree_util.tree_leaves_with_path(pa.params)
  leaves_b = jax.tree_util.tree_leaves_with_path(pb.params)
  for (path, x), (_, y) in zip(leaves_a, leaves_b, strict=True):
    assert np.array_equal(np.asarray(x), np.asarray(y)), f"parameter {jax.tree_util.keystr(path)} differs"
  return {"records_compared": len(a), "train_steps": len(steps), "final_step": pb.step,
          "parameters_compared": len(leaves_a), "bitwise_equal": True}


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", default="configs/bert_tiny_pretrain.py:smoke")
  parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
  parser.add_argument("--kills", type=int, default=10)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--max-delay", type=float, default=1.5, help="seconds after the last progress")
  parser.add_argument("--root", default="/tmp/lmjax_kill_harness", help="holds the two workdirs (emptied first)")
  parser.add_argument("--timeout", type=float, default=3600)
  args = parser.parse_args()
  root = Path(args.root)
  shutil.rmtree(root, ignore_errors=True)
  env = dict(os.environ)
  sets = with_async_saves(args.sets)
  run_straight(train_cmd(args.config, root / "straight", sets), env, args.timeout)
  report = run_with_kills(train_cmd(args.config, root / "killed", sets), root / "killed", env,
                          kills=args.kills, seed=args.seed, max_delay=args.max_delay, timeout=args.timeout)
  try:
    report.update(compare(root / "straight", root / "killed"))
  except AssertionError as e:
    report.update({"bitwise_equal": False, "difference": str(e)[:2000]})
    print(json.dumps(report, indent=1))
    return 1
  print(json.dumps(report, indent=1))
  return 0


if __name__ == "__main__":
  sys.exit(main())
