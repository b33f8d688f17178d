"""Shared benchmark helpers: wall-clock timing of jitted calls and the machine's measured matmul rate."""
from __future__ import annotations

import os
import random
import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp


def time_call(fn: Callable, *args, repeats: int = 3) -> float:
  """Median wall time in seconds of `repeats` calls of `fn(*args)` after one warm-up call (compile excluded)."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def round_order(items: list, round_index: int) -> list:
  """`items` in round `round_index`'s order, shuffled with that seed: in a fixed order every command runs after
  the same one, and on a 2-core VM DiT's sampler right after torch's lost about 10% (README, Benchmarks)."""
  return random.Random(round_index).sample(items, len(items))


def alternated(calls: dict[Any, Callable[[], object]], repeats: int) -> tuple[dict[Any, float], list[float]]:
  """Median wall seconds of each call over `repeats` rounds that run every call once, in `round_order` (after one
  warm-up call each), and the 1-minute load average at the start of each round: alternating the commands
  exposes them to the same load on a shared machine."""
  for fn in calls.values():
    jax.block_until_ready(fn())
  times: dict[Any, list[float]] = {k: [] for k in calls}
  loads = []
  for r in range(repeats):
    loads.append(os.getloadavg()[0])
    for k in round_order(list(calls), r):
      t0 = time.perf_counter()
      jax.block_until_ready(calls[k]())
      times[k].append(time.perf_counter() - t0)
  return {k: statistics.median(v) for k, v in times.items()}, loads


def matmul_flops_per_s(options: dict[str, str], n: int = 2048, dtype=jnp.float32) -> float:
  """Achieved FLOP/s of one n x n x n matmul under XLA on this machine (2 n^3 FLOPs), compiled with `options`
  (the model's `dot_compiler_options`)."""
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  f = jax.jit(lambda x: x @ x, compiler_options=options)
  return 2 * n ** 3 / time_call(f, a, repeats=5)


def compiled_flops(fn: Callable, *args) -> float:
  """FLOPs of one call as counted by XLA's cost analysis of the compiled program."""
  cost = jax.jit(fn).lower(*args).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", 0.0))
