"""The one run loader: open what a path holds and read its parameters only.

A path is
  * an lmjax run directory (config.json, checkpoints/STEP, best/, the
    tokenizer), or one of its checkpoints (`RUN/checkpoints/STEP`); or
  * a Hugging Face model directory (config.json + model.safetensors and its
    tokenizer), read without torch by the family's converter.

`inspect` says what a path holds (family, architecture) without reading
weights; `open_run` reads the parameters of `best`, `latest` or a step (no
optimizer is built or read: Orbax restores the `params` subtree alone) and
the tokenizer. `lmjax.predict`, `lmjax.generate`, `lmjax.bench` and
`train.init_from` all open runs through here.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from lmjax import models
from lmjax.errors import LmjaxError
from lmjax.models.family import Family

CHECKPOINT_HELP = "'best', 'latest' or a step number"


@dataclasses.dataclass(frozen=True)
class Source:
  kind: str  # "lmjax" or "huggingface"
  path: Path  # the run directory or the Hugging Face model directory
  family: Family
  model: Any  # the family's model config (its architecture)
  config: Any = None  # lmjax runs: the run's whole Config
  step: int | None = None  # set when the path named RUN/checkpoints/STEP


def inspect(path: str | Path, what: str = "--workdir", families: tuple[str, ...] | None = None,
            needs: str = "") -> Source:
  """What `path` holds; a clear error for anything else.

  `families` limits the families accepted (the message then says that the
  use named by `needs`, e.g. "classification fine-tuning", needs one of them).
  """
  from lmjax.convert.common import check_not_pickle  # noqa: PLC0415

  root = Path(path).expanduser()
  if not root.exists():
    raise LmjaxError(f"{what}={str(path)!r} does not exist. Point it at an lmjax run directory, one of its "
                     "checkpoints/STEP, or a Hugging Face model directory.")
  if root.is_file():
    check_not_pickle(root)
    raise LmjaxError(f"{what}={str(path)!r} is a file; pass the directory that holds it (an lmjax run directory "
                     "or a Hugging Face model directory with config.json and model.safetensors).")
  step = None
  if root.parent.name == "checkpoints" and root.name.isdigit():  # RUN/checkpoints/STEP
    step, root = int(root.name), root.parent.parent
  config_file = root / "config.json"
  if not config_file.exists():
    for f in sorted(root.iterdir()):
      check_not_pickle(f)  # a directory of pickle weights gets the pickle message
    raise LmjaxError(f"{root} has no config.json; {what} must be an lmjax run directory or a Hugging Face model "
                     "directory (config.json + model.safetensors).")
  try:
    raw = json.loads(config_file.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise LmjaxError(f"{config_file} is not valid JSON ({e}).") from None
  wanted = " or ".join(f.upper() for f in families) if families else ""
  if isinstance(raw.get("model"), dict) and "family" in raw["model"]:  # an lmjax run
    name = raw["model"]["family"]
    if families is not None and name not in families:
      raise LmjaxError(f"{what}={str(path)!r} is an lmjax {name!r} checkpoint; {needs} needs a {wanted} checkpoint.")
    from lmjax import config as config_lib  # noqa: PLC0415
    cfg = config_lib.Config.from_dict(raw)
    if step is not None and not (root / "checkpoints" / str(step)).is_dir():
      raise LmjaxError(f"{root / 'checkpoints' / str(step)} does not exist.")
    return Source("lmjax", root, models.of(cfg.model), cfg.model, cfg, step)
  model_type = raw.get("model_type")
  if model_type is None:
    raise LmjaxError(f"{config_file} is neither an lmjax run config nor a Hugging Face config (no model_type).")
  family = models.for_hf_model_type(model_type) if families is None else next(
      (models.family(f) for f in families if model_type in models.family(f).hf_model_types), None)
  if family is None:
    raise LmjaxError(f"{what}={str(path)!r} is a Hugging Face {model_type!r} model; {needs} needs a {wanted} model.")
  return Source("huggingface", root, family, family.convert().config_from_hf(raw))


def abstract_params(family: Family, model_cfg, kind: str | None = None, sharding=None) -> dict:
  """{path: ShapeDtypeStruct} of a freshly built model (nothing is allocated),
  each carrying its placement when `sharding` is given: one jax Sharding for
  every parameter, or `sharding.ModelSharding` (each parameter as its logical
  axes say on that mesh)."""
  import jax  # noqa: PLC0415
  from flax import nnx  # noqa: PLC0415

  from lmjax import sharding as sh  # noqa: PLC0415
  cls = family.model_class(kind or family.default_model)
  model = nnx.eval_shape(lambda: cls(model_cfg, rngs=nnx.Rngs(0)))
  abstract = nnx.to_pure_dict(nnx.split(model)[1])
  if sharding is None:
    return abstract
  if isinstance(sharding, sh.ModelSharding):
    models.check_mesh(model_cfg, sharding.mesh)
    shardings = sh.param_shardings(model, sharding.mesh, sharding.rules)
  else:
    shardings = jax.tree.map(lambda _: sharding, abstract)
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


@dataclasses.dataclass
class Run:
  source: Source
  params: dict  # the model's parameters (jax arrays placed by `sharding`)
  step: int | None  # None for a Hugging Face directory
  tokenizer: Any
  description: str  # what was loaded, for messages

  @property
  def model(self):
    return self.source.model

  @property
  def config(self):
    return self.source.config


def open_run(path: str | Path, checkpoint: str = "latest", *, what: str = "--workdir",
             families: tuple[str, ...] | None = None, needs: str = "", sharding=None,
             tokenizer: bool = True) -> Run:
  """A run's (or Hugging Face directory's) parameters and tokenizer.

  checkpoint: "best" (WORKDIR/best; an error if the run keeps none), "latest",
  "auto" (best if the run keeps one, else latest) or a step number. A path of
  the form RUN/checkpoints/STEP fixes the step. `sharding` places the
  parameters (default: the first device): one jax Sharding for all, or
  `lmjax.sharding.ModelSharding` to split them over a mesh as in training.
  """
  import jax  # noqa: PLC0415

  src = inspect(path, what, families, needs)
  if sharding is None:
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  if src.kind == "huggingface":
    from lmjax.convert.common import merge_into  # noqa: PLC0415
    placed = abstract_params(src.family, src.model, sharding=sharding)
    _, loaded = src.family.convert().load_pretrained(src.path)
    zeros = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), placed)
    params = jax.device_put(merge_into(zeros, loaded), jax.tree.map(lambda a: a.sharding, placed))
    step, desc = None, f"{src.path} (Hugging Face {src.family.name})"
  else:
    params, step, which = _restore(src, checkpoint, sharding)
    desc = f"{src.path} ({which}step {step})"
  tok = None
  if tokenizer:
    from lmjax.data import tokenizer as tk  # noqa: PLC0415
    tok = tk.load_for_run(src.path)
    if tok.vocab_size > src.model.vocab_size:
      raise LmjaxError(f"The tokenizer in {src.path} has {tok.vocab_size} tokens but the model's vocabulary has "
                       f"{src.model.vocab_size} (model.vocab_size): they do not belong together. Use the tokenizer "
                       "that was saved with this checkpoint.")
  return Run(src, params, step, tok, desc)


def _restore(src: Source, checkpoint: str, sharding) -> tuple[dict, int, str]:
  from lmjax.checkpoint import BestCheckpoint, param_shapes, read_meta, read_params, saved_steps  # noqa: PLC0415

  def target(saved_meta: dict):
    # The checkpoint's meta names which of the family's models it holds ("task").
    placed = abstract_params(src.family, src.model, saved_meta.get("task"), sharding=sharding)
    return placed, {"family": src.family.name, "model": dataclasses.asdict(src.model),
                    "shapes": param_shapes(placed)}

  checkpoint = str(checkpoint)
  if src.step is not None:
    checkpoint = str(src.step)
  if checkpoint == "auto":
    checkpoint = "best" if BestCheckpoint.exists(src.path) else "latest"
  if checkpoint == "best":
    if not BestCheckpoint.exists(src.path):
      raise LmjaxError(f"{src.path} has no best checkpoint ({src.path / 'best'}): runs keep one when they evaluate "
                       "with checkpoint.best_metric set (classification does by default). Use --checkpoint latest "
                       "or a step number.")
    best = BestCheckpoint(src.path, "")
    try:
      info = best.info()
      placed, _ = target(info)
      return best.restore_params(placed), info["step"], "best checkpoint, "
    finally:
      best.close()
  steps = saved_steps(src.path)
  if not steps:
    raise LmjaxError(f"{src.path} has no checkpoint yet.")
  if checkpoint == "latest":
    step = max(steps)
  elif checkpoint.isdigit():
    step = int(checkpoint)
  else:
    raise LmjaxError(f"--checkpoint {checkpoint!r}: use {CHECKPOINT_HELP}.")
  if step not in steps:
    raise LmjaxError(f"{src.path} has no checkpoint at step {step} (it has {sorted(steps)}).")
  placed, meta = target(read_meta(src.path, step))
  return read_params(src.path, step, placed, meta), step, ""


def copy_tokenizer(src: Source, workdir: Path):
  """The run's tokenizer: the workdir's own (resumed runs), else the source's, copied in."""
  from lmjax.data import tokenizer as tk  # noqa: PLC0415

  workdir.mkdir(parents=True, exist_ok=True)
  if any((workdir / name).exists() for name in tk.RUN_FILES):
    return tk.load_for_run(workdir)
  if src.kind == "lmjax":
    for name in tk.RUN_FILES:
      if (src.path / name).exists():
        shutil.copyfile(src.path / name, workdir / name)
        return tk.load_for_run(workdir)
    raise LmjaxError(f"{src.path} has no tokenizer ({' or '.join(tk.RUN_FILES)}).")
  if (src.path / "tokenizer.json").exists():
    shutil.copyfile(src.path / "tokenizer.json", workdir / "tokenizer.json")
    return tk.load_for_run(workdir)
  if (src.path / "vocab.txt").exists():
    settings = {}
    if (src.path / "tokenizer_config.json").exists():
      settings = json.loads((src.path / "tokenizer_config.json").read_text())
    return tk.WordPiece.from_vocab(src.path / "vocab.txt", workdir / "tokenizer.json",
                                   lowercase=settings.get("do_lower_case", True))
  raise LmjaxError(f"{src.path} has no tokenizer.json or vocab.txt; lmjax needs the model's own tokenizer.")


def backbone_params(src: Source, checkpoint: str = "latest") -> dict[tuple, np.ndarray]:
  """{(backbone, ...): array}: the part of the source's parameters that every
  model of its family shares (an encoder without its pretraining heads)."""
  import jax  # noqa: PLC0415

  name = src.family.backbone  # "": the whole model (an encoder-decoder fine-tunes all of it)
  if src.kind == "huggingface":
    _, loaded = src.family.convert().load_pretrained(src.path)
    return {k: v for k, v in loaded.items() if not name or k[0] == name}
  params = open_run(src.path / "checkpoints" / str(src.step) if src.step is not None else src.path, checkpoint,
                    tokenizer=False).params
  prefix = (name,) if name else ()
  flat = jax.tree_util.tree_flatten_with_path(jax.device_get(params[name] if name else params))[0]
  return {prefix + tuple(k.key if hasattr(k, "key") else k.idx for k in path): np.asarray(v) for path, v in flat}
