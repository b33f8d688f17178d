"""Train-step throughput against the torch reference's, alternated in one run, and against XLA's matmul rate.

  python -m benchmarks.train [--model DiT-S/2] [--batch 16] [--repeats 3] [--dtype float32]

Times nag_jax's jitted train step as a user gets it (`jit_train_step`, the default attention core), the
same step with the "xla" attention core, the step compiled with XLA's fusion pass off (the CPU default
of earlier versions), and the official model
(tests/reference, SDPA attention) doing forward, MSE on its full output, backward and AdamW, all at
one batch. FLOPs per step come from XLA's cost analysis of the compiled step; "of matmul" = achieved
FLOP/s / XLA's float32 rate at the model's own matmul shapes at this batch, measured in the same run.
Each figure is the median of `--repeats`, the commands alternated within each repetition.
"""
from __future__ import annotations

import argparse
import os
import statistics

import jax
import jax.numpy as jnp
import numpy as np
import torch

from benchmarks.vs_torch import matmul_rate_fn, matmul_shapes, torch_model, wall_time
from nag_jax.models import get_model_config
from nag_jax.sharding import make_mesh
from nag_jax.training import create_objective, get_base_config, jit_train_step, model_fields
from nag_jax.training.config_validation import model_config_of
from nag_jax.training.init_state import state_initializer


FUSION_OFF = {"xla_disable_hlo_passes": "fusion"}  # the CPU default of earlier versions (see the README)


def jax_step(model: str, batch: dict, dtype: str, compiler_options: dict | None, **model_overrides):
  """(call advancing its own state one step, XLA FLOPs per step) for the nag_jax train step."""
  config = get_base_config()
  config.model = model_fields(model, image_size=256, dtype=dtype, **model_overrides)
  config.global_batch_size = batch["x"].shape[0]
  mesh = make_mesh({"data": -1})
  mc = model_config_of(config)
  initialize, abstract, schedule = state_initializer(config, mc, mesh)
  step = jit_train_step(jax.tree.map(lambda s: s.sharding, abstract), mesh, compiler_options=compiler_options,
                        objective=create_objective(mc, config.objective), learning_rate_fn=schedule)
  holder = {"state": initialize()}
  compiled = step.lower(holder["state"], batch).compile()
  cost = compiled.cost_analysis()
  flops = float((cost[0] if isinstance(cost, list) else cost).get("flops", float("nan")))

  def call():
    holder["state"], metrics = compiled(holder["state"], batch)
    return metrics
  jax.block_until_ready(call())  # warm-up
  return call, flops


def torch_step(model: str, batch: dict):
  """One official-style step: q_sample, forward, MSE on eps and variance channels, backward, AdamW."""
  net = torch_model(get_model_config(model, image_size=256)).train()
  opt = torch.optim.AdamW(net.parameters(), lr=1e-4, weight_decay=0.0)
  x0 = torch.from_numpy(np.transpose(batch["x"], (0, 3, 1, 2)).copy())
  y = torch.from_numpy(batch["y"].astype(np.int64))
  gen = torch.Generator().manual_seed(0)
  alphas = torch.linspace(0.9999, 0.01, 1000)

  def call():
    t = torch.randint(0, 1000, (x0.shape[0],), generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    a = alphas[t].view(-1, 1, 1, 1)
    out = net(a.sqrt() * x0 + (1 - a).sqrt() * noise, t.float(), y)
    loss = ((out - torch.cat([noise, noise], dim=1)) ** 2).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()
  call()  # warm-up
  return call


def run(model: str, batch_size: int, repeats: int, dtype: str) -> tuple[list[tuple], list[float], float]:
  """Median seconds per step of each command, alternated: table rows, load averages, the matmul rate."""
  jax.config.update("jax_threefry_partitionable", True)
  mc = get_model_config(model, image_size=256)
  rng = np.random.default_rng(0)
  batch = {"x": rng.normal(size=(batch_size, mc.input_size, mc.input_size, mc.in_channels)).astype(np.float32),
           "y": rng.integers(0, mc.num_classes, batch_size).astype(np.int32)}
  default, flops = jax_step(model, batch, dtype, None)
  xla_attention, _ = jax_step(model, batch, dtype, None, attention="xla")
  fusion_off, _ = jax_step(model, batch, dtype, FUSION_OFF)
  commands = {"nag_jax": default, "nag_jax, xla attention": xla_attention, "nag_jax, XLA fusion pass off": fusion_off,
              "torch reference": torch_step(model, batch)}
  mm, mm_flops = matmul_rate_fn(matmul_shapes(mc, batch_size), jnp.float32)
  times = {k: [] for k in commands}
  mm_times, loads = [], []
  for _ in range(repeats):
    loads.append(os.getloadavg()[0])
    for name, fn in commands.items():
      times[name].append(wall_time(fn))
    mm_times.append(min(wall_time(mm) for _ in range(3)))
  rate = mm_flops / statistics.median(mm_times)
  ref = statistics.median(times["torch reference"])
  rows = []
  for name, ts in times.items():
    sec = statistics.median(ts)
    rows.append((name, sec, sec / batch_size, ref / sec, flops / sec / rate))
  return rows, loads, rate


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model", default="DiT-S/2")
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  args = p.parse_args()
  rows, loads, rate = run(args.model, args.batch, args.repeats, args.dtype)
  print(f"device: {jax.devices()[0].device_kind}; {args.model}, batch {args.batch}, {args.dtype}; "
        f"XLA f32 matmul at the model's shapes {rate / 1e9:.0f} GFLOP/s; load average per repetition: "
        + ", ".join(f"{v:.2f}" for v in loads))
  print("\n| command | s/step | s/sample | speed vs torch | of f32 matmul (XLA FLOPs) |")
  print("|---|---|---|---|---|")
  for name, sec, per, ratio, frac in rows:
    print(f"| {name} | {sec:.2f} | {per:.3f} | {ratio:.2f}x | {frac:.0%} |")


if __name__ == "__main__":
  main()
