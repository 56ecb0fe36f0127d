"""Metric records: stdout (a progress bar on a terminal, plain lines otherwise),
WORKDIR/metrics.jsonl (one JSON object per line) and TensorBoard event files."""

from __future__ import annotations

import json
import math
import sys
import warnings
from pathlib import Path

_SHOWN = ("loss", "mlm_loss", "nsp_loss", "mlm_accuracy", "nsp_accuracy", "accuracy", "perplexity", "f1", "exact_match",
          "wer", "per", "bleu", "chrf", "learning_rate", "tokens_per_sec")


def log(msg: str) -> None:
  """A one-line message to stderr (progress of a command, not a metric)."""
  print(f"lmjax: {msg}", file=sys.stderr, flush=True)


def _fmt(k: str, v) -> str:
  if k == "learning_rate":
    return f"{k}={v:.2e}"
  if k == "tokens_per_sec":
    return f"tok/s={v:,.0f}"
  return f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"


def _eta(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  m, s = divmod(int(seconds), 60)
  h, m = divmod(m, 60)
  return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def read_records(path: Path) -> list[dict]:
  """The records of a metrics.jsonl; a line that is not one JSON object (a
  record torn by a killed process) is dropped with a warning naming it."""
  records = []
  lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
  for n, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
      if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    except ValueError as e:
      where = "its last line" if n == len(lines) else f"line {n}"
      warnings.warn(f"{path}: dropped {where}, which is not a whole record ({e}; a process killed while "
                    f"writing leaves one): {line[:80]!r}", stacklevel=2)
      continue
    records.append(record)
  return records


def _summary_writer_class():
  """tensorboardX's SummaryWriter, imported without torch. tensorboardX imports
  torch when it is installed (only to accept torch tensors as values), which
  put ~180 MB of torch into the resident memory of every training run on a
  machine with torch installed; lmjax logs plain floats. Where torch is
  already imported, nothing changes."""
  hide = "torch" not in sys.modules
  if hide:
    sys.modules["torch"] = None  # `import torch` raises ImportError, which tensorboardX handles
  try:
    from tensorboardX import SummaryWriter  # noqa: PLC0415  (optional at import time)
  finally:
    if hide:
      del sys.modules["torch"]
  return SummaryWriter


class MetricsWriter:
  """Writes records on the main process only; others keep quiet."""

  def __init__(self, workdir: Path, *, total_steps: int, start_step: int, tensorboard: bool,
               progress_bar: bool, enabled: bool = True):
    self.enabled = enabled
    self.total = total_steps
    self.path = Path(workdir) / "metrics.jsonl"
    self._tb = None
    self._bar = None
    if not enabled:
      return
    if self.path.exists():
      # A resumed run repeats the steps after its checkpoint (a fresh one, all
      # of them): drop their earlier records so the file reads as one
      # uninterrupted run.
      self.path.write_text("".join(json.dumps(r) + "\n" for r in read_records(self.path)
                                   if r.get("step", 0) <= start_step))
    self._file = open(self.path, "a", encoding="utf-8")
    if tensorboard:
      SummaryWriter = _summary_writer_class()  # noqa: N806
      # purge_step: TensorBoard discards the events of steps >= it written by the earlier attempt.
      self._tb = SummaryWriter(str(Path(workdir) / "tensorboard"), purge_step=start_step + 1 if start_step else None)
    if progress_bar and sys.stderr.isatty():
      from tqdm import tqdm  # noqa: PLC0415
      self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)

  def write(self, step: int, metrics: dict, split: str = "train") -> None:
    if not self.enabled:
      return
    record = {"step": int(step), "split": split, **{k: _plain(v) for k, v in metrics.items()}}
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()
    if self._tb is not None:
      for k, v in record.items():
        if isinstance(v, (int, float)) and k != "step":
          self._tb.add_scalar(f"{split}/{k}", v, step)
      self._tb.flush()
    shown = " ".join(_fmt(k, record[k]) for k in _SHOWN if k in record)
    if split == "train":
      # ETA from the measured training rate (compilation, evaluation and
      # saving excluded); unknown until a rate has been measured.
      rate = record.get("steps_per_sec")
      eta = _eta((self.total - step) / rate) if rate else "?"
      if self._bar is not None:
        self._bar.n = step
        self._bar.set_postfix_str(f"{shown} eta={eta}")
        return
      print(f"step {step}/{self.total} {shown} eta={eta}", flush=True)
    else:
      line = f"[{split}] step {step} {shown}"
      if self._bar is not None:
        self._bar.write(line)
      else:
        print(line, flush=True)

  def close(self) -> None:
    if not self.enabled:
      return
    if self._bar is not None:
      self._bar.close()
    if self._tb is not None:
      self._tb.close()
    self._file.close()


def _plain(v):
  try:
    return v.item()
  except AttributeError:
    return v
