"""Device mesh and the logical-axis rules that place arrays on it.

The mesh always has the axes ("data", "fsdp", "tensor"). Parameters and
activations are annotated with logical names (see the legend in
`lmjax.layers`); a rule set maps each logical name to mesh axes. Data
parallelism, FSDP (ZeRO-3: parameters and optimizer state split over "fsdp",
gathered per layer by XLA) and Megatron-style tensor parallelism are rule
sets, not code paths:

  dp       parameters replicated, batch split over data x fsdp
  fsdp     parameters split along "embed" over fsdp
  tp       heads, MLP width and vocabulary split over tensor
  fsdp_tp  both (the default; with fsdp = tensor = 1 it is plain DP)
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import threading
from typing import Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from lmjax.errors import LmjaxError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH = ("data", "fsdp")

# Every logical name used by lmjax models appears in every rule set, so an
# unmapped name is a bug caught by `check_rules`, not a silent replication.
_REPLICATED = {
    "batch": BATCH, "seq": None, "act_embed": None,
    "vocab": None, "embed": None, "heads": None, "kv_heads": None, "kv": None, "mlp": None,
    "norm": None, "position": None, "type": None, "classes": None, "buckets": None,
}
RULE_SETS: dict[str, dict[str, str | tuple[str, ...] | None]] = {
    "dp": dict(_REPLICATED),
    "fsdp": {**_REPLICATED, "embed": "fsdp"},
    "tp": {**_REPLICATED, "heads": "tensor", "kv_heads": "tensor", "mlp": "tensor", "vocab": "tensor"},
    "fsdp_tp": {**_REPLICATED, "embed": "fsdp", "heads": "tensor", "kv_heads": "tensor", "mlp": "tensor",
                "vocab": "tensor"},
}


def rules_for(name: str) -> tuple[tuple[str, str | tuple[str, ...] | None], ...]:
  if name not in RULE_SETS:
    raise LmjaxError(f"Unknown mesh.rules {name!r}; choose one of {', '.join(RULE_SETS)}.")
  return tuple(RULE_SETS[name].items())


def resolve_mesh_shape(data: int, fsdp: int, tensor: int, num_devices: int) -> tuple[int, int, int]:
  sizes = [data, fsdp, tensor]
  if sizes.count(-1) > 1:
    raise LmjaxError(f"Mesh (data={data}, fsdp={fsdp}, tensor={tensor}): at most one axis may be -1.")
  if any(s == 0 or s < -1 for s in sizes):
    raise LmjaxError(f"Mesh (data={data}, fsdp={fsdp}, tensor={tensor}): sizes must be positive or -1.")
  fixed = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % fixed:
      raise LmjaxError(
          f"Mesh (data={data}, fsdp={fsdp}, tensor={tensor}) does not divide the {num_devices} "
          f"devices: the fixed axes need a multiple of {fixed}. Choose sizes whose product "
          f"divides {num_devices}, e.g. --set mesh.fsdp=1 --set mesh.tensor=1.")
    sizes[sizes.index(-1)] = num_devices // fixed
  if math.prod(sizes) != num_devices:
    raise LmjaxError(
        f"Mesh (data={sizes[0]}, fsdp={sizes[1]}, tensor={sizes[2]}) has {math.prod(sizes)} "
        f"devices but this run has {num_devices}. Make the product equal {num_devices}, or "
        f"set one axis to -1 to take the rest (e.g. --set mesh.data=-1).")
  return tuple(sizes)


def make_mesh(data: int, fsdp: int, tensor: int, devices: Sequence[jax.Device] | None = None) -> Mesh:
  devices = list(devices if devices is not None else jax.devices())
  shape = resolve_mesh_shape(data, fsdp, tensor, len(devices))
  # Auto axes: jax.make_mesh defaults to Explicit axes, which break the
  # embedding gathers of the models.
  try:
    device_array = mesh_utils.create_device_mesh(shape, devices)
  except Exception:  # noqa: BLE001  (uneven topologies: plain order is fine)
    device_array = np.asarray(devices).reshape(shape)
  return Mesh(device_array, MESH_AXES, axis_types=(AxisType.Auto,) * 3)


@dataclasses.dataclass(frozen=True)
class ModelSharding:
  """Place each parameter of a model on `mesh` as its logical axis names say
  under `rules` (the training layout), rather than one sharding for all."""
  mesh: Mesh
  rules: tuple


def param_shardings(abstract_model, mesh: Mesh, rules) -> dict:
  """{path: NamedSharding} of every parameter of an nnx model (abstract, from
  `nnx.eval_shape`) from the logical axis names it was built with."""
  from flax import nnx  # noqa: PLC0415

  state = nnx.split(abstract_model)[1]
  names = {a for leaf in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, nnx.Variable))
           for a in (leaf.get_metadata().get("sharding") or leaf.get_metadata().get("out_sharding") or ())}
  check_rules(rules, names)
  with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
    return nnx.to_pure_dict(nnx.get_named_sharding(state, mesh))


def parse_mesh(text: str, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A mesh from "DATA,FSDP,TENSOR" (one of them may be -1: the rest), as the
  inference commands' --mesh option takes it."""
  try:
    sizes = [int(x) for x in text.split(",")]
  except ValueError:
    sizes = []
  if len(sizes) != 3:
    raise LmjaxError(f"--mesh {text!r}: give three sizes DATA,FSDP,TENSOR, e.g. --mesh 1,4,2 (one may be -1).")
  return make_mesh(*sizes, devices=devices)


def check_rules(rules, names: set[str]) -> None:
  known = {name for name, _ in rules}
  missing = sorted(n for n in names if n is not None and n not in known)
  if missing:
    raise LmjaxError(f"Logical axis names {missing} have no sharding rule; add them to lmjax.sharding.RULE_SETS.")


def spec(axes: Sequence[str | None], rules) -> PartitionSpec:
  table = dict(rules)
  return PartitionSpec(*(table.get(a) if a is not None else None for a in axes))


# The rules in force while a step is traced; `constrain` reads them.
_active = threading.local()


@contextlib.contextmanager
def activation_rules(mesh: Mesh, rules):
  previous = getattr(_active, "value", None)
  _active.value = (mesh, rules)
  try:
    yield
  finally:
    _active.value = previous


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
  """Sharding constraint by logical axes; a no-op outside `activation_rules`."""
  active = getattr(_active, "value", None)
  if active is None:
    return x
  mesh, rules = active
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec(axes, rules)))


def layout(axes: Sequence[str | None]) -> tuple[Mesh, PartitionSpec] | None:
  """(mesh, PartitionSpec) of the logical `axes` under the active rules; None outside `activation_rules`."""
  active = getattr(_active, "value", None)
  if active is None:
    return None
  mesh, rules = active
  return mesh, spec(axes, rules)


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec(BATCH, *([None] * (ndim - 1))))


def data_parallel_size(mesh: Mesh) -> int:
  return mesh.shape["data"] * mesh.shape["fsdp"]
