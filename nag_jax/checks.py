"""Input checks at the library boundary (class labels, finite numbers, positive counts), one sentence each.

The CLIs check their flags too, but the Python API must not turn a bad value into silently wrong
numbers: JAX clamps or NaN-fills out-of-range gathers, and NaN compares false with every bound.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nag_jax.errors import UserError


def check_finite(name: str, value: Any) -> None:
  """Raises UserError unless `value` is a real number that is neither NaN nor infinite."""
  if not _is_finite(value):
    raise UserError(f"{name} must be a finite number, got {value!r}")


def check_positive(name: str, value: Any) -> None:
  """Raises UserError unless `value` is an integer count >= 1."""
  if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
    raise UserError(f"{name} must be a whole number >= 1, got {value!r}")


def is_traced(x: Any) -> bool:
  """True for a value whose contents are unknown now (inside jit/vmap, or on other processes' devices)."""
  return isinstance(x, jax.core.Tracer) or (isinstance(x, jax.Array) and not x.is_fully_addressable)


def check_labels(labels: Any, num_classes: int, what: str = "labels") -> None:
  """Raises UserError unless `labels` is a non-empty 1-D integer array of class ids in [0, num_classes).

  The null (unconditional) class id `num_classes` is internal to guidance and training and is refused
  too. Dtype and shape are checked always; values only when they are concrete (not traced).
  """
  dtype = np.dtype(labels.dtype if hasattr(labels, "dtype") else np.asarray(labels).dtype)
  if dtype.kind not in "iu":
    raise UserError(f"{what} must be integer class ids, got dtype {dtype}")
  shape = tuple(np.shape(labels))
  if len(shape) != 1 or shape[0] == 0:
    raise UserError(f"{what} must be a non-empty 1-D array of class ids, got shape {shape}")
  if is_traced(labels):
    return
  values = np.asarray(labels)
  bad = np.unique(values[(values < 0) | (values >= num_classes)])
  if bad.size:
    raise UserError(f"{what} must be class ids in [0, {num_classes}), got {bad[:5].tolist()}"
                    f"{' ...' if bad.size > 5 else ''}")


def poison_invalid_rows(x: jax.Array, labels: jax.Array, num_classes: int, axis: int = 0) -> jax.Array:
  """x with every row (along the batch `axis`) whose label lies outside [0, num_classes) set to NaN.

  The guard for traced labels, which cannot raise: a bad label yields NaN rows, never another
  class's samples (JAX would clamp -11 to class 0 and wrap -1 to the null class).
  """
  valid = (labels >= 0) & (labels < num_classes)
  shape = [1] * x.ndim
  shape[axis] = -1
  return jnp.where(valid.reshape(shape), x, jnp.asarray(jnp.nan, x.dtype))


def nonfinite_fields(config: Any) -> list[str]:
  """One problem per float field (scalar or tuple, e.g. an interval) of dataclass `config` holding NaN/inf.

  NaN passes no `<`/`>=` range check's failure branch (every comparison is false), so finiteness comes first.
  """
  problems = []
  for field in dataclasses.fields(config):
    if "float" not in str(field.type):
      continue
    value = getattr(config, field.name)
    if isinstance(value, (tuple, list)):
      if not all(_is_finite(v) for v in value):
        problems.append(f"{field.name} must hold finite numbers, got {tuple(value)}")
    elif value is not None and not _is_finite(value):
      problems.append(f"{field.name} must be a finite number, got {value!r}")
  return problems


def _is_finite(value: Any) -> bool:
  return not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)
