"""Two processes on localhost (jax.distributed + gloo), 2 CPU devices each,
train exactly as one process with 4 devices: each process feeds its own half
of every batch, and the checkpoint they write together resumes."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

from lmjax.data import bert_examples

from conftest import replace

REPO = Path(__file__).parent.parent


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _recipe(cfg, path: Path) -> str:
  path.write_text(
      "import json\nfrom lmjax.config import Config\n\n\n"
      f"def get_config(arg=None):\n  return Config.from_dict(json.loads({json.dumps(json.dumps(cfg.to_dict()))}))\n")
  return str(path)


def _env(devices: int) -> dict:
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["JAX_PLATFORMS"] = "cpu"
  return env


def _losses(workdir: Path) -> list[float]:
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  return [r["loss"] for r in map(json.loads, lines) if r["split"] == "train"]


def test_two_processes_equal_one(tiny_cfg, tmp_path):
  cfg = replace(tiny_cfg, train=dict(steps=4, eval_every=2), checkpoint=dict(every=2, async_save=False),
                logging=dict(tensorboard=False))
  # Prepare corpus and tokenizer once, as a shared cache would hold them.
  bert_examples.pretraining_examples(cfg, tmp_path / "prep")
  recipe = _recipe(cfg, tmp_path / "recipe.py")

  single = tmp_path / "single"
  one = subprocess.run([sys.executable, "train.py", "--config", recipe, "--workdir", str(single)],
                       cwd=REPO, env=_env(4), capture_output=True, text=True, timeout=300)
  assert one.returncode == 0, one.stderr[-3000:]

  multi = tmp_path / "multi"
  port = _free_port()
  procs = [subprocess.Popen(
      [sys.executable, "train.py", "--config", recipe, "--workdir", str(multi),
       "--set", "mesh.distributed=true", "--set", f"mesh.coordinator_address=127.0.0.1:{port}",
       "--set", "mesh.num_processes=2", "--set", f"mesh.process_id={i}"],
      cwd=REPO, env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
  outs = []
  try:
    for p in procs:
      outs.append(p.communicate(timeout=300))
  finally:
    for p in procs:
      p.kill()
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  np.testing.assert_allclose(_losses(multi), _losses(single), rtol=1e-5)
  assert sorted(d.name for d in (multi / "checkpoints").iterdir() if d.name.isdigit()) == ["2", "4"]
