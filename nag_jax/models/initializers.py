"""The official DiT initialisation, with logical axis names attached for sharding."""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn

xavier = nn.initializers.xavier_uniform()
normal002 = nn.initializers.normal(stddev=0.02)
zeros = nn.initializers.zeros


def partitioned(fn, names: Sequence[str | None]):
  """Attach logical axis names to an initializer (mapped onto a mesh by nag_jax.sharding)."""
  return nn.with_logical_partitioning(fn, tuple(names))


def patch_embed_init(key, shape, dtype):
  """Conv kernel (p, p, C, D) initialised as a xavier-uniform Linear of fan-in p*p*C (official L195-197)."""
  p1, p2, c, d = shape
  return xavier(key, (p1 * p2 * c, d), dtype).reshape(shape)
