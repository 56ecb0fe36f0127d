"""Classify new text with a fine-tuned run.

  python -m lmjax.predict --workdir runs/minilm_sentiment "a gorgeous, witty, seductive movie." ...
  cat reviews.txt | python -m lmjax.predict --workdir runs/minilm_sentiment

Prints one line per input: label, its probability, and the text (or a JSON
object per line with --json). Without texts on the command line, reads one
per line from stdin; for a sentence-pair run, a line holds "text<TAB>pair".
Uses the workdir's best checkpoint (WORKDIR/best) unless --checkpoint says
otherwise; everything else (config, tokenizer, labels) also comes from the
workdir. Inputs are classified in fixed-size batches (one compilation).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from lmjax.errors import LmjaxError, cli


class Classifier:
  """A fine-tuned run's model, tokenizer and labels, ready to classify text."""

  def __init__(self, workdir: str | Path, checkpoint: str = "best", batch_size: int = 32):
    import jax  # noqa: PLC0415

    from lmjax import config as config_lib  # noqa: PLC0415
    from lmjax import sharding as sh  # noqa: PLC0415
    from lmjax import trainer  # noqa: PLC0415
    from lmjax.checkpoint import BestCheckpoint, Checkpointer  # noqa: PLC0415
    from lmjax.data import tokenizer as tk  # noqa: PLC0415

    workdir = Path(workdir)
    if not (workdir / "config.json").exists():
      raise LmjaxError(f"{workdir} has no config.json; pass the --workdir of a fine-tuning run.")
    cfg = config_lib.load_json(workdir / "config.json")
    if cfg.train.objective != "classification":
      raise LmjaxError(f"{workdir} trained train.objective={cfg.train.objective!r}; lmjax.predict needs a "
                       "classification (fine-tuning) run.")
    n = jax.local_device_count()
    batch_size = max(n, -(-batch_size // n) * n)  # a multiple of the devices
    cfg = dataclasses.replace(
        cfg, mesh=dataclasses.replace(cfg.mesh, data=-1, fsdp=1, tensor=1, rules="dp", distributed=False),
        train=dataclasses.replace(cfg.train, batch_size=batch_size, grad_accum_steps=1))
    self.cfg = cfg
    self.names = cfg.data.labels
    self.tok = tk.load_for_run(workdir)
    self.mesh = sh.make_mesh(-1, 1, 1)
    self.setup = trainer.build(cfg, self.mesh)
    abstract_params = self.setup.abstract_state["params"]
    best = BestCheckpoint(workdir, cfg.checkpoint.best_metric or "accuracy")
    try:
      if checkpoint == "best" and best.info() is not None:
        self.params = best.restore_params(abstract_params)
        self.step = best.info()["step"]
        return
    finally:
      best.close()
    ckpt = Checkpointer(workdir, every=1, keep=1000, async_save=False)
    try:
      step = ckpt.latest_step() if checkpoint in ("best", "latest") else int(checkpoint)
      if step is None:
        raise LmjaxError(f"{workdir} has no checkpoint yet.")
      if step not in ckpt.manager.all_steps():
        raise LmjaxError(f"{workdir} has no checkpoint at step {step} (it has {ckpt.manager.all_steps()}).")
      self.params = ckpt.restore_params(step, self.setup.abstract_state, self.setup.meta)
      self.step = step
    finally:
      ckpt.close()

  def predict(self, texts: list[str], pairs: list[str] | None = None):
    """Class probabilities [N, num_labels] (numpy) and the number of inputs truncated."""
    import jax  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    from lmjax import trainer  # noqa: PLC0415
    from lmjax.data import finetune  # noqa: PLC0415

    if not hasattr(self, "_fn"):
      self._fn = trainer.compile_steps(self.setup)[1]
    enc = finetune.encode(self.tok, texts, pairs, None, self.cfg.data.max_seq_len)
    out = []
    with jax.set_mesh(self.mesh):
      for batch in finetune.eval_batches(enc, self.cfg.train.batch_size):
        out.append(np.asarray(jax.device_get(self._fn(self.params, trainer.to_global(batch, self.mesh))["probs"])))
    return np.concatenate(out)[:len(texts)], enc.truncated


@cli
def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", required=True, help="a fine-tuning run directory")
  parser.add_argument("--checkpoint", default="best", help="'best' (default), 'latest' or a step number")
  parser.add_argument("--batch-size", type=int, default=32)
  parser.add_argument("--json", action="store_true", help="print one JSON object per input")
  parser.add_argument("texts", nargs="*", help="texts to classify (default: one per line from stdin)")
  args = parser.parse_args(argv)
  texts = args.texts if args.texts else [line.rstrip("\n") for line in sys.stdin if line.strip()]
  if not texts:
    raise LmjaxError("Nothing to classify: give texts as arguments or lines on stdin.")
  clf = Classifier(args.workdir, args.checkpoint, args.batch_size)
  pairs = None
  if clf.cfg.data.text_pair_column:
    split = [t.split("\t", 1) for t in texts]
    texts, pairs = [s[0] for s in split], [s[1] if len(s) > 1 else "" for s in split]
  probs, truncated = clf.predict(texts, pairs)
  if truncated:
    print(f"lmjax: warning: {truncated} input(s) longer than {clf.cfg.data.max_seq_len} tokens were truncated",
          file=sys.stderr)
  for i, text in enumerate(texts):
    k = int(probs[i].argmax())
    if args.json:
      print(json.dumps({"text": text, "label": clf.names[k], "probability": float(probs[i, k]),
                        "probabilities": {n: float(p) for n, p in zip(clf.names, probs[i])}}))
    else:
      print(f"{clf.names[k]}\t{probs[i, k]:.4f}\t{text}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
