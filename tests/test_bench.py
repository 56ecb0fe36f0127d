"""The throughput benchmark: its fields, its FLOP count against XLA's, and its peak lookup."""

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from lmjax import bench
from lmjax.models.family import Workload
from lmjax.models.bert import BertConfig

from conftest import replace

REPO = Path(__file__).parent.parent


def test_bench_reports_every_field(tiny_cfg):
  out = bench.run(tiny_cfg, steps=1, warmup=0)
  for key in ("tokens_per_sec", "step_time_s", "compile_time_s", "model_flops_per_token", "xla_flops_per_token",
              "tflops_per_sec", "mfu", "peak_flops", "peak_source", "peak_memory_bytes"):
    assert key in out, key
  assert out["tokens_per_sec"] == pytest.approx(16 * 32 / out["step_time_s"])
  assert 0 < out["mfu"] < 1 and out["peak_source"].startswith("measured")
  assert out["peak_memory_bytes"] > 0
  ev = bench.run(tiny_cfg, steps=1, warmup=0, mode="eval")
  assert ev["model_flops_per_token"] == pytest.approx(out["model_flops_per_token"] / 3)


def test_model_flops_match_xla_cost_analysis(tiny_cfg):
  """The first-principles count agrees with XLA's count of the compiled step
  when matmuls dominate (XLA also counts softmax, GELU, norms and AdamW)."""
  # FSDP over all 8 devices: under data parallelism each device would repeat
  # the whole AdamW update, which XLA counts 8 times (+5% here).
  cfg = replace(tiny_cfg, model=dict(vocab_size=4096, hidden_size=256, num_layers=2, num_heads=4, mlp_dim=1024,
                                     max_position_embeddings=128, dropout_rate=0.0, attention_dropout_rate=0.0),
                data=dict(max_seq_len=128, max_predictions_per_seq=20), train=dict(batch_size=8),
                mesh=dict(data=1, fsdp=8, tensor=1, rules="fsdp"))
  out = bench.run(cfg, steps=1, warmup=0)
  ratio = out["xla_flops_per_token"] / out["model_flops_per_token"]
  # Measured 1.03 on one device: the rest is softmax, GELU, norms and AdamW.
  assert 0.98 < ratio < 1.07, (ratio, out)


def test_flop_terms_matter():
  """Dropping any term of the count changes it by more than the XLA tolerance above."""
  c = BertConfig(vocab_size=4096, hidden_size=256, num_layers=2, num_heads=4, mlp_dim=1024)
  full = c.flops_per_token(Workload(128, predictions_per_seq=20))
  d, f, t = 256, 1024, 128
  for term in (2 * 4 * d * d, 2 * 2 * d * f, 2 * 2 * t * d):  # projections, MLP, attention
    assert 3 * 2 * term / full > 0.03
  assert 3 * (20 / t) * 2 * d * 4096 / full > 0.03  # vocabulary projection at the predicted positions


def test_peak_lookup():
  gpu = types.SimpleNamespace(platform="gpu", device_kind="NVIDIA H200")
  assert bench.device_peak(gpu, "bfloat16") == (989e12, "table: NVIDIA H200 bfloat16 dense")
  odd = types.SimpleNamespace(platform="gpu", device_kind="Imaginary X1")
  peak, source = bench.device_peak(odd, "bfloat16")
  assert peak is None and "unknown device kind 'Imaginary X1'" in source


def test_bench_cli_and_bad_input(tmp_path):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  cmd = [sys.executable, "-m", "lmjax.bench", "--config", "configs/bert_tiny_pretrain.py:smoke", "--steps", "2",
         "--warmup", "1"]
  ok = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert ok.returncode == 0, ok.stderr[-3000:]
  result = json.loads(ok.stdout)
  assert result["tokens_per_sec"] > 0 and result["seq_len"] == 64 and result["mfu"] > 0
  bad = subprocess.run(cmd + ["--set", "data.max_seq_len=4096"], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=600)
  assert bad.returncode == 2 and "larger than the model's position table" in bad.stderr
  assert "Traceback" not in bad.stderr


def test_decoder_flops_match_xla_and_generate_mode(tmp_path):
  """Causal LM: XLA computes the whole T x T score matrix and masks half of it,
  so its count matches the first-principles count plus the masked half."""
  from lmjax.config import Config, DataConfig, MeshConfig, TrainConfig
  from lmjax.models.gpt import GptConfig
  model = GptConfig.preset("llama-tiny", vocab_size=4096, hidden_size=256, num_heads=4, num_kv_heads=2, mlp_dim=704,
                           max_position_embeddings=128)
  cfg = Config(model=model, data=DataConfig(max_seq_len=128), train=TrainConfig(objective="causal_lm", batch_size=8),
               mesh=MeshConfig(data=1, fsdp=8, rules="fsdp"))
  out = bench.run(cfg, steps=1, warmup=0)
  masked_half = 3 * model.num_layers * 2 * 128 * 256  # scores + values over the other T/2 keys, x3
  ratio = out["xla_flops_per_token"] / (out["model_flops_per_token"] + masked_half)
  assert 0.98 < ratio < 1.07, (ratio, out)
  assert out["xla_flops_per_token"] > out["model_flops_per_token"]

  gen = bench.run_generate(replace(cfg, train=dict(batch_size=2)), prompt_len=8, new_tokens=8)
  assert gen["cache_tokens_per_sec"] > 0 and gen["no_cache_tokens_per_sec"] > 0
  assert gen["cache_speedup"] == pytest.approx(gen["cache_tokens_per_sec"] / gen["no_cache_tokens_per_sec"])
  with pytest.raises(bench.LmjaxError, match="fit the context window"):
    bench.run_generate(cfg, prompt_len=100, new_tokens=100)


def test_data_only_times_the_example_stream(tiny_cfg):
  from lmjax import bench
  out = bench.run_data(tiny_cfg, batches=3, warmup=1)
  assert out["mode"] == "data" and out["examples"] == 3 * tiny_cfg.train.batch_size
  assert out["examples_per_sec"] > 0 and 0 < out["tokens_per_sec"] <= out["padded_tokens_per_sec"]
  assert out["processes"] == 1 and out["workers"] == 1 and out["cpu_seconds"] >= 0


def test_compile_only_reports_the_steps_memory_without_allocating_it(tiny_cfg):
  """--compile-only: XLA's memory analysis of the train step from abstract shapes, the same
  figures the trainer's start-up summary prints."""
  from lmjax import bench
  out = bench.run_compile(tiny_cfg)
  assert out["mode"] == "compile" and out["params"] > 0 and out["compile_time_s"] > 0
  assert out["parameter_bytes"] == 4 * out["params"] and out["optimizer_state_bytes"] >= 2 * out["parameter_bytes"]
  assert out["compiled_memory_bytes"] >= out["parameter_bytes"] + out["optimizer_state_bytes"]
