"""Device mesh from config: axes (data, fsdp, tensor), -1 fills the remaining devices, optional DCN axis."""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh

AXES = ("data", "fsdp", "tensor")


def resolve_shape(shape: Mapping[str, int], num_devices: int) -> dict:
  """Fills the one -1 axis so the product equals num_devices; a clear error when it cannot."""
  unknown = sorted(set(shape) - set(AXES))
  if unknown:
    raise ValueError(f"unknown mesh axes {unknown}; known: {AXES}")
  sizes = {a: int(shape.get(a, 1)) for a in AXES}
  free = [a for a, s in sizes.items() if s == -1]
  if len(free) > 1 or any(s == 0 or s < -1 for s in sizes.values()):
    raise ValueError(f"mesh {sizes}: each axis must be a positive size, and at most one may be -1")
  fixed = math.prod(s for s in sizes.values() if s != -1)
  if num_devices % fixed:
    raise ValueError(f"mesh {sizes} does not divide the {num_devices} devices")
  if free:
    sizes[free[0]] = num_devices // fixed
  if math.prod(sizes.values()) != num_devices:
    raise ValueError(f"mesh {sizes} has {math.prod(sizes.values())} devices, but {num_devices} are available")
  return sizes


def make_mesh(shape: Mapping[str, int] | None = None, devices: Sequence | None = None,
              dcn_shape: Mapping[str, int] | None = None) -> Mesh:
  """Mesh with Auto axis types (GSPMD propagates activations; parameters carry explicit shardings).

  `dcn_shape` gives the per-slice split of each axis for multi-slice TPU (hybrid ICI x DCN mesh).
  """
  devices = list(devices if devices is not None else jax.devices())
  sizes = resolve_shape(shape or {"data": -1}, len(devices))
  dims = tuple(sizes[a] for a in AXES)
  if dcn_shape:
    dcn = tuple(int(dcn_shape.get(a, 1)) for a in AXES)
    ici = tuple(d // c for d, c in zip(dims, dcn))
    grid = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices=devices)
  elif devices == jax.devices():
    grid = mesh_utils.create_device_mesh(dims, devices=devices)
  else:
    grid = np.asarray(devices, dtype=object).reshape(dims)
  return Mesh(grid, AXES, axis_types=(AxisType.Auto,) * len(AXES))
