"""Benchmark: jitted SD-VAE decode (latents -> uint8 images) with the full sd-vae-ft-ema config, random weights.

  python benchmarks/vae_decode.py --batch 8 --size 256 --repeats 3 --dtypes float32,bfloat16

One row per compute dtype: compile time, seconds per batch after compile (best and mean of the repeats),
images/s from the best, the process CPU seconds per batch (wall time on a shared host is
contention; CPU time is not), XLA's FLOP count per image and the achieved GFLOP/s, and the peak host RSS.
"""
from __future__ import annotations

import argparse
import resource
import time

import jax
import jax.numpy as jnp

from nag_jax.models import vae_io
from nag_jax.models.vae import SD_VAE, AutoencoderKL, dummy_images



def bench(dtype: str, batch: int, size: int, repeats: int, params: dict) -> dict:
  """Compiles and times decode_to_uint8 for one compute dtype; returns the row's numbers."""
  module = AutoencoderKL(SD_VAE, dtype=jnp.dtype(dtype))
  side = size // SD_VAE.downsample_factor
  latents = jax.random.normal(jax.random.key(1), (batch, side, side, SD_VAE.latent_channels))
  t0 = time.perf_counter()
  compiled = jax.jit(lambda p, z: vae_io.decode_to_uint8(module, p, z)).lower(params, latents).compile()
  compile_s = time.perf_counter() - t0
  times, cpu = [], []
  for _ in range(repeats):
    t0, c0 = time.perf_counter(), time.process_time()
    jax.block_until_ready(compiled(params, latents))
    times.append(time.perf_counter() - t0)
    cpu.append(time.process_time() - c0)
  cost = compiled.cost_analysis()
  flops = (cost[0] if isinstance(cost, list) else cost or {}).get("flops", float("nan"))
  return {"dtype": dtype, "compile_s": compile_s, "best_s": min(times), "mean_s": sum(times) / len(times),
          "cpu_s": min(cpu),
          "img_s": batch / min(times), "gflop_img": flops / batch / 1e9, "gflop_s": flops / min(times) / 1e9}


def main(argv: list[str] | None = None) -> None:
  """Parses flags, initialises random params once and prints the table."""
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--size", type=int, default=256, help="image side in pixels (latent side is size / 8)")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated compute dtypes")
  args = p.parse_args(argv)
  params = jax.jit(AutoencoderKL(SD_VAE).init)(jax.random.key(0), dummy_images(SD_VAE))["params"]
  n = sum(x.size for x in jax.tree.leaves(params))
  print(f"SD-VAE decode, batch {args.batch} at {args.size}x{args.size}, {n:,} params (f32), "
        f"{jax.devices()[0].device_kind} x{jax.device_count()}, repeats {args.repeats}")
  print("| dtype | compile s | best s/batch | mean s/batch | images/s | CPU s/batch | GFLOP/img | GFLOP/s "
        "| peak RSS GiB |")
  print("|---|---|---|---|---|---|---|---|---|")
  for dtype in args.dtypes.split(","):
    r = bench(dtype, args.batch, args.size, args.repeats, params)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"| {r['dtype']} | {r['compile_s']:.1f} | {r['best_s']:.2f} | {r['mean_s']:.2f} | {r['img_s']:.3f} "
          f"| {r['cpu_s']:.1f} | {r['gflop_img']:.0f} | {r['gflop_s']:.0f} | {rss:.1f} |", flush=True)


if __name__ == "__main__":
  main()
