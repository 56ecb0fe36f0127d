"""What every family's converter shares: the tensor map, the pickle refusal,
reading a Hugging Face directory, and placing arrays into lmjax parameters."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from lmjax.errors import LmjaxError

_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


@dataclasses.dataclass(frozen=True)
class Map:
  """One tensor: HF name, lmjax path, and the reshapes between the two.

  `part=(i, n)`: the HF tensor is n lmjax tensors concatenated along its
  last axis (GPT-2's fused c_attn), and this is the i-th.
  """
  hf: str
  path: tuple
  to_lmjax: object = None  # fn(array, cfg) -> array
  to_hf: object = None
  part: tuple[int, int] | None = None


def check_not_pickle(path: Path) -> None:
  if path.suffix in _PICKLE_SUFFIXES:
    raise LmjaxError(f"{path} is a pickle-based weights file, which lmjax refuses to load (unpickling can run "
                     "arbitrary code). Convert it to model.safetensors first, e.g. with transformers: "
                     "model.save_pretrained(dir, safe_serialization=True).")


def read_hf_dir(model_dir: str | Path) -> tuple[Path, dict, dict[str, np.ndarray]]:
  """(directory, config.json as a dict, {tensor name: array}) of a Hugging Face model directory."""
  from safetensors.numpy import load_file  # noqa: PLC0415

  root = Path(model_dir).expanduser()
  if root.is_file():
    check_not_pickle(root)
    raise LmjaxError(f"{root} is a file; pass the model directory holding config.json and model.safetensors.")
  if not root.is_dir():
    raise LmjaxError(f"Hugging Face model directory {root} does not exist.")
  weights = root / "model.safetensors"
  if not weights.exists():
    pickled = sorted(p for p in root.iterdir() if p.suffix in _PICKLE_SUFFIXES)
    if pickled:
      check_not_pickle(pickled[0])
    raise LmjaxError(f"{root} has no model.safetensors (sharded checkpoints: merge them into one file first).")
  if not (root / "config.json").exists():
    raise LmjaxError(f"{root} has no config.json.")
  try:
    hf = json.loads((root / "config.json").read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise LmjaxError(f"{root / 'config.json'} is not valid JSON ({e}).") from None
  return root, hf, load_file(str(weights))


def convert(x: np.ndarray, fn, cfg) -> np.ndarray:
  x = np.asarray(x, np.float32)
  return np.ascontiguousarray(fn(x, cfg) if fn else x)


def load_maps(maps: list[Map], tensors: dict[str, np.ndarray], cfg, prefix: str, where: Path,
              what: str) -> dict[tuple, np.ndarray]:
  out = {}
  for m in maps:
    name = prefix + m.hf
    if name not in tensors:
      raise LmjaxError(f"{where} is missing tensor {name!r} (expected for {what}).")
    x = tensors[name]
    if m.part is not None:
      x = np.split(np.asarray(x), m.part[1], axis=-1)[m.part[0]]
    out[m.path] = convert(x, m.to_lmjax, cfg)
  return out


def export_maps(maps: list[Map], params: dict, cfg, prefix: str = "") -> dict[str, np.ndarray]:
  tensors, parts = {}, {}
  for m in maps:
    x = get(params, m.path, m.to_hf, cfg)
    if m.part is None:
      tensors[prefix + m.hf] = x
    else:
      parts.setdefault(prefix + m.hf, {})[m.part[0]] = x
  for name, pieces in parts.items():
    tensors[name] = np.concatenate([pieces[i] for i in sorted(pieces)], axis=-1)
  return {k: np.ascontiguousarray(v) for k, v in tensors.items()}


def merge_into(params: dict, loaded: dict[tuple, np.ndarray]) -> dict:
  """Copies loaded arrays into a nested param dict, checking every shape."""
  for path, value in loaded.items():
    node = params
    for key in path[:-1]:
      if key not in node:
        raise LmjaxError(f"lmjax model has no parameter {'/'.join(map(str, path))}.")
      node = node[key]
    old = node.get(path[-1]) if isinstance(node, dict) else None
    if old is None:
      raise LmjaxError(f"lmjax model has no parameter {'/'.join(map(str, path))}.")
    if tuple(old.shape) != tuple(value.shape):
      raise LmjaxError(f"Shape mismatch for {'/'.join(map(str, path))}: checkpoint {tuple(value.shape)}, "
                       f"model {tuple(old.shape)}.")
    node[path[-1]] = value
  return params


def get(params: dict, path: tuple, fn, cfg) -> np.ndarray:
  node = params
  for key in path:
    node = node[key]
  x = np.asarray(node, np.float32)
  return fn(x, cfg) if fn else x
