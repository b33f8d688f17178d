"""Train-step throughput: steps/s and achieved FLOP/s of the jitted train step, against a large matmul's rate.

  python benchmarks/train.py [--model DiT-S/2] [--batch 4] [--steps 5] [--dtype float32]

FLOPs per step come from XLA's cost analysis of the compiled step and, for comparison, from the
model's analytic count (3 x 2 x the per-image multiply-accumulates of the paper's Table 3, times the
batch). The reference rate is the best of a few float32 matmuls of `--matmul-size`, timed in the same
run; "fraction" = achieved FLOP/s / matmul FLOP/s (the MFU definition of the house style).
"""
import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from nag_jax.sharding import make_mesh
from nag_jax.training import create_objective, get_base_config, jit_train_step, model_fields
from nag_jax.training.config_validation import model_config_of
from nag_jax.training.init_state import state_initializer

# Per-image forward multiply-accumulates at 256x256 (paper Table 3 "FLOPs (G)", which counts MACs).
TABLE3_GMACS = {"S": 6.0, "B": 23.0, "L": 80.7, "XL": 118.6}


def matmul_rate(n: int, repeats: int = 5) -> float:
  """Best FLOP/s of an (n, n) @ (n, n) float32 matmul (2 n^3 FLOPs)."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  best = min(_timed(lambda: f(a).block_until_ready()) for _ in range(repeats))
  return 2 * n ** 3 / best


def _timed(fn) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model", default="DiT-S/2")
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--steps", type=int, default=5, help="timed steps (after one warm-up step)")
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  p.add_argument("--matmul-size", type=int, default=2048)
  args = p.parse_args()
  jax.config.update("jax_threefry_partitionable", True)

  config = get_base_config()
  config.model = model_fields(args.model, image_size=256, dtype=args.dtype)
  config.global_batch_size = args.batch
  mesh = make_mesh({"data": -1})
  mc = model_config_of(config)
  initialize, abstract, schedule = state_initializer(config, mc, mesh)
  step = jit_train_step(jax.tree.map(lambda s: s.sharding, abstract), mesh,
                        objective=create_objective(mc, config.objective), learning_rate_fn=schedule)
  rng = np.random.default_rng(0)
  batch = {"x": rng.normal(size=(args.batch, mc.input_size, mc.input_size, mc.in_channels)).astype(np.float32),
           "y": rng.integers(0, mc.num_classes, args.batch).astype(np.int32)}
  state = initialize()
  start = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  cost = compiled.cost_analysis()
  xla_flops = float((cost[0] if isinstance(cost, list) else cost).get("flops", float("nan")))
  state, _ = compiled(state, batch)  # warm-up
  jax.block_until_ready(state)

  def run():
    nonlocal state
    for _ in range(args.steps):
      state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)

  seconds = _timed(run) / args.steps
  size = args.model.split("-")[1].split("/")[0]
  analytic = 3 * 2 * TABLE3_GMACS[size] * 1e9 * args.batch
  peak = matmul_rate(args.matmul_size)
  rows = [
      ("device", str(jax.devices()[0].device_kind), ""),
      ("model / batch / dtype", f"{args.model} / {args.batch} / {args.dtype}", ""),
      ("compile", f"{compile_s:.1f}", "s"),
      ("step time", f"{seconds:.3f}", "s"),
      ("steps per second", f"{1 / seconds:.3f}", "1/s"),
      ("FLOPs per step (XLA cost analysis)", f"{xla_flops / 1e9:.1f}", "GFLOP"),
      ("FLOPs per step (analytic, 6 x MACs x batch)", f"{analytic / 1e9:.1f}", "GFLOP"),
      ("achieved (XLA FLOPs / step time)", f"{xla_flops / seconds / 1e9:.1f}", "GFLOP/s"),
      (f"float32 matmul {args.matmul_size}^3 (best of 5)", f"{peak / 1e9:.1f}", "GFLOP/s"),
      ("fraction of the matmul rate", f"{xla_flops / seconds / peak:.2f}", ""),
  ]
  width = max(len(r[0]) for r in rows)
  print(f"{'quantity':<{width}}  {'value':>22}  unit")
  for name, value, unit in rows:
    print(f"{name:<{width}}  {value:>22}  {unit}")


if __name__ == "__main__":
  main()
