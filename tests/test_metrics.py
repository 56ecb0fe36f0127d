"""lmjax.metrics: the metrics file and TensorBoard events of a run."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

_WRITE = """
import json, sys
from pathlib import Path
from lmjax import metrics
w = metrics.MetricsWriter(Path(sys.argv[1]), total_steps=2, start_step=0, tensorboard=True, progress_bar=False)
w.write(1, {"loss": 0.5})
w.close()
events = list((Path(sys.argv[1]) / "tensorboard").glob("events.out.tfevents.*"))
torch_loaded = "torch" in sys.modules
import torch  # still importable afterwards
print(json.dumps({"torch_loaded": torch_loaded, "events": len(events), "tag": b"train/loss" in events[0].read_bytes()}))
"""


def test_tensorboard_events_are_written_without_importing_torch(tmp_path):
  """tensorboardX imports torch when it is installed; a training run keeps ~180 MB
  of torch out of its memory by hiding it during that import."""
  out = subprocess.run([sys.executable, "-c", _WRITE, str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                       timeout=300, check=True)
  result = json.loads(out.stdout.strip().splitlines()[-1])
  assert result["torch_loaded"] is False
  assert result["events"] == 1 and result["tag"]
  assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])["loss"] == 0.5
