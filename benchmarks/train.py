"""Train-step throughput against the torch reference's, alternated in one run, and against XLA's matmul rate.

  python -m benchmarks.train [--model DiT-S/2] [--batch 16] [--repeats 3]

Times nag_jax's jitted train step as a user gets it (`jit_train_step`, the default attention core and
gradient fence, float32 dots in Eigen on CPU) in float32 and in bfloat16 (`model.dtype`), the float32 step
with the "xla" attention core, without the fence between blocks (`grad_fence="off"`), with XLA's default
YNNPACK dots, and compiled with XLA's fusion pass off (the CPU default of earlier versions), and the
official model (tests/reference, SDPA attention) doing forward, MSE on its full output, backward and
AdamW, in float32 and under torch's bfloat16 autocast, all at one batch.
FLOPs per step come from XLA's cost analysis of the compiled float32 step; "of matmul" = achieved FLOP/s /
XLA's rate at the model's own matmul shapes at this batch in the row's dtype, measured in the same run.
Each figure is the median of `--repeats`, the commands alternated within each repetition in `round_order`.
A second table times the step's matmul-heavy parts alone, forward and backward at its shapes, in
both: the attention core (`nag_jax.models.dit.attention`'s default against torch's SDPA autograd) and the
block's four dense layers (x @ W + b and its gradients w.r.t. x, W and b), times depth, and the core's three
kinds of batched dot alone (XLA against torch.bmm; each kind runs twice per block: q k^T and dP = dO v^T,
P v and dq = dS k, P^T dO and dS^T q). The header gives
XLA's float32 matmul rate at the model's shapes with the step's Eigen dots and with YNNPACK's.
"""
from __future__ import annotations

import argparse
import os
import statistics

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.common import alternated, round_order
from benchmarks.vs_torch import matmul_rate_fn, matmul_shapes, torch_model, wall_time
from nag_jax.models import ModelConfig, get_model_config
from nag_jax.models.dit import attention
from nag_jax.models.layers import mixed_einsum
from nag_jax.platform import XLA_DEFAULT_YNN, dot_compiler_options
from nag_jax.sharding import make_mesh
from nag_jax.training import create_objective, get_base_config, jit_train_step, model_fields
from nag_jax.training.config_validation import model_config_of
from nag_jax.training.init_state import state_initializer


FUSION_OFF = {"xla_disable_hlo_passes": "fusion"}  # the CPU default of earlier versions (see the README)
TORCH_ROWS = {"float32": "torch reference", "bfloat16": "torch reference, bfloat16 autocast"}  # dtype -> row


def jax_step(model: str, batch: dict, dtype: str, compiler_options: dict | None, **model_overrides):
  """(call advancing its own state one step, XLA FLOPs per step) for the nag_jax train step."""
  config = get_base_config()
  config.model = model_fields(model, image_size=256, dtype=dtype, **model_overrides)
  config.global_batch_size = batch["x"].shape[0]
  mesh = make_mesh({"data": -1})
  mc = model_config_of(config)
  initialize, abstract, schedule = state_initializer(config, mc, mesh)
  step = jit_train_step(jax.tree.map(lambda s: s.sharding, abstract), mesh, model_config=mc,
                        compiler_options=compiler_options,
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


def torch_step(model: str, batch: dict, autocast: bool = False):
  """One official-style step: q_sample, forward (under CPU bfloat16 autocast if asked), MSE on eps and variance
  channels, backward, AdamW."""
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
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
      out = net(a.sqrt() * x0 + (1 - a).sqrt() * noise, t.float(), y)
    loss = ((out.float() - torch.cat([noise, noise], dim=1)) ** 2).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()
  call()  # warm-up
  return call


def backward_parts(model: str, batch_size: int) -> dict[tuple[str, str], tuple]:
  """{(part, impl): (call, times per step)}: attention core and dense layers, forward + backward, alone."""
  mc = get_model_config(model, image_size=256)
  head_dim = mc.hidden_size // mc.num_heads
  q = jax.random.normal(jax.random.key(0), (4, batch_size, mc.num_tokens, mc.num_heads, head_dim))
  options = dot_compiler_options(mc)
  core = jax.jit(jax.grad(lambda q: jnp.sum(attention(q[0], q[1], q[2], ModelConfig.attention) * q[3])),
                 compiler_options=options)
  tq = torch.from_numpy(np.array(q)).permute(0, 1, 3, 2, 4).contiguous()
  shapes = matmul_shapes(mc, batch_size)
  ops = [[jax.random.normal(jax.random.key(i), s) for s in ((m, k), (k, n), (n,), (m, n))]
         for i, (m, k, n) in enumerate(shapes)]
  def dense_layer(x, w, b, g):  # the output is returned too, or XLA would drop the forward dot
    y, vjp = jax.vjp(lambda x, w, b: x @ w + b, x, w, b)
    return y, vjp(g)
  dense = jax.jit(lambda ops: [dense_layer(*o) for o in ops], compiler_options=options)
  # torch as nn.Linear runs it: weight (N, K), addmm forward, gradients w.r.t. x, weight, bias given g
  tops = [[torch.from_numpy(np.array(a)) for a in (x, w.T, b, g)] for x, w, b, g in ops]

  n, t = batch_size * mc.num_heads, mc.num_tokens
  a, b = (jax.random.normal(jax.random.key(5 + i), (n, t, head_dim)) for i in range(2))
  p = jax.random.normal(jax.random.key(7), (n, t, t))
  ta, tb, tp = (torch.from_numpy(np.array(x)) for x in (a, b, p))
  dots = {"q k^T, dO v^T": ("nqd,nkd->nqk", (a, b), lambda: torch.bmm(ta, tb.transpose(1, 2))),
          "P v, dS k": ("nqk,nkd->nqd", (p, b), lambda: torch.bmm(tp, tb)),
          "P^T dO, dS^T q": ("nqk,nqd->nkd", (p, a), lambda: torch.bmm(tp.transpose(1, 2), ta))}
  dot_parts = {}
  for name, (spec, args, torch_dot) in dots.items():
    fn = jax.jit(lambda x, y, spec=spec: mixed_einsum(spec, x, y, jnp.float32), compiler_options=options)
    dot_parts[(f"attention dots {name}", "nag_jax")] = (lambda fn=fn, args=args: fn(*args), 2 * mc.depth)
    dot_parts[(f"attention dots {name}", "torch")] = (torch_dot, 2 * mc.depth)

  def torch_core():
    qkv = tq[:3].clone().requires_grad_()
    return torch.autograd.grad((F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2]) * tq[3]).sum(), qkv)

  def torch_dense():
    out = []
    for x, w, b, g in tops:
      x, w, b = (a.contiguous().requires_grad_() for a in (x, w, b))
      out.append(torch.autograd.grad(F.linear(x, w, b), (x, w, b), grad_outputs=g))
    return out
  return {("attention core", "nag_jax"): (lambda: core(q), mc.depth),
          ("attention core", "torch"): (torch_core, mc.depth),
          ("dense layers", "nag_jax"): (lambda: dense(ops), mc.depth),
          ("dense layers", "torch"): (torch_dense, mc.depth), **dot_parts}


def run(model: str, batch_size: int, repeats: int) -> tuple[list[tuple], list[float], dict]:
  """Median seconds per step of each command, alternated: table rows, load averages, the matmul rate per dtype."""
  jax.config.update("jax_threefry_partitionable", True)
  mc = get_model_config(model, image_size=256)
  rng = np.random.default_rng(0)
  batch = {"x": rng.normal(size=(batch_size, mc.input_size, mc.input_size, mc.in_channels)).astype(np.float32),
           "y": rng.integers(0, mc.num_classes, batch_size).astype(np.int32)}
  default, flops = jax_step(model, batch, "float32", None)
  commands = {  # name -> (call, dtype)
      "nag_jax": (default, "float32"),
      "nag_jax, bfloat16": (jax_step(model, batch, "bfloat16", None)[0], "bfloat16"),
      "nag_jax, xla attention": (jax_step(model, batch, "float32", None, attention="xla")[0], "float32"),
      "nag_jax, no gradient fence": (jax_step(model, batch, "float32", None, grad_fence="off")[0], "float32"),
      "nag_jax, YNNPACK dots": (jax_step(model, batch, "float32", XLA_DEFAULT_YNN)[0], "float32"),
      "nag_jax, XLA fusion pass off": (jax_step(model, batch, "float32", FUSION_OFF)[0], "float32"),
      **{name: (torch_step(model, batch, autocast=dt == "bfloat16"), dt) for dt, name in TORCH_ROWS.items()}}
  mms = {dt: matmul_rate_fn(mc.replace(dtype=dt), batch_size) for dt in ("float32", "bfloat16")}
  mms["float32 YNNPACK"] = matmul_rate_fn(mc, batch_size, XLA_DEFAULT_YNN)
  times = {k: [] for k in commands}
  mm_times, loads = {dt: [] for dt in mms}, []
  for r in range(repeats):
    loads.append(os.getloadavg()[0])
    for name in round_order(list(commands), r):
      times[name].append(wall_time(commands[name][0]))
    for dt, (mm, _) in mms.items():
      mm_times[dt].append(min(wall_time(mm) for _ in range(3)))
  rate = {dt: mms[dt][1] / statistics.median(ts) for dt, ts in mm_times.items()}
  ref = {dt: statistics.median(times[name]) for dt, name in TORCH_ROWS.items()}
  rows = []
  for name, ts in times.items():
    sec, dt = statistics.median(ts), commands[name][1]  # "of matmul" against the dtype's rate as the step runs it
    rows.append((name, sec, sec / batch_size, ref["float32"] / sec, ref[dt] / sec, flops / sec / rate[dt]))
  return rows, loads, rate


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model", default="DiT-S/2")
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--repeats", type=int, default=3)
  args = p.parse_args()
  parts = backward_parts(args.model, args.batch)
  part_times, part_loads = alternated({k: fn for k, (fn, _) in parts.items()}, args.repeats)
  rows, loads, rate = run(args.model, args.batch, args.repeats)
  print(f"device: {jax.devices()[0].device_kind}; {args.model}, batch {args.batch}; XLA matmul at the model's "
        f"shapes {rate['float32'] / 1e9:.0f} GFLOP/s float32 (YNNPACK dots: {rate['float32 YNNPACK'] / 1e9:.0f}), "
        f"{rate['bfloat16'] / 1e9:.0f} bfloat16; "
        "load average per repetition: " + ", ".join(f"{v:.2f}" for v in loads))
  print("\n| command | s/step | s/sample | vs torch f32 | vs torch, same dtype | of matmul, its dtype |")
  print("|---|---|---|---|---|---|")
  for name, sec, per, ratio, same, frac in rows:
    print(f"| {name} | {sec:.2f} | {per:.3f} | {ratio:.2f}x | {same:.2f}x | {frac:.0%} |")
  print("\nforward + backward of the step's parts alone, float32, ms per step; load average per repetition: "
        + ", ".join(f"{v:.2f}" for v in part_loads))
  print("\n| part | nag_jax | torch | nag_jax time / torch's |")
  print("|---|---|---|---|")
  for part in dict.fromkeys(k[0] for k in parts):
    ms = {impl: 1e3 * part_times[(part, impl)] * parts[(part, impl)][1] for impl in ("nag_jax", "torch")}
    print(f"| {part} | {ms['nag_jax']:.0f} | {ms['torch']:.0f} | {ms['nag_jax'] / ms['torch']:.2f} |")


if __name__ == "__main__":
  main()
