"""Denoiser segments: one `lax.scan` per run of steps that share the same active guidance terms.

A guidance term switched off for part of the noise range must not be traced there, so a sampler takes
either one `denoise(x, t_model)` or a list of `(start_step, stop_step, denoise)` covering its steps in
order, and scans each segment with its own (static) callable.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Hashable, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

Denoise = Callable[[jax.Array, jax.Array], jax.Array]
Segment = tuple[int, int, Denoise]
DenoiseSpec = Union[Denoise, Sequence[Segment]]


def group_steps(nu: np.ndarray,
                active_terms: Callable[[float], Hashable]) -> list[tuple[int, int, Hashable]]:
  """Runs (start, stop, key) of consecutive steps whose `active_terms(nu[k])` key is equal.

  `nu` is a sampler's static per-step noise fraction (1 = noise, 0 = data); build one segment per run.
  """
  runs = []
  for k, level in enumerate(np.asarray(nu, dtype=np.float64)):
    key = active_terms(float(level))
    if runs and runs[-1][2] == key:
      runs[-1] = (runs[-1][0], k + 1, key)
    else:
      runs.append((k, k + 1, key))
  return runs


def as_segments(denoise: DenoiseSpec, num_steps: int) -> list[Segment]:
  """Normalises `denoise` to segments and checks that they cover steps 0..num_steps-1 in order."""
  if callable(denoise):
    return [(0, num_steps, denoise)]
  segments, expected = [], 0
  for seg in denoise:
    if len(seg) != 3 or not callable(seg[2]):
      raise ValueError(f"a segment must be (start_step, stop_step, denoise), got {seg!r}")
    start, stop, fn = int(seg[0]), int(seg[1]), seg[2]
    if start != expected or stop <= start:
      raise ValueError(f"segments must cover steps 0..{num_steps - 1} in order without gaps; "
                       f"got ({start}, {stop}) where ({expected}, >{expected}) was expected")
    segments.append((start, stop, fn))
    expected = stop
  if expected != num_steps:
    raise ValueError(f"segments cover steps 0..{expected - 1}, the sampler has {num_steps} steps")
  return segments


def clip_segments(segments: Sequence[Segment], stop: int) -> list[Segment]:
  """The segments restricted to steps [0, stop) (empty ones dropped)."""
  return [(a, min(b, stop), fn) for a, b, fn in segments if a < stop]


def denoise_at(segments: Sequence[Segment], step: int) -> Denoise:
  """The callable of the segment that contains `step`."""
  return next(fn for a, b, fn in segments if a <= step < b)


def scan_segments(step: Callable[[Denoise, Any, Any], tuple[Any, Any]], carry: Any, xs: Any,
                  segments: Sequence[Segment]) -> tuple[Any, Any]:
  """Runs `step(denoise, carry, x_k)` over per-step inputs `xs` (leading axis = step), one scan a segment.

  Returns the final carry and the per-step outputs concatenated over segments (None if none).
  """
  outputs = []
  for start, stop, fn in segments:
    part = jax.tree.map(lambda a, s=start, e=stop: a[s:e], xs)
    carry, ys = jax.lax.scan(functools.partial(step, fn), carry, part)
    outputs.append(ys)
  if not outputs or outputs[0] is None:
    return carry, None
  return carry, jax.tree.map(lambda *a: jnp.concatenate(a), *outputs)
