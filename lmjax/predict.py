"""Classify or tag new text with a fine-tuned run.

  python -m lmjax.predict --workdir runs/minilm_sentiment "a gorgeous, witty, seductive movie." ...
  cat reviews.txt | python -m lmjax.predict --workdir runs/minilm_sentiment
  python -m lmjax.predict --workdir runs/bert_zh_ner "江泽民在北京会见了克林顿。"

A classification run prints one line per input: label, its probability, and
the text. A token-classification run prints the text and then each entity it
found as TYPE<TAB>words; new text is split into words as
`lmjax.data.tagging.split_words` says (each CJK character alone, runs of
letters and digits, punctuation marks). --json prints one JSON object per
input instead (a tagging run's holds the entities with character offsets and
mean probabilities, the words and their tags). Without texts on the command line, reads one
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
      raise LmjaxError(f"{workdir} {what}; lmjax.predict needs a classification or token_classification (fine-tuning) run.")
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


class Tagger(Classifier):
  """A token-classification run, ready to tag new text."""

  def tag(self, texts: list[str]) -> tuple[list[dict], int]:
    """Per text: {"text", "words", "tags", "entities": [{"type", "text", "start", "end", "probability"}]}
    (character offsets into the text), and the number of inputs cut off by data.max_seq_len."""
    import jax  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    from lmjax import sharding as sh  # noqa: PLC0415
    from lmjax.data import classification_examples as examples  # noqa: PLC0415
    from lmjax.data import tagging  # noqa: PLC0415

    spans = [tagging.split_words(t) for t in texts]
    enc = tagging.encode(self.tok, [[w for w, _, _ in s] for s in spans], None, self.cfg.data.max_seq_len)
    tags, probs = [], []
    with jax.set_mesh(self.mesh):
      for batch in examples.eval_batches(enc, self.batch_size):
        batch = {k: jax.device_put(v, sh.batch_sharding(self.mesh, v.ndim)) for k, v in batch.items()}
        out = jax.device_get(self._fn(self.params, batch))
        tags.append(np.asarray(out["tag"]))
        probs.append(np.asarray(out["prob"]))
    tags, probs = np.concatenate(tags)[:len(texts)], np.concatenate(probs)[:len(texts)]
    word_tags = tagging.word_predictions(enc, tags)
    word_probs = [np.where(first >= 0, probs[i, np.maximum(first, 0)], 0.0) for i, first in enumerate(enc.first)]
    results = []
    for text, span, wt, wp in zip(texts, spans, word_tags, word_probs):
      names = [self.names[t] for t in wt]
      found = [{"type": kind, "text": text[span[a][1]:span[b - 1][2]], "start": span[a][1], "end": span[b - 1][2],
                "probability": float(np.mean(wp[a:b]))} for kind, a, b in tagging.entities(names)]
      results.append({"text": text, "words": [w for w, _, _ in span], "tags": names, "entities": found})
    return results, enc.truncated


def open_run(workdir, checkpoint: str = "auto", batch_size: int = 32, mesh: str | None = None,
             rules: str | None = None) -> Classifier:
  """A Tagger for a token-classification run, else a Classifier."""
  from lmjax import runs  # noqa: PLC0415
  src = runs.inspect(workdir)
  kind = Tagger if src.config is not None and src.config.train.objective == "token_classification" else Classifier
  return kind(workdir, checkpoint, batch_size, mesh, rules)


@cli
def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", required=True, help="a fine-tuning run directory (classification or "
                      "token_classification)")
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
  clf = open_run(args.workdir, args.checkpoint, args.batch_size, args.mesh, args.rules)
  if isinstance(clf, Tagger):
    results, truncated = clf.tag(texts)
    if truncated:
      log(f"warning: {truncated} input(s) longer than {clf.cfg.data.max_seq_len} pieces were cut; their last "
          "words are tagged O")
    for r in results:
      if args.json:
        print(json.dumps(r, ensure_ascii=False))
      else:
        print("\t".join([r["text"], *(f"{e['type']} {e['text']}" for e in r["entities"])]))
    return 0
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
