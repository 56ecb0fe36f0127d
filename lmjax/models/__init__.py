"""Model families. A family is one file holding its frozen config, modules and
a `FAMILY` record (`lmjax.models.family.Family`); this registry lists them.

    from lmjax.models.bert import BertConfig, BertForPreTraining
    model = BertForPreTraining(BertConfig.preset("tiny"), rngs=nnx.Rngs(0))

Adding a family: a new file with its `FAMILY`, one line in `_RECORDS`
(docs/architecture.md has the checklist).
"""

from __future__ import annotations

from lmjax.errors import LmjaxError
from lmjax.models import bert, gpt, t5
from lmjax.models.family import Family, Generation, Workload  # noqa: F401  (re-exported)

_RECORDS = (bert.FAMILY, gpt.FAMILY, t5.FAMILY)
FAMILIES: dict[str, Family] = {f.name: f for f in _RECORDS}


def register(family: Family) -> Family:
  """Adds a family defined outside this package (a plug-in, or a test's toy)."""
  FAMILIES[family.name] = family
  return family


def family(name: str) -> Family:
  if name not in FAMILIES:
    raise LmjaxError(f"Unknown model family {name!r}; known: {', '.join(FAMILIES)}.")
  return FAMILIES[name]


def of(model_cfg) -> Family:
  """The family whose config class `model_cfg` is."""
  for f in FAMILIES.values():
    if type(model_cfg) is f.config:
      return f
  raise LmjaxError(f"{type(model_cfg).__name__} is not the config of a registered model family "
                   f"({', '.join(FAMILIES)}).")


def family_of(model_cfg) -> str:
  return of(model_cfg).name


def config_class(name: str) -> type:
  return family(name).config


def model_class(model_cfg, kind: str = "pretraining") -> type:
  return of(model_cfg).model_class(kind)


def for_hf_model_type(model_type: str) -> Family:
  """The family whose converter reads a Hugging Face config.json of this model_type."""
  for f in FAMILIES.values():
    if model_type in f.hf_model_types:
      return f
  known = sorted(t for f in FAMILIES.values() for t in f.hf_model_types)
  raise LmjaxError(f"Hugging Face model_type {model_type!r} has no lmjax family; lmjax reads {', '.join(known)}.")


def check_mesh(model_cfg, mesh) -> None:
  """Every size the family splits over a mesh axis must divide by that axis."""
  for name, (size, axis) in model_cfg.mesh_divisors().items():
    n = mesh.shape[axis]
    if size % n:
      raise LmjaxError(f"model.{name}={size} is not divisible by the mesh's {axis} axis ({n}); choose mesh sizes "
                       f"that divide it, e.g. --set mesh.{axis}=1.")
