"""nag_jax vs the official PyTorch sampler, alternated in one run: model rows/s, the ratio, and MFU-style fractions.

  python -m benchmarks.vs_torch [--rows 4,16,64] [--steps 10] [--repeats 3] [--dtypes float32,bfloat16]

DiT-S/2 DDPM + CFG (official `p_sample_loop` over `forward_with_cfg`) and SiT-S/2 Euler-Maruyama SDE + CFG
(official: drift and score each call the model, two calls per step), 256x256 (32x32 latents), the same
random non-zero weights in both. The torch reference is tests/reference/official_dit.py with attention
through F.scaled_dot_product_attention as timm does upstream; it runs in float32. A "model row" is one
image row of one model call (CFG doubles the rows), so rows/s compares the forward speed whatever the
loop calls. nag_jax runs each step's rows in the sampler's default passes (`rows_per_pass`: 8 DiT-S/2
rows at a time on one CPU device); "nag_jax one pass" runs them all at once. "of matmul" = achieved
FLOP/s (XLA's count of one forward) / XLA's own matmul rate in the case's dtype at the shapes of the dots
that case runs (M = rows per pass x tokens; torch: all rows), measured in the same run. Parameters are put
on the device once, as a user loading a checkpoint would. Every measurement is the median of
`--repeats`, the commands alternated within each repetition in `round_order` (shuffled, seeded); the load
average is printed with them.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import torch

from benchmarks.common import compiled_flops, round_order
from nag_jax.checkpoints.dit_convert import torch_to_flax
from nag_jax.diffusion.gaussian_diffusion import create_diffusion
from nag_jax.guidance import GuidanceConfig
from nag_jax.models import DiT, ModelConfig, get_model_config
from nag_jax.platform import dot_compiler_options
from nag_jax.platform import rows_per_pass
from nag_jax.sampling.pipeline import SamplerConfig, build_sampler
from tests.reference.official_dit import DiT as TorchDiT

CFG_SCALE = 1.5
LAST_STEP_SIZE = 0.04  # SiT sample.py default; the SDE grid runs to 1 - this, then one "Mean" step


def torch_model(config, seed: int = 0, scale: float = 0.02) -> torch.nn.Module:
  """The official model (fused SDPA attention) with every weight but pos_embed drawn from N(0, scale^2)."""
  torch.manual_seed(seed)
  model = TorchDiT(input_size=config.input_size, patch_size=config.patch_size, hidden_size=config.hidden_size,
                   depth=config.depth, num_heads=config.num_heads, num_classes=config.num_classes,
                   sit=config.family == "sit", fused_attn=True).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name != "pos_embed":
        p.normal_(0.0, scale)
  return model


def torch_ddpm_loop(model: torch.nn.Module, steps: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
  """Official DiT sampling: z doubled, y with the null class, `p_sample_loop(forward_with_cfg)`, learned range."""
  d = create_diffusion(str(steps))
  arr = {k: torch.from_numpy(np.asarray(getattr(d, k), np.float64)).float() for k in (
      "betas", "posterior_log_variance_clipped", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
      "posterior_mean_coef1", "posterior_mean_coef2")}
  tmap = torch.from_numpy(np.asarray(d.timestep_map, np.float32))

  def run(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x = torch.cat([z, z])
    y = torch.cat([y, torch.full_like(y, model.y_embedder.embedding_table.num_embeddings - 1)])
    for i in reversed(range(steps)):
      t = torch.full((x.shape[0],), i, dtype=torch.long)
      out = model.forward_with_cfg(x, tmap[t], y, CFG_SCALE)  # _WrappedModel maps respaced t
      eps, v = torch.split(out, x.shape[1], dim=1)
      g = lambda a: a[t].view(-1, 1, 1, 1)
      frac = (v + 1) / 2
      log_var = frac * torch.log(g(arr["betas"])) + (1 - frac) * g(arr["posterior_log_variance_clipped"])
      x0 = g(arr["sqrt_recip_alphas_cumprod"]) * x - g(arr["sqrt_recipm1_alphas_cumprod"]) * eps
      mean = g(arr["posterior_mean_coef1"]) * x0 + g(arr["posterior_mean_coef2"]) * x
      noise = torch.randn_like(x) if i > 0 else torch.zeros_like(x)
      x = mean + torch.exp(0.5 * log_var) * noise
    return x[: z.shape[0]]
  return run


def torch_sde_loop(model: torch.nn.Module, steps: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
  """Official SiT `sample_sde` (Linear path, velocity model, diffusion 'sigma', last step 'Mean'):
  the drift and the score each call `forward_with_cfg`, so two model calls per step."""
  ts = torch.linspace(0.0, 1.0 - LAST_STEP_SIZE, steps)
  dt = ts[1] - ts[0]

  def sde_drift(x, t, y):
    tt = t.view(-1, 1, 1, 1)
    velocity = model.forward_with_cfg(x, t, y, CFG_SCALE)         # get_drift: velocity_ode
    v_for_score = model.forward_with_cfg(x, t, y, CFG_SCALE)      # get_score: score from velocity
    score = (tt * v_for_score - x) / (1 - tt)                      # ICPlan: var = 1 - t, alpha/d_alpha = t
    return velocity + (1 - tt) * score                             # diffusion 'sigma' = 1 - t

  def run(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x = torch.cat([z, z])
    y = torch.cat([y, torch.full_like(y, model.y_embedder.embedding_table.num_embeddings - 1)])
    for ti in ts[:-1]:
      t = torch.full((x.shape[0],), float(ti))
      dw = torch.randn_like(x) * torch.sqrt(dt)
      x = x + sde_drift(x, t, y) * dt + torch.sqrt(2 * (1 - t)).view(-1, 1, 1, 1) * dw
    x = x + sde_drift(x, torch.full((x.shape[0],), float(ts[-1])), y) * LAST_STEP_SIZE
    return x[: z.shape[0]]
  return run


def wall_time(fn: Callable[[], object]) -> float:
  """Wall seconds of one call, tensors and arrays made ready."""
  t0 = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - t0


def matmul_shapes(config, rows: int) -> list[tuple[int, int, int]]:
  """(M, K, N) of every dot in one block at `rows` images: qkv, proj, fc1, fc2."""
  m, d = rows * config.num_tokens, config.hidden_size
  h = int(d * config.mlp_ratio)
  return [(m, d, 3 * d), (m, d, d), (m, d, h), (m, h, d)]


def matmul_rate_fn(config: ModelConfig, rows: int,
                   options: dict[str, str] | None = None) -> tuple[Callable[[], object], float]:
  """(call, FLOPs): XLA dots at the model's `matmul_shapes` for `rows` images in its dtype, accumulated in float32
  as the model's are, compiled with its `dot_compiler_options` unless other `options` are given to compare."""
  shapes, dtype = matmul_shapes(config, rows), config.compute_dtype
  options = dot_compiler_options(config) if options is None else options
  key = jax.random.key(0)
  ops = [(jax.random.normal(key, (m, k), dtype), jax.random.normal(key, (k, n), dtype)) for m, k, n in shapes]
  f = jax.jit(lambda ops: [jnp.dot(a, b, preferred_element_type=jnp.float32) for a, b in ops],
              compiler_options=options)
  jax.block_until_ready(f(ops))
  return (lambda: f(ops)), float(sum(2 * m * k * n for m, k, n in shapes))


def build_cases(name: str, rows: int, steps: int, dtypes: list[str]) -> list[dict]:
  """One dict per command to time: torch f32, nag_jax per dtype and f32 in one pass, with model rows per call."""
  base = get_model_config(name, image_size=256)
  tmodel = torch_model(base)
  params = jax.device_put(torch_to_flax({k: v.numpy() for k, v in tmodel.state_dict().items()}, base))
  images = rows // 2
  gen = torch.Generator().manual_seed(0)
  z = torch.randn(images, 4, base.input_size, base.input_size, generator=gen)
  y = torch.arange(images) % base.num_classes
  sit = base.family == "sit"
  loop = (torch_sde_loop if sit else torch_ddpm_loop)(tmodel, steps)

  def torch_call():
    with torch.no_grad():
      return loop(z, y).numpy()

  cases = [dict(model=name, rows=rows, impl="torch", dtype="float32", fn=torch_call,
                model_rows=rows * steps * (2 if sit else 1), dot_rows=rows)]
  labels = jnp.asarray(y.numpy(), jnp.int32)
  x = jnp.zeros((rows, base.input_size, base.input_size, 4))
  variants = [("nag_jax", dtype, 0) for dtype in dtypes]
  if "float32" in dtypes:  # every row of a step in one forward pass instead of rows_per_pass's passes
    variants.append(("nag_jax one pass", "float32", rows))
  for impl, dtype, row_chunk in variants:
    config = base.replace(dtype=dtype)
    sampler = SamplerConfig(method="sde" if sit else "ddpm", num_steps=steps, last_step_size=LAST_STEP_SIZE,
                            row_chunk=row_chunk)
    sample = build_sampler(config, sampler, GuidanceConfig(cfg_scale=CFG_SCALE))
    nfe = int(sample(params, jax.random.key(1), labels)["nfe"])  # compiles
    call = lambda sample=sample: sample(params, jax.random.key(1), labels)["latents"]
    model = DiT(config)
    flops = compiled_flops(lambda p, x, t, yy: model.apply({"params": p}, x, t, yy), params, x,
                           jnp.zeros(rows), jnp.zeros(rows, jnp.int32)) / rows
    cases.append(dict(model=name, rows=rows, impl=impl, dtype=dtype, fn=call, model_rows=rows * nfe,
                      flops_per_row=flops, dot_rows=min(rows, rows_per_pass(config, row_chunk) or rows)))
  torch_call()  # warm-up
  cases[0]["flops_per_row"] = cases[1]["flops_per_row"]
  return cases


def run_benchmark(models: list[str], row_counts: list[int], steps: int, repeats: int,
                  dtypes: list[str]) -> list[dict]:
  """Times every case `repeats` times, alternating all of them in each repetition; adds medians and ratios."""
  cases = [c for n in models for r in row_counts for c in build_cases(n, r, steps, dtypes)]
  rates = {}
  for key in sorted({(c["model"], c["dot_rows"], c["dtype"]) for c in cases}):
    call, flops = matmul_rate_fn(get_model_config(key[0]).replace(dtype=key[2]), key[1])
    rates[key] = dict(fn=call, flops=flops, times=[])
  loads = []
  for repetition in range(repeats):
    loads.append(os.getloadavg()[0])
    for c in round_order(cases, repetition):
      c.setdefault("times", []).append(wall_time(c["fn"]))
    for r in rates.values():  # best of 5 back-to-back: the matmul is short and the reference is a peak
      r["times"].append(min(wall_time(r["fn"]) for _ in range(5)))
  for r in rates.values():
    r["rate"] = r["flops"] / statistics.median(r["times"])
  for c in cases:
    c["seconds"] = statistics.median(c["times"])
    c["rows_s"] = c["model_rows"] / c["seconds"]
    c["matmul_rate"] = rates[(c["model"], c["dot_rows"], c["dtype"])]["rate"]
    c["of_matmul"] = c["rows_s"] * c["flops_per_row"] / c["matmul_rate"]
  for c in cases:
    ref = next(t for t in cases if t["impl"] == "torch" and t["model"] == c["model"] and t["rows"] == c["rows"])
    c["vs_torch"] = c["rows_s"] / ref["rows_s"]
  for c in cases:
    at4 = [t for t in cases if t["rows"] == min(row_counts) and all(t[k] == c[k] for k in ("model", "impl", "dtype"))]
    c["vs_fewest_rows"] = c["rows_s"] / at4[0]["rows_s"]
  return cases, loads


def print_table(cases: list[dict], loads: list[float], steps: int) -> None:
  """One markdown table: rows/s, ratio to torch f32, matmul fraction, scaling vs the fewest rows."""
  print(f"device: {jax.devices()[0].device_kind}; torch {torch.__version__} ({torch.get_num_threads()} threads); "
        f"{steps} steps, CFG {CFG_SCALE}; load average (1 min) per repetition: "
        + ", ".join(f"{v:.2f}" for v in loads))
  print("\n| model | rows | impl | dtype | s/sample call | model rows/s | vs torch f32 | rows per dot "
        "| XLA matmul GFLOP/s there | of matmul | rows/s vs fewest rows |")
  print("|---|---|---|---|---|---|---|---|---|---|---|")
  for c in cases:
    print(f"| {c['model']} | {c['rows']} | {c['impl']} | {c['dtype']} | {c['seconds']:.2f} | {c['rows_s']:.2f} "
          f"| {c['vs_torch']:.2f}x | {c['dot_rows']} | {c['matmul_rate'] / 1e9:.0f} | {c['of_matmul']:.0%} "
          f"| {c['vs_fewest_rows']:.2f} |")


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--models", default="DiT-S/2,SiT-S/2")
  p.add_argument("--rows", default="4,16,64", help="model rows per call (2 x images with CFG)")
  p.add_argument("--steps", type=int, default=10, help="sampler steps, >= 2 (SiT's grid needs two points)")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--dtypes", default="float32,bfloat16")
  args = p.parse_args()
  if args.steps < 2:
    p.error(f"--steps must be >= 2 (SiT's official SDE grid has steps points), got {args.steps}")
  cases, loads = run_benchmark(args.models.split(","), [int(r) for r in args.rows.split(",")], args.steps,
                               args.repeats, args.dtypes.split(","))
  print_table(cases, loads, args.steps)


if __name__ == "__main__":
  main()
