"""Charts of one or more runs' metrics, as PNG files (matplotlib).

  python -m lmjax.plot runs/bert_zh_sentiment
  python -m lmjax.plot runs/a runs/b --out plots/   # several runs overlaid, one legend entry each

Writes into --out (default: WORKDIR/plots for a single run):

  * `train_loss.png`: the training loss over steps (and the held-out loss,
    dashed, where the run evaluates one);
  * `learning_rate.png`: the schedule as the optimizer applied it;
  * `eval_METRIC.png`: every numeric evaluation metric over steps
    (accuracy, f1, mlm_accuracy, perplexity, ...);
  * `confusion_RUN.png` for a classification run's final test report: the
    confusion matrix, counts in the cells.

Reads only WORKDIR/metrics.jsonl (a torn last line, as a killed run leaves
it, is skipped). Prints the files it wrote.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

from lmjax.errors import LmjaxError, cli

# Evaluation records' bookkeeping fields, not metrics.
_NOT_METRICS = {"step", "split", "checkpoint", "examples", "words", "entities", "compile_s", "first_step_s"}


def read_records(workdir: Path) -> list[dict]:
  path = Path(workdir) / "metrics.jsonl"
  if not Path(workdir).is_dir():
    raise LmjaxError(f"{workdir} is not a directory; give lmjax.plot run directories (train.py --workdir).")
  if not path.is_file():
    raise LmjaxError(f"{workdir} has no metrics.jsonl: not an lmjax run directory, or a run that has not logged a "
                     "step yet.")
  records = []
  lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
  for n, line in enumerate(lines, 1):
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError:
      if n != len(lines):  # only the last line may be torn
        raise LmjaxError(f"{path}:{n} is not a JSON record; the file is damaged.") from None
  if not records:
    raise LmjaxError(f"{path} is empty: the run has not logged a step yet.")
  return records


def _series(records, split: str, key: str) -> tuple[list[int], list[float]]:
  steps, values = [], []
  for r in records:
    v = r.get(key)
    if r.get("split") == split and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
      steps.append(r["step"])
      values.append(float(v))
  return steps, values


def _safe(name: str) -> str:
  return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "run"


def plot(workdirs: list[Path], out: Path) -> list[Path]:
  import matplotlib  # noqa: PLC0415
  matplotlib.use("Agg")  # files only; no display needed
  import matplotlib.pyplot as plt  # noqa: PLC0415

  runs = [(Path(w), read_records(Path(w))) for w in workdirs]
  names = [w.resolve().name for w, _ in runs]
  if len(set(names)) < len(names):  # same directory names in different places: show more of the path
    names = [str(w) for w, _ in runs]
  out.mkdir(parents=True, exist_ok=True)
  written = []

  def chart(filename, title, ylabel, lines):
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for label, (steps, values), style in lines:
      ax.plot(steps, values, style, label=label, marker="o" if len(steps) <= 20 else None, markersize=3)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if len(lines) > 1:
      ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / filename)
    plt.close(fig)
    written.append(out / filename)

  loss_lines = []
  for name, (_, records) in zip(names, runs):
    loss_lines.append((f"{name} train", _series(records, "train", "loss"), "-"))
    held = _series(records, "eval", "loss")
    if held[0]:
      loss_lines.append((f"{name} held-out", held, "--"))
  chart("train_loss.png", "loss", "loss", [line for line in loss_lines if line[1][0]])
  lr = [(name, _series(records, "train", "learning_rate"), "-") for name, (_, records) in zip(names, runs)]
  if any(s for _, (s, _), _ in lr):
    chart("learning_rate.png", "learning rate", "learning rate", [line for line in lr if line[1][0]])

  metrics = []
  for _, records in runs:
    for r in records:
      if r.get("split") == "eval":
        metrics.extend(k for k, v in r.items() if k not in _NOT_METRICS and k not in metrics
                       and isinstance(v, (int, float)) and not isinstance(v, bool) and not k.startswith("support/"))
  for key in metrics:
    lines = [(name, _series(records, "eval", key), "-") for name, (_, records) in zip(names, runs)]
    chart(f"eval_{_safe(key)}.png", f"{key} (evaluation)", key, [line for line in lines if line[1][0]])

  for name, (_, records) in zip(names, runs):
    test = [r for r in records if r.get("split") == "test" and "confusion" in r and "labels" in r]
    if test:
      written.append(_confusion(plt, test[-1], name, out / f"confusion_{_safe(name)}.png"))
  return written


def _confusion(plt, record: dict, name: str, path: Path) -> Path:
  import numpy as np  # noqa: PLC0415
  matrix = np.asarray(record["confusion"])
  labels = record["labels"]
  size = max(3.5, 0.6 * len(labels) + 2)
  fig, ax = plt.subplots(figsize=(size + 1, size), dpi=110)
  image = ax.imshow(matrix, cmap="Blues")
  fig.colorbar(image, ax=ax, fraction=0.046)
  ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
  ax.set_yticks(range(len(labels)), labels)
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  acc = record.get("accuracy")
  ax.set_title(f"{name}: test confusion matrix" + (f" (accuracy {acc:.3f})" if isinstance(acc, float) else ""),
               fontsize=9)
  threshold = matrix.max() / 2 if matrix.size else 0
  for i in range(matrix.shape[0]):
    for j in range(matrix.shape[1]):
      ax.text(j, i, str(matrix[i, j]), ha="center", va="center",
              color="white" if matrix[i, j] > threshold else "black", fontsize=8)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
  return path


@cli
def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("workdirs", nargs="+", help="run directories (train.py --workdir)")
  parser.add_argument("--out", help="directory for the PNG files (default: WORKDIR/plots for one run)")
  args = parser.parse_args(argv)
  if args.out is None and len(args.workdirs) > 1:
    raise LmjaxError("Several runs: say where the charts go with --out DIR.")
  out = Path(args.out) if args.out else Path(args.workdirs[0]) / "plots"
  for path in plot([Path(w) for w in args.workdirs], out):
    print(path)
  return 0


if __name__ == "__main__":
  sys.exit(main())
