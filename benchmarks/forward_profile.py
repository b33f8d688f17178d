"""Where one DiT/SiT forward's time goes, nag_jax vs the torch reference, per model row at several row counts.

  python -m benchmarks.forward_profile [--model DiT-S/2] [--rows 4,16,64] [--repeats 5] [--dtype float32]
                                      [--attention folded,xla]

Times, alternated in each repetition (median of `--repeats`): the whole forward; its attention cores
alone (nag_jax.models.dit.attention with each `--attention` backend / torch's fused SDPA, at the model's
(rows, tokens, heads, head_dim), times depth); its dense layers alone (XLA / torch matmuls at the block's qkv, proj, fc1 and fc2 shapes,
times depth); and the rest (the whole minus both: LayerNorm, adaLN modulation, residuals, embedders,
final layer, copies). A part that grows faster than the rows is what makes per-row throughput fall.
"""
from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.common import alternated
from benchmarks.vs_torch import matmul_rate_fn, matmul_shapes, torch_model
from nag_jax.checkpoints.dit_convert import torch_to_flax
from nag_jax.models import DiT, get_model_config
from nag_jax.models.dit import attention
from nag_jax.platform import dot_compiler_options


def cases(name: str, rows: int, dtype: str, attentions: list[str]) -> dict[tuple[str, str], tuple]:
  """{(impl, part): (call, times it counts)} for one row count; impl "torch" or "nag_jax <attention backend>"."""
  base = get_model_config(name, image_size=256)
  tmodel = torch_model(base)
  params = jax.device_put(torch_to_flax({k: v.numpy() for k, v in tmodel.state_dict().items()}, base))
  x = jax.random.normal(jax.random.key(0), (rows, base.input_size, base.input_size, base.in_channels))
  t, y = jnp.full((rows,), 0.5 if base.family == "sit" else 500.0), jnp.arange(rows, dtype=jnp.int32) % 10
  heads, tokens = base.num_heads, base.num_tokens
  q = jax.random.normal(jax.random.key(1), (3, rows, tokens, heads, base.hidden_size // heads), jnp.dtype(dtype))
  dense, _ = matmul_rate_fn(base.replace(dtype=dtype), rows)
  tx, tt, ty = (torch.from_numpy(np.array(a)) for a in (jnp.transpose(x, (0, 3, 1, 2)), t, y))
  tq = torch.from_numpy(np.array(q, np.float32)).permute(0, 1, 3, 2, 4).contiguous()
  tdense = [(torch.randn(m, k), torch.randn(k, n)) for m, k, n in matmul_shapes(base, rows)]

  def torch_call(f):
    def call():
      with torch.no_grad():
        return f()
    return call
  out = {("torch", "forward"): (torch_call(lambda: tmodel(tx, tt, ty)), 1),
         ("torch", "attention"): (torch_call(lambda: F.scaled_dot_product_attention(tq[0], tq[1], tq[2])), base.depth),
         ("torch", "dense"): (torch_call(lambda: [a @ b for a, b in tdense]), base.depth)}
  for backend in attentions:
    model = DiT(base.replace(dtype=dtype, attention=backend))
    options = dot_compiler_options(model.config)
    fwd = jax.jit(lambda p, x, t, y, model=model: model.apply({"params": p}, x, t, y), compiler_options=options)
    core = jax.jit(lambda q, backend=backend: attention(q[0], q[1], q[2], backend), compiler_options=options)
    impl = f"nag_jax {backend}"
    out.update({(impl, "forward"): (lambda fwd=fwd: fwd(params, x, t, y), 1),
                (impl, "attention"): (lambda core=core: core(q), base.depth), (impl, "dense"): (dense, base.depth)})
  return out


def run_profile(name: str, row_counts: list[int], repeats: int, dtype: str,
                attentions: list[str]) -> tuple[list[dict], list[float]]:
  """Per row count and implementation: ms per row of the forward and of each part (medians), and the loads."""
  timed = {rows: cases(name, rows, dtype, attentions) for rows in row_counts}
  seconds, loads = alternated({(rows, *key): call for rows, calls in timed.items()
                               for key, (call, _) in calls.items()}, repeats)
  out = []
  for rows, calls in timed.items():
    for impl in dict.fromkeys(impl for impl, _ in calls):
      ms = {p: 1e3 * seconds[(rows, impl, p)] * calls[(impl, p)][1] / rows for p in ("forward", "attention", "dense")}
      out.append(dict(rows=rows, impl=impl, **ms, rest=ms["forward"] - ms["attention"] - ms["dense"]))
  return out, loads


def print_table(out: list[dict], loads: list[float], name: str, dtype: str) -> None:
  print(f"{name} forward, {dtype} (torch float32, {torch.get_num_threads()} threads); load average per repetition: "
        + ", ".join(f"{v:.2f}" for v in loads))
  print("\n| rows | impl | forward ms/row | attention ms/row (share) | dense ms/row (share) | rest ms/row (share) |")
  print("|---|---|---|---|---|---|")
  for r in out:
    parts = " | ".join(f"{r[p]:.1f} ({r[p] / r['forward']:.0%})" for p in ("attention", "dense", "rest"))
    print(f"| {r['rows']} | {r['impl']} | {r['forward']:.1f} | {parts} |")


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model", default="DiT-S/2")
  p.add_argument("--rows", default="4,16,64")
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  p.add_argument("--attention", default="folded,xla", help="nag_jax attention backends to compare")
  args = p.parse_args()
  out, loads = run_profile(args.model, [int(r) for r in args.rows.split(",")], args.repeats, args.dtype,
                           args.attention.split(","))
  print_table(out, loads, args.model, args.dtype)


if __name__ == "__main__":
  main()
