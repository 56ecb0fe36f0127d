"""Classify new text with a fine-tuned run.

  python -m lmjax.predict --workdir runs/minilm_sentiment "a gorgeous, witty, seductive movie." ...
  cat reviews.txt | python -m lmjax.predict --workdir runs/minilm_sentiment

Prints one line per input: label, its probability, and the text (or a JSON
object per line with --json). Without texts on the command line, reads one
per line from stdin; for a sentence-pair run, a line holds "text<TAB>pair".
Uses the workdir's best checkpoint (WORKDIR/best) if it keeps one, else the
latest, unless --checkpoint says otherwise; everything else (config, tokenizer, labels) also comes from the
workdir. Inputs are classified in fixed-size batches (one compilation).
`--mesh DATA,FSDP,TENSOR` splits the parameters over this host's devices
with the run's sharding rules (`--rules` to choose others), for a model that
does not fit one device; the output is the same.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lmjax.errors import LmjaxError, cli
from lmjax.metrics import log


class Classifier:
  """A fine-tuned run's model, tokenizer and labels, ready to classify text."""

  def __init__(self, workdir: str | Path, checkpoint: str = "auto", batch_size: int = 32, mesh: str | None = None,
               rules: str | None = None):
    """mesh: "DATA,FSDP,TENSOR" over this host's devices, parameters split as
    the run's rule set (or `rules`) says, for models that do not fit one
    device; default: parameters replicated, rows split over every device."""
    import jax  # noqa: PLC0415
    from flax import nnx  # noqa: PLC0415
    from jax.sharding import NamedSharding, PartitionSpec  # noqa: PLC0415

    from lmjax import runs, tasks  # noqa: PLC0415
    from lmjax import sharding as sh  # noqa: PLC0415

    src = runs.inspect(workdir)
    if src.config is None or tasks.get(src.config.train.objective).predict is None:
      what = f"trained train.objective={src.config.train.objective!r}" if src.config else "is not an lmjax run"
      raise LmjaxError(f"{workdir} {what}; lmjax.predict needs a classification (fine-tuning) run.")
    cfg = src.config
    self.task = tasks.get(cfg.train.objective)
    self.cfg = cfg
    self.names = cfg.data.labels
    if mesh is None:  # data parallel over this host's devices: parameters replicated, rows split
      self.mesh = sh.make_mesh(-1, 1, 1, devices=jax.local_devices())
      placement = NamedSharding(self.mesh, PartitionSpec())
    else:
      self.mesh = sh.parse_mesh(mesh, jax.local_devices())
      placement = sh.ModelSharding(self.mesh, sh.rules_for(rules or cfg.mesh.rules))
    n = sh.data_parallel_size(self.mesh)
    self.batch_size = max(n, -(-batch_size // n) * n)  # a multiple of the rows' shards
    run = runs.open_run(workdir, checkpoint, sharding=placement)
    self.tok, self.params, self.step = run.tokenizer, run.params, run.step
    graphdef = nnx.split(nnx.eval_shape(lambda: src.family.model_class(self.task.model)(cfg.model,
                                                                                        rngs=nnx.Rngs(0))))[0]
    self._fn = jax.jit(lambda params, batch: self.task.predict(nnx.merge(graphdef, params), batch))

  def predict(self, texts: list[str], pairs: list[str] | None = None):
    """Class probabilities [N, num_labels] (numpy) and the number of inputs truncated."""
    import jax  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    from lmjax import sharding as sh  # noqa: PLC0415
    from lmjax.data import classification_examples as examples  # noqa: PLC0415

    enc = examples.encode(self.tok, texts, pairs, None, self.cfg.data.max_seq_len)
    out = []
    with jax.set_mesh(self.mesh):
      for batch in examples.eval_batches(enc, self.batch_size):
        batch = {k: jax.device_put(v, sh.batch_sharding(self.mesh, v.ndim)) for k, v in batch.items()}
        out.append(np.asarray(jax.device_get(self._fn(self.params, batch)["probs"])))
    return np.concatenate(out)[:len(texts)], enc.truncated


@cli
def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", required=True, help="a fine-tuning run directory")
  parser.add_argument("--checkpoint", default="auto",
                      help="'best', 'latest', a step number, or 'auto' (default: best if the run keeps one, else latest)")
  parser.add_argument("--batch-size", type=int, default=32)
  parser.add_argument("--json", action="store_true", help="print one JSON object per input")
  parser.add_argument("--mesh", help="DATA,FSDP,TENSOR: split the parameters over this host's devices as in "
                      "training (default: replicated on each device)")
  parser.add_argument("--rules", help="the rule set with --mesh (default: the run's mesh.rules)")
  parser.add_argument("texts", nargs="*", help="texts to classify (default: one per line from stdin)")
  args = parser.parse_args(argv)
  texts = args.texts if args.texts else [line.rstrip("\n") for line in sys.stdin if line.strip()]
  if not texts:
    raise LmjaxError("Nothing to classify: give texts as arguments or lines on stdin.")
  clf = Classifier(args.workdir, args.checkpoint, args.batch_size, args.mesh, args.rules)
  pairs = None
  if clf.cfg.data.text_pair_column:
    split = [t.split("\t", 1) for t in texts]
    texts, pairs = [s[0] for s in split], [s[1] if len(s) > 1 else "" for s in split]
  probs, truncated = clf.predict(texts, pairs)
  if truncated:
    log(f"warning: {truncated} input(s) longer than {clf.cfg.data.max_seq_len} tokens were truncated")
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
