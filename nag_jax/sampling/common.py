"""Pieces shared by the samplers: output type, per-step noise, input checks, float32 time grids."""
from __future__ import annotations

from typing import Any, NamedTuple, Optional, Sequence

import jax
import numpy as np

from nag_jax.errors import UserError


class SampleOutput(NamedTuple):
  """Final state, optional per-step states (trajectory[k] = state after step k) and model calls."""
  x: jax.Array
  trajectory: Optional[jax.Array]
  nfe: Any  # int for fixed grids, a scalar array for adaptive solvers


def step_noise(key: Optional[jax.Array], k: jax.Array, x: jax.Array,
               injected: Optional[jax.Array]) -> jax.Array:
  """The noise of step k: `injected` if given, else normal(fold_in(key, k)) shaped and typed like x."""
  if injected is not None:
    return injected
  return jax.random.normal(jax.random.fold_in(key, k), x.shape, x.dtype)


def check_choice(what: str, value: Any, allowed: Sequence[Any]) -> None:
  """Raises ValueError naming the bad value and the allowed ones."""
  if value not in allowed:
    raise UserError(f"unknown {what} {value!r}; expected one of {tuple(allowed)}")


def check_noises(noises: Optional[jax.Array], key: Optional[jax.Array], num_noisy: int,
                 x: jax.Array, draws: bool = True) -> None:
  """Checks injected noises' shape (num_noisy, *x.shape), or that a key is there if the sampler draws."""
  if noises is not None:
    expected = (num_noisy,) + tuple(x.shape)
    if tuple(noises.shape) != expected:
      raise UserError(f"noises must have shape {expected}, got {tuple(noises.shape)}")
  elif key is None and draws:
    raise UserError("this sampler draws noise: pass a PRNG key (or injected noises)")


def linspace_f32(start: float, stop: float, num: int) -> np.ndarray:
  """float32 `torch.linspace`: start + k*step, then stop - (n-1-k)*step, one rounding each (as its FMA)."""
  start, stop = np.float32(start), np.float32(stop)
  step = np.float64((stop - start) / np.float32(num - 1))
  k = np.arange(num, dtype=np.float64)
  head = (np.float64(start) + step * k).astype(np.float32)
  tail = (np.float64(stop) - step * (num - 1 - k)).astype(np.float32)
  return np.where(k < num // 2, head, tail)
