"""Take a trained model away: a run as a Hugging Face model directory.

  python -m lmjax.export --workdir runs/bert_zh_sentiment --out exported/bert_zh_sentiment
  python -m lmjax.export --workdir runs/gpt_tiny --checkpoint latest --out exported/gpt_tiny

Writes config.json, model.safetensors (float32), tokenizer.json and
tokenizer_config.json. The class is the one the run's family converter names
for the model the run trained (its `EXPORTS`): BertForPreTraining,
BertForSequenceClassification or BertForTokenClassification (with
id2label / label2id from the run's labels), GPT2LMHeadModel or
LlamaForCausalLM, T5ForConditionalGeneration. Then:

  from transformers import AutoModelForSequenceClassification, AutoTokenizer
  model = AutoModelForSequenceClassification.from_pretrained("exported/bert_zh_sentiment")
  tokenizer = AutoTokenizer.from_pretrained("exported/bert_zh_sentiment")

The tokenizer cuts text as the run's does: an lmjax sentencepiece model is
written as the same Unigram model for the `tokenizers` library, with
[CLS] ... [SEP] added for encoders. Parameters come from the best checkpoint
when the run keeps one (`--checkpoint auto`), else the latest.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lmjax.errors import LmjaxError, cli
from lmjax.metrics import log


def export(workdir: str | Path, out: str | Path, checkpoint: str = "auto") -> Path:
  """Writes the run as a Hugging Face directory; returns it."""
  import jax  # noqa: PLC0415

  from lmjax import runs, tasks  # noqa: PLC0415
  from lmjax.data import tokenizer as tk  # noqa: PLC0415

  src = runs.inspect(workdir)
  if src.kind != "lmjax" or src.config is None:
    raise LmjaxError(f"{workdir} is not an lmjax run directory (it has no config.json written by train.py).")
  cfg = src.config
  task = tasks.get(cfg.train.objective)
  converter = src.family.convert()
  exports = getattr(converter, "EXPORTS", {})
  if task.model not in exports:
    raise LmjaxError(f"{workdir} trained train.objective={task.name!r}: a {src.family.name!r} {task.model!r} model, "
                     f"which has no Hugging Face counterpart to export to (the {src.family.name!r} family exports "
                     f"{', '.join(repr(k) for k in exports) or 'nothing'}).")
  out = Path(out)
  if out.exists() and any(out.iterdir()):
    if not (out / "config.json").exists():
      raise LmjaxError(f"{out} exists and holds other files; give an empty or new directory to --out.")
    log(f"replacing the export in {out}")
  run = runs.open_run(workdir, checkpoint)
  params = jax.tree.map(lambda x: jax.device_get(x), run.params)
  extra = {}
  if task.model == "pretraining" and getattr(run.tokenizer, "eos_id", None) is not None and src.family.generation:
    extra["eos_token_id"] = run.tokenizer.eos_id
  converter.save_pretrained(out, src.model, params, kind=task.model, labels=tuple(cfg.data.labels), **extra)
  encoder = src.family.generation is None  # an encoder reads [CLS] text [SEP]
  tk.save_for_transformers(run.tokenizer, out, encoder=encoder,
                           model_max_length=int(getattr(src.model, "max_position_embeddings", 0) or 512))
  log(f"exported {run.description} as {exports[task.model]} to {out}")
  return out


@cli
def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", required=True, help="an lmjax run directory")
  parser.add_argument("--checkpoint", default="auto",
                      help="'best', 'latest', a step number, or 'auto' (default: best if the run keeps one, else latest)")
  parser.add_argument("--out", required=True, help="the Hugging Face directory to write")
  args = parser.parse_args(argv)
  print(export(args.workdir, args.out, args.checkpoint))
  return 0


if __name__ == "__main__":
  sys.exit(main())
