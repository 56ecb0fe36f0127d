"""benchmarks/peer.py: both sides do the same work, and a difference stops the comparison."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from lmjax import models, tasks

REPO = Path(__file__).resolve().parent.parent


def _peer():
  spec = importlib.util.spec_from_file_location("peer", REPO / "benchmarks" / "peer.py")
  mod = importlib.util.module_from_spec(spec)
  sys.modules["peer"] = mod  # dataclasses look their module up
  spec.loader.exec_module(mod)
  return mod


peer = _peer()


@pytest.mark.parametrize("name", ["bert-tiny", "bert-tiny-cls", "gpt2-mini", "t5-tiny"])
def test_both_sides_build_the_same_model(name):
  torch = pytest.importorskip("torch")
  import transformers

  w = peer.MODELS[name]
  net, batch_fn, loss = peer._torch_model(torch, transformers, w, w.seq, w.batch, w.target, 20, 0.1)
  cfg = peer.lmjax_config(w, w.seq, w.batch, w.target, 20, 0.1)
  model_cls = models.model_class(cfg.model, tasks.get(cfg.train.objective).model)
  abstract = nnx.eval_shape(lambda: model_cls(cfg.model, rngs=nnx.Rngs(0)))
  n_lmjax = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
  assert n_lmjax == sum(p.numel() for p in net.parameters())
  drop = getattr(net.config, "dropout_rate", None) or getattr(net.config, "hidden_dropout_prob", None) or \
      net.config.resid_pdrop
  assert drop == cfg.model.dropout_rate == 0.1
  assert net(**batch_fn()).loss.ndim == 0


def test_different_work_lists_each_field():
  assert peer.different_work({"a": 1, "b": 2}, {"a": 1, "b": 3, "c": 4}) == {"b": (2, 3), "c": (None, 4)}
  assert peer.different_work({"a": 1}, {"a": 1}) == {}


def test_refuses_to_compare_different_thread_counts():
  pytest.importorskip("torch")
  # PyTorch limited to one thread while XLA computes on both cores: not the same work.
  env = {**os.environ, "OMP_NUM_THREADS": "1"}
  if (os.cpu_count() or 1) < 2:
    pytest.skip("needs two cores, so that the thread counts can differ")
  proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "peer.py"), "--model", "bert-tiny", "--seq", "32",
                         "--batch", "2", "--steps", "1", "--rounds", "1"], capture_output=True, text=True, env=env,
                        timeout=600)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "compute_threads: lmjax 2, pytorch 1" in proc.stderr
  assert "ratio" not in proc.stdout
