"""Denoiser segments: one `lax.scan` per run of steps that share the same active guidance terms.

A guidance term switched off for part of the noise range must not be traced there, so a sampler takes
either one `denoise(x, t_model)` or a list of `(start_step, stop_step, denoise)` covering its steps in
order, and scans each segment with its own (static) callable. A `Stateful` denoiser (APG's momentum)
carries a state from step to step: the sampler gets a `state_cell` and the scan threads it in its carry.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Hashable, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from nag_jax.errors import UserError

Denoise = Callable[[jax.Array, jax.Array], jax.Array]
Segment = tuple[int, int, Denoise]
DenoiseSpec = Union[Denoise, Sequence[Segment]]


class Stateful:
  """A denoiser with a state across steps: `init(x)` gives it, `step(x, t, state)` -> (output, new state)."""

  def __init__(self, step: Callable[[jax.Array, jax.Array, Any], tuple[jax.Array, Any]],
               init: Callable[[jax.Array], Any]):
    self.step, self.init = step, init

  def __call__(self, x: jax.Array, t: jax.Array) -> jax.Array:
    raise UserError("this denoiser carries a state across steps (APG momentum); this sampler cannot "
                    "carry it (use a fixed-grid sampler)")


def state_cell(segments: Sequence[Segment], x: jax.Array) -> list | None:
  """[initial state] when some segment's denoiser is `Stateful` (one state shared by all), else None."""
  inits = [fn.init(x) for _, _, fn in segments if isinstance(fn, Stateful)]
  return [inits[0]] if inits else None


def bind(fn: Denoise, cell: list | None) -> Denoise:
  """`fn` as a plain denoise(x, t); a `Stateful` one reads and replaces `cell[0]` at each call."""
  if not isinstance(fn, Stateful):
    return fn
  if cell is None:
    raise UserError("a Stateful denoiser needs the state cell of `state_cell`")

  def call(x: jax.Array, t: jax.Array) -> jax.Array:
    out, cell[0] = fn.step(x, t, cell[0])
    return out
  return call


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
      raise UserError(f"a segment must be (start_step, stop_step, denoise), got {seg!r}")
    start, stop, fn = int(seg[0]), int(seg[1]), seg[2]
    if start != expected or stop <= start:
      raise UserError(f"segments must cover steps 0..{num_steps - 1} in order without gaps; "
                      f"got ({start}, {stop}) where ({expected}, >{expected}) was expected")
    segments.append((start, stop, fn))
    expected = stop
  if expected != num_steps:
    raise UserError(f"segments cover steps 0..{expected - 1}, the sampler has {num_steps} steps")
  return segments


def clip_segments(segments: Sequence[Segment], stop: int) -> list[Segment]:
  """The segments restricted to steps [0, stop) (empty ones dropped)."""
  return [(a, min(b, stop), fn) for a, b, fn in segments if a < stop]


def denoise_at(segments: Sequence[Segment], step: int) -> Denoise:
  """The callable of the segment that contains `step`."""
  return next(fn for a, b, fn in segments if a <= step < b)


def scan_segments(step: Callable[[Denoise, Any, Any], tuple[Any, Any]], carry: Any, xs: Any,
                  segments: Sequence[Segment], cell: list | None = None) -> tuple[Any, Any]:
  """Runs `step(denoise, carry, x_k)` over per-step inputs `xs` (leading axis = step), one scan a segment.

  Returns the final carry and the per-step outputs concatenated over segments (None if none). With a
  `cell` (of `state_cell`) the denoisers' state rides the scan carry and `cell[0]` ends as the final state.
  """
  outputs = []
  for start, stop, fn in segments:
    part = jax.tree.map(lambda a, s=start, e=stop: a[s:e], xs)
    if cell is None:
      carry, ys = jax.lax.scan(functools.partial(step, fn), carry, part)
    else:
      def body(c, s, fn=fn):
        inner = [c[1]]
        new, y = step(bind(fn, inner), c[0], s)
        return (new, inner[0]), y
      (carry, cell[0]), ys = jax.lax.scan(body, (carry, cell[0]), part)
    outputs.append(ys)
  if not outputs or outputs[0] is None:
    return carry, None
  return carry, jax.tree.map(lambda *a: jnp.concatenate(a), *outputs)
