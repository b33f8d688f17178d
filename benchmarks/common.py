"""Shared benchmark helpers: wall-clock timing of jitted calls and the machine's measured matmul rate."""
from __future__ import annotations

import time
from typing import Callable

import jax
import jax.numpy as jnp


def time_call(fn: Callable, *args, repeats: int = 3) -> float:
  """Best wall time in seconds of `fn(*args)` after one warm-up call (compile excluded)."""
  jax.block_until_ready(fn(*args))
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - t0)
  return best


def matmul_flops_per_s(n: int = 2048, dtype=jnp.float32) -> float:
  """Achieved FLOP/s of one n x n x n matmul under XLA on this machine (2 n^3 FLOPs)."""
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  f = jax.jit(lambda x: x @ x)
  return 2 * n ** 3 / time_call(f, a, repeats=5)


def compiled_flops(fn: Callable, *args) -> float:
  """FLOPs of one call as counted by XLA's cost analysis of the compiled program."""
  cost = jax.jit(fn).lower(*args).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", 0.0))
