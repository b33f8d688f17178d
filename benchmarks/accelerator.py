"""GPU/TPU sampling benchmark: DiT-XL/2 and SiT-XL/2 at 256x256 in bfloat16, NAG+CFG, by attention backend.

  python -m benchmarks.accelerator [--images 64,256] [--attention xla,cudnn,flash] [--peak-tflops 989]
  python -m benchmarks.accelerator --dry     # a tiny model on any device (CPU included): checks the script

For each model, image count and attention backend (default: the platform's, "auto" and its kernels: xla, cudnn
and Pallas flash on GPU, xla and Pallas splash on TPU): the 250-step sampler is compiled on one device (compile seconds reported),
then a 10-step sampler of the same program is timed (median of 3 calls) and its time per step scaled to 250
steps. img/s = images / (250 x step time); MFU = the network rows per image (750 for NAG+CFG over 250 steps,
`pipeline.network_rows`) x images x the FLOPs of one forward (`hardware.forward_flops`: 237 GFLOP for XL/2) /
time / the chip's peak bf16 FLOP/s (`hardware.peak_flops`); "projected" is the img/s at 50% of that peak, the
figure docs/benchmarks.md lists until a device measures it. Peak memory from the device's allocator
(`memory_stats()["peak_bytes_in_use"]`, where the backend reports it). A case that fails (no cuDNN on this
platform, out of memory) prints its one-line error in the table.
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Sequence

import jax
import jax.numpy as jnp

from benchmarks.vs_torch import wall_time
from nag_jax import hardware, platform
from nag_jax.guidance import GuidanceConfig
from nag_jax.models import ModelConfig, get_model_config, init_params
from nag_jax.sampling.pipeline import SamplerConfig, build_sampler, network_rows

GUIDANCE = GuidanceConfig(cfg_scale=1.5, nag_scale=2.0)  # NAG + CFG: 3 model branches per step
ATTENTION = {"gpu": "auto,cudnn,flash", "tpu": "auto,splash", "cpu": "auto"}  # "auto" is xla on GPU and TPU
DRY_CONFIG = ModelConfig(family="dit", input_size=8, hidden_size=64, depth=2, num_heads=4, num_classes=10,
                         dtype="bfloat16")


def peak_flops(device_kind: str, override_tflops: float | None) -> float | None:
  """The chip's dense bf16 peak FLOP/s, from --peak-tflops or nag_jax.hardware; None when unknown (no MFU)."""
  return override_tflops * 1e12 if override_tflops else hardware.peak_flops(device_kind)


def peak_memory_gib() -> float | None:
  """Peak bytes the first device's allocator has held, in GiB; None where the backend has no stats."""
  stats = jax.devices()[0].memory_stats() or {}
  return stats["peak_bytes_in_use"] / 2 ** 30 if "peak_bytes_in_use" in stats else None


def bench_case(config: ModelConfig, images: int, steps: int, timed_steps: int, method: str,
               peak: float | None) -> dict:
  """Compile the `steps` sampler, time the `timed_steps` one; img/s and MFU scaled to `steps`."""
  device = jax.devices()[:1]
  params = jax.jit(lambda k: init_params(config, k))(jax.random.key(0))
  labels = jnp.arange(images, dtype=jnp.int32) % config.num_classes
  sampler = SamplerConfig(method=method, num_steps=steps)
  flops = network_rows(config, sampler, GUIDANCE) * hardware.forward_flops(config) * images
  sample = build_sampler(config, sampler, GUIDANCE, jit=False, devices=device)
  full = jax.jit(sample, compiler_options=sample.compiler_options)
  t0 = time.perf_counter()
  full.lower(params, jax.random.key(1), labels).compile()
  compile_s = time.perf_counter() - t0
  short = build_sampler(config, SamplerConfig(method=method, num_steps=timed_steps), GUIDANCE, devices=device)
  call = lambda: short(params, jax.random.key(1), labels)["latents"]
  jax.block_until_ready(call())
  step_s = statistics.median(wall_time(call) for _ in range(3)) / timed_steps
  seconds = step_s * steps
  achieved = flops / seconds
  return dict(compile_s=compile_s, step_ms=1e3 * step_s, img_s=images / seconds,
              projected_img_s=0.5 * peak / flops * images if peak else None, resolved=platform.resolve(
                  config, device).attention, mfu=achieved / peak if peak else None, tflops=achieved / 1e12,
              mem_gib=peak_memory_gib())


def run(models: Sequence[str], image_counts: Sequence[int], attentions: Sequence[str], steps: int,
        timed_steps: int, peak_tflops: float | None, dry: bool = False) -> list[dict]:
  """All cases in order; a failing case records its error instead of stopping the run."""
  kind = jax.devices()[0].device_kind
  peak = peak_flops(kind, peak_tflops)
  rows = []
  for name in models:
    for images in image_counts:
      for attention in attentions:
        row = dict(model=name, images=images, attention=attention)
        try:
          base = DRY_CONFIG if dry else get_model_config(name, image_size=256, dtype="bfloat16")
          config = base.replace(family=name[:3].lower(), attention=attention)
          method = "ddpm" if config.family == "dit" else "sde"
          row.update(bench_case(config, images, steps, timed_steps, method, peak))
        except Exception as e:  # pylint: disable=broad-except  # the table reports it; the run goes on
          row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
        rows.append(row)
  return rows


def print_table(rows: list[dict], steps: int, timed_steps: int) -> None:
  """One markdown table of the cases."""
  print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}; jax {jax.__version__}; bf16, NAG+CFG, "
        f"{steps} steps (per-step time measured over {timed_steps})")
  print("\n| model | images | attention | compile s | step ms | img/s | projected img/s (50% of peak) | TFLOP/s "
        "| MFU | peak mem GiB |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    head = f"| {r['model']} | {r['images']} | {r['attention']} |"
    if "error" in r:
      print(f"{head} {r['error']} ||||||||")
      continue
    mfu = f"{r['mfu']:.0%}" if r["mfu"] is not None else "n/a"
    mem = f"{r['mem_gib']:.1f}" if r["mem_gib"] is not None else "n/a"
    projected = f"{r['projected_img_s']:.2f}" if r["projected_img_s"] is not None else "n/a"
    attention = r["attention"] + (f" ({r['resolved']})" if r["resolved"] != r["attention"] else "")
    head = f"| {r['model']} | {r['images']} | {attention} |"
    print(f"{head} {r['compile_s']:.1f} | {r['step_ms']:.1f} | {r['img_s']:.2f} | {projected} | {r['tflops']:.1f} "
          f"| {mfu} | {mem} |")


def main(argv: Sequence[str] | None = None) -> list[dict]:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--models", default="DiT-XL/2,SiT-XL/2")
  p.add_argument("--images", default="64,256")
  p.add_argument("--attention", default="", help="comma-separated backends (default: the platform's, ATTENTION)")
  p.add_argument("--steps", type=int, default=250)
  p.add_argument("--timed-steps", type=int, default=10)
  p.add_argument("--peak-tflops", type=float, default=None, help="chip's dense bf16 peak (default: by device)")
  p.add_argument("--dry", action="store_true", help="tiny model, 2 images, 4 steps timed over 2, folded attention")
  args = p.parse_args(argv)
  if args.dry:
    args.images, args.attention, args.steps, args.timed_steps = "2", "auto,xla", 4, 2
  args.attention = args.attention or ATTENTION[platform.platform_of()]
  rows = run(args.models.split(","), [int(i) for i in args.images.split(",")], args.attention.split(","),
             args.steps, args.timed_steps, args.peak_tflops, dry=args.dry)
  print_table(rows, args.steps, args.timed_steps)
  return rows


if __name__ == "__main__":
  main()
