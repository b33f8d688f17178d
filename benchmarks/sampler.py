"""Sampler benchmark: images/s and FLOP/s per guidance mode, batched branches vs a per-branch Python loop.

  python -m benchmarks.sampler [--models DiT-S/2,DiT-B/2] [--batch 2] [--steps 10] [--repeats 3]

Prints one table with, per model and guidance: sampler time per step, images/s, achieved GFLOP/s,
fraction of this machine's measured f32 matmul rate, the same steps as separate per-branch calls in a
Python loop, and the three target ratios (NAG+CFG step vs one forward at 3B; compile 250 vs 10 steps).
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

from benchmarks.common import alternated, compiled_flops, matmul_flops_per_s
from nag_jax.diffusion.gaussian_diffusion import create_diffusion, p_sample
from nag_jax.guidance import GuidanceConfig, combine
from nag_jax.guidance.denoiser import branch_inputs
from nag_jax.models import DiT, get_model_config, init_params
from nag_jax.platform import dot_compiler_options
from nag_jax.sampling.pipeline import SamplerConfig, build_sampler

MODES = {"none": GuidanceConfig(), "cfg": GuidanceConfig(cfg_scale=1.5),
         "nag": GuidanceConfig(nag_scale=3.0), "nag_cfg": GuidanceConfig(cfg_scale=1.2, nag_scale=2.0)}


def python_loop_sampler(model, params, g: GuidanceConfig, labels, steps: int):
  """The same DDPM steps with one jitted model call per branch, driven from Python."""
  options = dot_compiler_options(model.config)
  fwd = jax.jit(lambda p, x, t, y: model.apply({"params": p}, x, t, y), compiler_options=options)
  diffusion = create_diffusion(str(steps))
  active = g.active_terms(0.5)
  null, pseudo = jnp.full_like(labels, model.config.null_class), 1001.0
  step = jax.jit(lambda out, x, i, key: p_sample(diffusion, out, x, i, jax.random.normal(key, x.shape))[0],
                 compiler_options=options)

  def run(x, key):
    for k, i in enumerate(range(steps - 1, -1, -1)):
      t = jnp.full(labels.shape, float(diffusion.timestep_map[i]))
      outs = {"cond": fwd(params, x, t, labels)}
      if "cfg" in active:
        outs["cfg_uncond"] = fwd(params, x, t, null)
      if "nag" in active:
        outs["nag_uncond"] = fwd(params, x, jnp.full_like(t, pseudo), labels)
      x = step(combine(outs, g, active, model.config.in_channels), x, i, jax.random.fold_in(key, k))
    return x
  return run


def bench_model(name: str, batch: int, steps: int, repeats: int) -> tuple[list[dict], list[float]]:
  """Per guidance mode: the compiled sampler's step, the per-branch Python loop's step and one forward at 3B
  rows, all alternated in each of `repeats` rounds (medians), against the 2048^3 matmul rate with the model's
  dot options; and the load averages of the rounds."""
  config = get_model_config(name, image_size=256)
  rate = matmul_flops_per_s(dot_compiler_options(config))
  model = DiT(config)
  params = jax.jit(lambda k: init_params(config, k))(jax.random.key(0))
  labels = jnp.arange(batch) % config.num_classes
  x = jax.random.normal(jax.random.key(1), (batch, config.input_size, config.input_size, 4))
  fwd = lambda p, x, t, y: model.apply({"params": p}, x, t, y)
  flops_1 = compiled_flops(fwd, params, x, jnp.zeros(batch), labels) / batch
  x3, t3, y3 = jnp.concatenate([x] * 3), jnp.zeros(3 * batch), jnp.concatenate([labels] * 3)
  fwd3 = jax.jit(fwd, compiler_options=dot_compiler_options(config))
  calls = {"fwd3": lambda: fwd3(params, x3, t3, y3)}
  for mode, g in MODES.items():
    sample = build_sampler(config, SamplerConfig(method="ddpm", num_steps=steps), g)
    loop = python_loop_sampler(model, params, g, labels, steps)
    calls[(mode, "batched")] = lambda sample=sample: sample(params, jax.random.key(2), labels)["latents"]
    calls[(mode, "loop")] = lambda loop=loop: loop(x, jax.random.key(3))
  seconds, loads = alternated(calls, repeats)
  rows = []
  for mode, g in MODES.items():
    k = len(branch_inputs(g, g.active_terms(0.5)))
    per_step, loop_step = seconds[(mode, "batched")] / steps, seconds[(mode, "loop")] / steps
    achieved = k * batch * flops_1 / per_step
    rows.append(dict(model=name, mode=mode, branches=k, step_ms=1e3 * per_step, img_s=batch / (per_step * steps),
                     gflops=achieved / 1e9, rate=rate, of_matmul=achieved / rate, loop_ms=1e3 * loop_step,
                     vs_fwd3=per_step / seconds["fwd3"] if mode == "nag_cfg" else float("nan")))
  return rows, loads


def compile_ratio(name: str) -> tuple[float, float]:
  """Compile seconds of the 10-step and 250-step NAG+CFG sampler."""
  config = get_model_config(name, image_size=256)
  params = jax.eval_shape(lambda k: init_params(config, k), jax.random.key(0))
  out = []
  for steps in (10, 250):
    sample = build_sampler(config, SamplerConfig(method="ddpm", num_steps=steps), MODES["nag_cfg"], jit=False)
    fn = jax.jit(sample, compiler_options=sample.compiler_options)
    t0 = time.perf_counter()
    fn.lower(params, jax.random.key(0), jnp.zeros(2, jnp.int32)).compile()
    out.append(time.perf_counter() - t0)
  return out[0], out[1]


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--models", default="DiT-S/2,DiT-B/2")
  p.add_argument("--batch", type=int, default=2)
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--repeats", type=int, default=3)
  args = p.parse_args()
  rows, loads = [], []
  for m in args.models.split(","):
    model_rows, model_loads = bench_model(m, args.batch, args.steps, args.repeats)
    rows, loads = rows + model_rows, loads + model_loads
  rates = ", ".join(f"{r['model']} {r['rate'] / 1e9:.1f}" for r in rows if r["mode"] == "none")
  print(f"device: {jax.devices()[0].device_kind}; measured f32 matmul (2048^3, each model's dot options): {rates} "
        f"GFLOP/s; medians of {args.repeats} alternated rounds, load average per round: "
        + ", ".join(f"{v:.2f}" for v in loads))
  print(f"\n{'model':9} {'guidance':8} {'k':>2} {'step ms':>9} {'img/s':>8} {'GFLOP/s':>8} {'of matmul':>9} "
        f"{'py-loop ms':>10} {'step/fwd(3B)':>12}")
  for r in rows:
    print(f"{r['model']:9} {r['mode']:8} {r['branches']:>2} {r['step_ms']:9.1f} {r['img_s']:8.3f} {r['gflops']:8.1f} "
          f"{r['of_matmul']:9.0%} {r['loop_ms']:10.1f} {r['vs_fwd3']:12.3f}")
  c10, c250 = compile_ratio(args.models.split(",")[0])
  print(f"\ncompile NAG+CFG sampler: 10 steps {c10:.2f} s, 250 steps {c250:.2f} s, ratio {c250 / c10:.2f} "
        "(target <= 1.2)")


if __name__ == "__main__":
  main()
