"""Timestep respacing of the official `space_timesteps` (DiT `diffusion/respace.py`)."""
from __future__ import annotations

from typing import Sequence, Union

from nag_jax.errors import UserError


def space_timesteps(num_timesteps: int, section_counts: Union[str, Sequence[int]]) -> set[int]:
  """Original timesteps kept when striding `num_timesteps` into sections of the given step counts.

  `section_counts` is a list of counts, a comma-separated string of counts ("250", "10,15,20"), or
  "ddimN" (the DDIM paper's integer stride). Uses Python's `round` (banker's rounding), as upstream.
  """
  if isinstance(section_counts, str):
    if section_counts.startswith("ddim"):
      desired = _parse_int(section_counts[len("ddim"):], section_counts)
      for stride in range(1, num_timesteps):
        if len(range(0, num_timesteps, stride)) == desired:
          return set(range(0, num_timesteps, stride))
      raise UserError(f"cannot create exactly {desired} steps from {num_timesteps} with an integer stride")
    section_counts = [_parse_int(s, section_counts) for s in section_counts.split(",")]
  if not section_counts or any(c < 1 for c in section_counts):
    raise UserError(f"section counts must be positive integers, got {section_counts!r}")
  size_per, extra = divmod(num_timesteps, len(section_counts))
  start, steps = 0, []
  for i, count in enumerate(section_counts):
    size = size_per + (1 if i < extra else 0)
    if size < count:
      raise UserError(f"cannot divide a section of {size} steps into {count}")
    stride = 1 if count <= 1 else (size - 1) / (count - 1)
    cur = 0.0
    for _ in range(count):
      steps.append(start + round(cur))
      cur += stride
    start += size
  return set(steps)


def _parse_int(text: str, spec: str) -> int:
  """int(text), or a ValueError that shows the whole respacing spec."""
  try:
    return int(text)
  except ValueError:
    raise UserError(f"bad timestep respacing {spec!r}: expected 'N', 'N1,N2,...' or 'ddimN'") from None
