"""Dry run of sharded training: the mesh, per-device bytes and XLA's memory estimate, nothing allocated.

  python -m nag_jax.dry_run --model DiT-XL/2 --devices 8 --mesh fsdp=-1 --device-memory-gb 16

`--devices N` simulates N CPU devices (the command re-runs itself with
XLA_FLAGS=--xla_force_host_platform_device_count=N); `--devices 0` uses this machine's devices. The
state is abstract (`jax.eval_shape`) and the sharded train step is compiled ahead of time; its memory
analysis is XLA's buffer assignment for the compiling backend (on CPU a guide to TPU/GPU, which fuse
differently), so leave some headroom.
"""
from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp

from nag_jax import cli, sharding
from nag_jax.errors import UserError
from nag_jax.training import base_config, config_validation, create_objective, init_state, jit_train_step

_CHILD = "NAG_DRY_RUN_CHILD"
GIB, MIB = 2**30, 2**20


def parse_mesh(text: str) -> dict:
  """'data=2,fsdp=-1' -> {'data': 2, 'fsdp': -1}."""
  try:
    return {k.strip(): int(v) for k, v in (item.split("=") for item in text.split(",") if item.strip())}
  except ValueError:
    raise UserError(f"--mesh must look like 'data=2,fsdp=-1', got {text!r}") from None


def build_config(args: argparse.Namespace):
  """The training config of the dry run: the base config with the model, batch and mesh asked for."""
  c = base_config.get_base_config()
  # Compiled as an accelerator runs it: without the gradient fence that "auto" adds under XLA:CPU.
  c.model = base_config.model_fields(args.model, image_size=args.image_size, dtype=args.dtype, remat=args.remat,
                                     grad_fence="off")
  if args.depth:
    c.model.depth = args.depth
  c.global_batch_size = args.batch
  c.optimizer.accumulation_steps = args.accumulation_steps
  c.mesh.update({"data": 1, "fsdp": 1, "tensor": 1, **parse_mesh(args.mesh)})  # unnamed axes: 1
  return c


def report(args: argparse.Namespace) -> dict:
  """Builds the abstract state and compiles the step; returns the numbers it prints."""
  c = build_config(args)
  mesh = sharding.make_mesh(c.mesh.to_dict())
  sharding.check_batch(mesh, c.global_batch_size // c.optimizer.accumulation_steps)
  model_cfg = config_validation.model_config_of(c)
  _, abstract, schedule = init_state.state_initializer(c, model_cfg, mesh)
  n_params = sum(x.size for x in jax.tree.leaves(abstract.params))
  out = {"mesh": dict(mesh.shape), "params": n_params,
         "param_bytes": sharding.bytes_per_device(abstract.params),
         "ema_bytes": sharding.bytes_per_device(abstract.ema_params),
         "opt_bytes": sharding.bytes_per_device(abstract.opt_state)}
  name = args.model + (f" at depth {model_cfg.depth}" if args.depth else "") + (" with remat" if args.remat else "")
  print(f"{name} ({n_params / 1e6:.1f}M params, {args.dtype} compute), global batch {c.global_batch_size} "
        f"(x{c.optimizer.accumulation_steps} accumulation), {mesh.size} devices, mesh {out['mesh']}")
  print(f"  per device: params {out['param_bytes'] / MIB:.1f} MiB, EMA {out['ema_bytes'] / MIB:.1f} MiB, "
        f"optimizer {out['opt_bytes'] / MIB:.1f} MiB")
  if args.no_compile:
    return out
  size = model_cfg.input_size
  batch = {"x": jax.ShapeDtypeStruct((c.global_batch_size, size, size, model_cfg.in_channels), jnp.float32,
                                     sharding=sharding.batch_sharding(mesh, 4)),
           "y": jax.ShapeDtypeStruct((c.global_batch_size,), jnp.int32, sharding=sharding.batch_sharding(mesh))}
  step = jit_train_step(jax.tree.map(lambda s: s.sharding, abstract), mesh, model_config=model_cfg,
                        objective=create_objective(model_cfg, c.objective),
                        accumulation_steps=c.optimizer.accumulation_steps, learning_rate_fn=schedule)
  with jax.set_mesh(mesh):
    memory = step.lower(abstract, batch).compile().memory_analysis()
  if memory is None:
    print(f"  the {jax.default_backend()} backend gives no compiled memory analysis")
    return out
  out["peak_bytes"] = peak = (memory.argument_size_in_bytes + memory.output_size_in_bytes
                              - memory.alias_size_in_bytes + memory.temp_size_in_bytes)
  fits = peak <= args.device_memory_gb * GIB
  print(f"  compiled train step ({jax.default_backend()}): arguments {memory.argument_size_in_bytes / GIB:.2f} GiB, "
        f"outputs {memory.output_size_in_bytes / GIB:.2f} GiB (donated {memory.alias_size_in_bytes / GIB:.2f}), "
        f"temporaries {memory.temp_size_in_bytes / GIB:.2f} GiB")
  print(f"  peak {peak / GIB:.2f} GiB per device of {args.device_memory_gb:g} GiB: "
        f"{'fits' if fits else 'does NOT fit'}")
  out["fits"] = fits
  return out


def parse_args(argv: list[str] | None = None):
  """The command line (see the module docstring); a bad flag raises UserError."""
  parser = cli.ArgumentParser(prog="python -m nag_jax.dry_run", description=__doc__.split("\n\n")[0])
  parser.add_argument("--model", default="DiT-XL/2", help="registry name, e.g. DiT-XL/2 or SiT-B/4")
  parser.add_argument("--devices", type=int, default=8, help="simulated CPU devices (0: this machine's)")
  parser.add_argument("--mesh", default="data=-1", help="axis sizes, e.g. 'data=2,fsdp=-1' (-1 fills)")
  parser.add_argument("--batch", type=int, default=256, help="global training batch")
  parser.add_argument("--accumulation-steps", type=int, default=1)
  parser.add_argument("--image-size", type=int, default=256)
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--device-memory-gb", type=float, default=16.0)
  parser.add_argument("--remat", action="store_true", help="activation checkpointing of every block")
  parser.add_argument("--depth", type=int, default=0, help="override the model's blocks (quicker compile)")
  parser.add_argument("--no-compile", action="store_true", help="only the per-device bytes (fast)")
  return parser.parse_args(argv)


@cli.entry_point
def main(argv: list[str] | None = None) -> int:
  """The command: prints the report; an expected failure is one `error:` line and code 2."""
  args = parse_args(argv)
  for name in ("batch", "accumulation_steps", "image_size"):
    if getattr(args, name) < 1:
      raise UserError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
  if args.devices < 0 or args.depth < 0 or not args.device_memory_gb > 0:
    raise UserError("--devices and --depth must be >= 0 and --device-memory-gb > 0")
  if args.devices and os.environ.get(_CHILD) != str(args.devices):
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={args.devices}"
    env = {**os.environ, "XLA_FLAGS": flags.strip(), "JAX_PLATFORMS": "cpu", _CHILD: str(args.devices)}
    os.execve(sys.executable, [sys.executable, "-m", "nag_jax.dry_run", *(argv or sys.argv[1:])], env)
  report(args)
  return 0


if __name__ == "__main__":
  sys.exit(main())
