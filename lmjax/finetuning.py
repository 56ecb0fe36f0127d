"""Fine-tuning: where the encoder comes from (`train.init_from`), the run's
tokenizer and labels, and the classification report.

`train.init_from` accepts
  * an lmjax run directory (its config.json and newest checkpoint), or one of
    its checkpoints (`RUN/checkpoints/STEP`): the encoder (`bert` subtree) is
    loaded, pretraining heads are dropped;
  * a Hugging Face BERT directory (config.json + model.safetensors and
    tokenizer.json or vocab.txt), read without torch by `lmjax.convert.bert`.
Architecture fields of the model section (sizes, vocabulary, positions,
layer-norm placement) are taken from there; training-time fields (dropout,
dtype, num_labels) stay as the recipe sets them. The tokenizer is copied into
the run's workdir, so `lmjax.predict` needs nothing but the workdir.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from pathlib import Path

import jax
import numpy as np

from lmjax.data import tokenizer as tk
from lmjax.errors import LmjaxError
from lmjax.models.bert import BertConfig

ARCH_FIELDS = ("vocab_size", "hidden_size", "num_layers", "num_heads", "mlp_dim", "max_position_embeddings",
               "type_vocab_size", "layer_norm_eps", "pre_ln")


def log(msg: str) -> None:
  print(f"lmjax: {msg}", file=sys.stderr, flush=True)


@dataclasses.dataclass(frozen=True)
class Source:
  kind: str  # "lmjax" or "huggingface"
  path: Path  # the model directory, or the lmjax run directory
  model: BertConfig  # its architecture
  step: int | None = None  # lmjax: the checkpoint step


def inspect(init_from: str) -> Source:
  """Identifies what `train.init_from` points at; clear errors for anything else."""
  from lmjax.convert import bert as convert  # noqa: PLC0415

  path = Path(init_from).expanduser()
  if not path.exists():
    raise LmjaxError(f"train.init_from={init_from!r} does not exist. Point it at an lmjax run directory, one of "
                     "its checkpoints/STEP, or a Hugging Face BERT directory.")
  if path.is_file():
    convert._check_not_pickle(path)  # noqa: SLF001
    raise LmjaxError(f"train.init_from={init_from!r} is a file; pass the directory that holds it (an lmjax run "
                     "directory or a Hugging Face model directory with config.json and model.safetensors).")
  step = None
  if path.parent.name == "checkpoints" and path.name.isdigit():  # RUN/checkpoints/STEP
    step, path = int(path.name), path.parent.parent
  config_file = path / "config.json"
  if not config_file.exists():
    convert.load_pretrained(path)  # raises the pickle / missing-file message
  try:
    raw = json.loads(config_file.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise LmjaxError(f"{config_file} is not valid JSON ({e}).") from None
  if isinstance(raw.get("model"), dict) and "family" in raw["model"]:  # an lmjax run
    family = raw["model"]["family"]
    if family != "bert":
      raise LmjaxError(f"train.init_from={init_from!r} is an lmjax {family!r} checkpoint; classification "
                       "fine-tuning needs a BERT (encoder) checkpoint.")
    from lmjax import config as config_lib  # noqa: PLC0415
    src = config_lib.Config.from_dict(raw)
    if step is None:
      from lmjax.checkpoint import Checkpointer  # noqa: PLC0415
      if not (path / "checkpoints").is_dir():
        raise LmjaxError(f"train.init_from={init_from!r} is an lmjax run directory without checkpoints yet.")
      step = Checkpointer(path, every=1, keep=1, async_save=False).latest_step()
      if step is None:
        raise LmjaxError(f"train.init_from={init_from!r} is an lmjax run directory without checkpoints yet.")
    elif not (path / "checkpoints" / str(step)).is_dir():
      raise LmjaxError(f"{path / 'checkpoints' / str(step)} does not exist.")
    return Source("lmjax", path, src.model, step)
  model_type = raw.get("model_type")
  if model_type is not None and model_type != "bert":
    raise LmjaxError(f"train.init_from={init_from!r} is a Hugging Face {model_type!r} model; classification "
                     "fine-tuning needs a BERT (encoder) model.")
  if model_type is None:
    raise LmjaxError(f"{config_file} is neither an lmjax run config nor a Hugging Face BERT config.")
  return Source("huggingface", path, convert.config_from_hf(raw))


def model_config(recipe: BertConfig, source: Source) -> BertConfig:
  """The recipe's model section with the architecture of `source`."""
  return dataclasses.replace(recipe, **{f: getattr(source.model, f) for f in ARCH_FIELDS})


def install_tokenizer(source: Source | None, workdir: Path):
  """The run's tokenizer: the workdir's own (resumed runs), else the source's, copied in."""
  workdir.mkdir(parents=True, exist_ok=True)
  if any((workdir / name).exists() for name in tk.RUN_FILES):
    return tk.load_for_run(workdir)
  if source is None:
    return None
  if source.kind == "lmjax":
    for name in tk.RUN_FILES:
      if (source.path / name).exists():
        shutil.copyfile(source.path / name, workdir / name)
        return tk.load_for_run(workdir)
    raise LmjaxError(f"{source.path} has no tokenizer ({' or '.join(tk.RUN_FILES)}).")
  if (source.path / "tokenizer.json").exists():
    shutil.copyfile(source.path / "tokenizer.json", workdir / "tokenizer.json")
    return tk.load_for_run(workdir)
  if (source.path / "vocab.txt").exists():
    settings = {}
    if (source.path / "tokenizer_config.json").exists():
      settings = json.loads((source.path / "tokenizer_config.json").read_text())
    return tk.WordPiece.from_vocab(source.path / "vocab.txt", workdir / "tokenizer.json",
                                   lowercase=settings.get("do_lower_case", True))
  raise LmjaxError(f"{source.path} has no tokenizer.json or vocab.txt; lmjax needs the model's own tokenizer.")


def encoder_params(source: Source, mesh) -> dict[tuple, np.ndarray]:
  """{("bert", ...): array} of the source's encoder."""
  if source.kind == "huggingface":
    from lmjax.convert import bert as convert  # noqa: PLC0415
    _, loaded = convert.load_pretrained(source.path)
    return {k: v for k, v in loaded.items() if k[0] == "bert"}
  from lmjax import config as config_lib  # noqa: PLC0415
  from lmjax import trainer  # noqa: PLC0415
  from lmjax.checkpoint import Checkpointer  # noqa: PLC0415
  src_cfg = config_lib.load_json(source.path / "config.json")
  s = trainer.build(src_cfg, mesh)
  ckpt = Checkpointer(source.path, every=1, keep=1000, async_save=False)
  try:
    params = ckpt.restore_params(source.step, s.abstract_state, s.meta)
  finally:
    ckpt.close()
  flat = jax.tree_util.tree_flatten_with_path(jax.device_get(params["bert"]))[0]
  return {("bert",) + tuple(_key(k) for k in path): np.asarray(v) for path, v in flat}


def _key(k):
  return k.key if hasattr(k, "key") else k.idx


def classification_report(labels: np.ndarray, probs: np.ndarray, names: tuple[str, ...]) -> dict:
  """Accuracy, macro-F1, per-class precision / recall / F1, confusion matrix, mean loss."""
  from sklearn import metrics as skm  # noqa: PLC0415

  pred = probs.argmax(-1)
  classes = list(range(len(names)))
  precision, recall, f1, support = skm.precision_recall_fscore_support(labels, pred, labels=classes,
                                                                       zero_division=0)
  out = {
      "accuracy": float(skm.accuracy_score(labels, pred)),
      "f1": float(np.mean(f1)),  # macro
      "loss": float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)))),
      "examples": len(labels),
  }
  for i, name in enumerate(names):
    out[f"precision/{name}"] = float(precision[i])
    out[f"recall/{name}"] = float(recall[i])
    out[f"f1/{name}"] = float(f1[i])
    out[f"support/{name}"] = int(support[i])
  out["confusion"] = skm.confusion_matrix(labels, pred, labels=classes).tolist()
  out["labels"] = list(names)
  return out


def format_report(r: dict, title: str) -> str:
  names = r["labels"]
  width = max(10, *(len(n) for n in names))
  lines = [f"{title}: {r['examples']} examples",
           f"Accuracy: {r['accuracy']:.3f}  F1 Score: {r['f1']:.3f} (macro)  loss: {r['loss']:.4f}",
           f"{'':{width}}  precision  recall     f1  support"]
  for n in names:
    lines.append(f"{n:{width}}  {r[f'precision/{n}']:9.3f}  {r[f'recall/{n}']:6.3f}  {r[f'f1/{n}']:5.3f}  "
                 f"{r[f'support/{n}']:7d}")
  lines.append("confusion matrix (rows = true, columns = predicted): " + " ".join(names))
  for n, row in zip(names, r["confusion"]):
    lines.append(f"{n:{width}}  " + " ".join(f"{c:6d}" for c in row))
  return "\n".join(lines)
