"""python -m lmjax.plot: PNG charts of runs' metrics, overlaid, and a confusion matrix."""

import json
import shutil
import struct

import pytest

from lmjax import plot
from lmjax.errors import LmjaxError


def _png_size(path):
  data = path.read_bytes()
  assert data[:8] == b"\x89PNG\r\n\x1a\n", path
  return struct.unpack(">II", data[16:24])


def _classification_run(root):
  """A metrics.jsonl as a classification run writes it, killed while writing its last line."""
  root.mkdir()
  records = [{"step": s, "split": "train", "loss": 1.0 / s, "learning_rate": 1e-3 * min(s, 10) / 10}
             for s in range(1, 41)]
  records += [{"step": s, "split": "eval", "accuracy": 0.5 + s / 100, "f1": 0.4 + s / 100, "loss": 0.7 - s / 100,
               "support/neg": 10, "confusion": [[8, 2], [3, 7]], "labels": ["neg", "pos"], "examples": 20}
              for s in (20, 40)]
  records.append({"step": 40, "split": "test", "checkpoint": "best", "accuracy": 0.75, "confusion": [[8, 2], [3, 7]],
                  "labels": ["neg", "pos"]})
  text = "\n".join(json.dumps(r) for r in records) + '\n{"step": 41, "split": "tr'
  (root / "metrics.jsonl").write_text(text)
  return root


@pytest.mark.xdist_group("tiny_pretraining_run")
def test_plot_overlays_runs_and_draws_the_confusion_matrix(tiny_pretraining_run, tmp_path, capsys):
  pre = tmp_path / "pre"
  shutil.copytree(tiny_pretraining_run, pre)
  cls = _classification_run(tmp_path / "cls")
  assert plot.main([str(pre), str(cls), "--out", str(tmp_path / "charts")]) == 0
  written = {p.split("/")[-1] for p in capsys.readouterr().out.split()}
  assert {"train_loss.png", "learning_rate.png", "eval_accuracy.png", "eval_f1.png", "eval_loss.png",
          "eval_mlm_accuracy.png", "eval_nsp_accuracy.png", "confusion_cls.png"} <= written, written
  assert not any("support" in w or "confusion" in w and w != "confusion_cls.png" for w in written)
  for name in written:
    width, height = _png_size(tmp_path / "charts" / name)
    assert width > 300 and height > 300
  # one run: the charts go into WORKDIR/plots
  assert plot.main([str(cls)]) == 0
  assert (cls / "plots" / "confusion_cls.png").exists()


def test_plot_errors(tmp_path, capsys):
  def error(*argv):
    assert plot.main([str(a) for a in argv]) == 2
    return capsys.readouterr().err

  assert "has no metrics.jsonl" in error(tmp_path)
  assert "not a directory" in error(tmp_path / "nope")
  assert "--out" in error(tmp_path, tmp_path)
  (tmp_path / "metrics.jsonl").write_text('{"step": 1, "spl\n{"step": 2}\n')
  assert "metrics.jsonl:1 is not a JSON record" in error(tmp_path)
  with pytest.raises(LmjaxError, match="is empty"):
    (tmp_path / "metrics.jsonl").write_text("")
    plot.plot([tmp_path], tmp_path / "out")
