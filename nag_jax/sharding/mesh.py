"""Device mesh from config: axes (data, fsdp, tensor), -1 fills the remaining devices, optional DCN split."""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh

from nag_jax.errors import UserError

AXES = ("data", "fsdp", "tensor")
DCN = "dcn"  # optional key of a mesh config: {axis: number of slices (or hosts) it spans}


def default_mesh_config() -> dict:
  """Config entry of a mesh: data parallel over every device; `dcn` = slices (or hosts) each axis spans."""
  return {"data": -1, "fsdp": 1, "tensor": 1, DCN: {a: 1 for a in AXES}}


def resolve_shape(shape: Mapping[str, int], num_devices: int) -> dict:
  """Fills the one -1 axis so the product equals num_devices; a clear error when it cannot.

  A `dcn` entry (the multi-slice split, see `make_mesh`) is ignored here.
  """
  unknown = sorted(set(shape) - set(AXES) - {DCN})
  if unknown:
    raise UserError(f"unknown mesh axes {unknown}; known: {AXES} (and {DCN!r} for multi-slice)")
  sizes = {a: int(shape.get(a, 1)) for a in AXES}
  free = [a for a, s in sizes.items() if s == -1]
  if len(free) > 1 or any(s == 0 or s < -1 for s in sizes.values()):
    raise UserError(f"mesh {sizes}: each axis must be a positive size, and at most one may be -1")
  fixed = math.prod(s for s in sizes.values() if s != -1)
  if num_devices % fixed:
    raise UserError(f"mesh {sizes} does not divide the {num_devices} devices")
  if free:
    sizes[free[0]] = num_devices // fixed
  if math.prod(sizes.values()) != num_devices:
    raise UserError(f"mesh {sizes} has {math.prod(sizes.values())} devices, but {num_devices} are available")
  return sizes


def make_mesh(shape: Mapping[str, int] | None = None, devices: Sequence | None = None,
              dcn_shape: Mapping[str, int] | None = None) -> Mesh:
  """Mesh with Auto axis types (GSPMD propagates activations; parameters carry explicit shardings).

  `dcn_shape` (or a `dcn` entry of `shape`) says how many slices each axis spans: a hybrid ICI x DCN
  mesh for multi-slice TPU, or for GPU hosts (then each process is one "slice"). Usually only
  `data` crosses the slow network: e.g. {"data": -1, "fsdp": 8, "dcn": {"data": 4}} on 4 slices.
  """
  shape = dict(shape or {"data": -1})
  dcn_shape = shape.pop(DCN, None) if dcn_shape is None else dcn_shape
  devices = list(devices if devices is not None else jax.devices())
  sizes = resolve_shape(shape, len(devices))
  dims = tuple(sizes[a] for a in AXES)
  if dcn_shape and math.prod(int(v) for v in dcn_shape.values()) > 1:
    grid = _hybrid_grid(sizes, dcn_shape, devices)
  elif devices == jax.devices():
    grid = mesh_utils.create_device_mesh(dims, devices=devices)
  else:
    grid = np.asarray(devices, dtype=object).reshape(dims)
  return Mesh(grid, AXES, axis_types=(AxisType.Auto,) * len(AXES))


def _hybrid_grid(sizes: dict, dcn_shape: Mapping[str, int], devices: list) -> np.ndarray:
  """Device grid whose axes are split into (within a slice) x (across slices)."""
  unknown = sorted(set(dcn_shape) - set(AXES))
  if unknown:
    raise UserError(f"unknown dcn mesh axes {unknown}; known: {AXES}")
  dcn = {a: int(dcn_shape.get(a, 1)) for a in AXES}
  bad = [a for a in AXES if dcn[a] < 1 or sizes[a] % dcn[a]]
  if bad:
    raise UserError(f"dcn split {dcn} does not divide the mesh {sizes} along {bad}")
  by_slice = len({getattr(d, "slice_index", 0) for d in devices}) > 1
  granules = len({d.slice_index if by_slice else d.process_index for d in devices})
  if math.prod(dcn.values()) != granules:
    kind = "slices" if by_slice else "processes"
    raise UserError(f"dcn split {dcn} needs {math.prod(dcn.values())} {kind}, but the devices span {granules}")
  ici = tuple(sizes[a] // dcn[a] for a in AXES)
  return mesh_utils.create_hybrid_device_mesh(ici, tuple(dcn[a] for a in AXES), devices=devices,
                                              process_is_granule=not by_slice)
