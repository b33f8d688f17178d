"""Dry run of sharded training: the mesh, per-device bytes and the compiler's memory verdict, nothing allocated.

  python -m nag_jax.dry_run --topology v5p-16 --model DiT-XL/2 --batch 256 --mesh fsdp=-1 --dtype bfloat16
  python -m nag_jax.dry_run --model DiT-XL/2 --devices 8 --mesh fsdp=-1 --device-memory-gb 16

The state is abstract (`jax.eval_shape`) and the sharded train step is compiled ahead of time.
`--topology` names a TPU slice (a Cloud accelerator type such as v5p-16, v5litepod-64, v6e-32, v4-32, or a JAX
shape such as v5e:2x2; `--num-slices N` for multi-slice, data parallel over the slices): the real TPU compiler
(libtpu, the `tpu` extra) builds the program on this CPU machine, deviceless, and reports per chip its
arguments, outputs, temporaries and peak against the chip's HBM, the FLOPs (counted from the model, with XLA's
count beside it), the bytes its collectives move, and a roofline step time and images/s at 100% and 50% of the
chip's peaks, labelled as projections. `--topology cpu` (the default) is XLA:CPU's estimate instead:
`--devices N` simulates N CPU devices, `--devices 0` uses this machine's; a guide to TPU/GPU, which fuse
differently, so leave headroom.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import re
import sys

import jax
import jax.numpy as jnp

from nag_jax import cli, hardware, platform, sharding
from nag_jax.errors import UserError
from nag_jax.models.layers import FENCE_SCOPE
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
  # XLA:CPU's estimate is a guide to accelerators: compiled as they run it, without the CPU-only gradient fence.
  fence = "off" if args.topology == "cpu" and args.grad_fence == "auto" else args.grad_fence
  c.model = base_config.model_fields(args.model, image_size=args.image_size, dtype=args.dtype, remat=args.remat,
                                     grad_fence=fence)
  if args.depth:
    c.model.depth = args.depth
  c.global_batch_size = args.batch
  c.optimizer.accumulation_steps = args.accumulation_steps
  c.mesh.update({"data": 1, "fsdp": 1, "tensor": 1, **parse_mesh(args.mesh)})  # unnamed axes: 1
  return c


def tpu_devices(args: argparse.Namespace):
  """(chip, devices) of the TPU slice --topology names, for the TPU compiler on this host (no TPU needed)."""
  if importlib.util.find_spec("libtpu") is None:
    raise UserError("--topology needs the TPU compiler, libtpu: pip install -e \".[tpu]\"")
  from jax.experimental import topologies  # pylint: disable=import-outside-toplevel
  chip, name = hardware.parse_topology(args.topology)
  desc = topologies.get_topology_desc(platform="tpu", topology_name=name, chip_config_name="default",
                                      chips_per_host_bounds=(2, 2, 1), num_slices=args.num_slices)
  return chip, list(desc.devices)


COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4, "s32": 4, "u32": 4,
                "f64": 8, "s64": 8, "u64": 8}


def collective_bytes(hlo: str) -> dict[str, float]:
  """Bytes each kind of collective moves per chip in a compiled (SPMD, per-chip) HLO program, ring estimates:
  an all-gather receives (g-1)/g of its result, a reduce-scatter sends (g-1) results' worth, an all-reduce 2 (g-1)/g
  of its operand, an all-to-all (g-1)/g, a collective-permute all of it (g: the replica group's size)."""
  out = {k: 0.0 for k in COLLECTIVES}
  for line in hlo.splitlines():
    kind = next((k for k in COLLECTIVES if f" {k}(" in line or f" {k}-start(" in line), None)
    if kind is None or "=" not in line:
      continue
    result = line.split("=", 1)[1].split(kind, 1)[0]
    sizes = [_DTYPE_BYTES.get(dt, 4) * math.prod(int(d) for d in dims.split(",") if d)
             for dt, dims in re.findall(r"(\w+)\[([\d,]*)\]", result)]
    if not sizes:
      continue
    size = max(sizes)
    groups = re.search(r"replica_groups=\[(\d+),(\d+)\]", line) or re.search(r"replica_groups=\{\{([\d,]+)\}", line)
    g = int(groups.group(2)) if groups and groups.lastindex == 2 else len(groups.group(1).split(",")) if groups else 2
    share = (g - 1) / max(g, 1)
    out[kind] += {"all-gather": share, "reduce-scatter": g - 1, "all-reduce": 2 * share, "all-to-all": share,
                  "collective-permute": 1.0}[kind] * size
  return out


def report(args: argparse.Namespace) -> dict:
  """Builds the abstract state and compiles the step; returns the numbers it prints."""
  c = build_config(args)
  chip, devices = (None, None) if args.topology == "cpu" else tpu_devices(args)
  mesh_config = c.mesh.to_dict()
  if args.num_slices > 1:  # data parallel over the slices (the slow DCN), the mesh within each
    mesh_config["dcn"] = {"data": args.num_slices}
  mesh = sharding.make_mesh(mesh_config, devices=devices)
  sharding.check_batch(mesh, c.global_batch_size // c.optimizer.accumulation_steps)
  model_cfg = platform.resolve(config_validation.model_config_of(c), mesh.devices)
  _, abstract, schedule = init_state.state_initializer(c, model_cfg, mesh)
  n_params = sum(x.size for x in jax.tree.leaves(abstract.params))
  kind = "chip" if chip else "device"
  out = {"topology": args.topology, "devices": mesh.size, "mesh": dict(mesh.shape), "params": n_params,
         "param_bytes": sharding.bytes_per_device(abstract.params),
         "ema_bytes": sharding.bytes_per_device(abstract.ema_params),
         "opt_bytes": sharding.bytes_per_device(abstract.opt_state), "grad_fence": model_cfg.grad_fence}
  name = args.model + (f" at depth {model_cfg.depth}" if args.depth else "") + (" with remat" if args.remat else "")
  where = f"{mesh.size} chips of {args.topology} ({mesh.devices.flat[0].device_kind})" if chip else f"{mesh.size} devices"
  print(f"{name} ({n_params / 1e6:.1f}M params, {args.dtype} compute), global batch {c.global_batch_size} "
        f"(x{c.optimizer.accumulation_steps} accumulation), {where}, mesh {out['mesh']}")
  print(f"  per {kind}: params {out['param_bytes'] / MIB:.1f} MiB, EMA {out['ema_bytes'] / MIB:.1f} MiB, "
        f"optimizer {out['opt_bytes'] / MIB:.1f} MiB")
  if args.no_compile:
    return out
  size = model_cfg.input_size
  batch = {"x": jax.ShapeDtypeStruct((c.global_batch_size, size, size, model_cfg.in_channels), jnp.float32,
                                     sharding=sharding.batch_sharding(mesh, 4)),
           "y": jax.ShapeDtypeStruct((c.global_batch_size,), jnp.int32, sharding=sharding.batch_sharding(mesh))}
  out["compiler_options"] = platform.dot_compiler_options(model_cfg, mesh.devices)
  step = jit_train_step(jax.tree.map(lambda s: s.sharding, abstract), mesh, model_config=model_cfg,
                        objective=create_objective(model_cfg, c.objective),
                        accumulation_steps=c.optimizer.accumulation_steps, learning_rate_fn=schedule)
  with jax.set_mesh(mesh):
    compiled = step.lower(abstract, batch).compile()
  memory = compiled.memory_analysis()
  if memory is None:
    print(f"  the {jax.default_backend()} backend gives no compiled memory analysis")
    return out
  hbm = chip.hbm_bytes if chip else args.device_memory_gb * GIB
  out.update(argument_bytes=memory.argument_size_in_bytes, output_bytes=memory.output_size_in_bytes,
             alias_bytes=memory.alias_size_in_bytes, temp_bytes=memory.temp_size_in_bytes, memory_bytes=hbm)
  out["peak_bytes"] = peak = (memory.argument_size_in_bytes + memory.output_size_in_bytes
                              - memory.alias_size_in_bytes + memory.temp_size_in_bytes)
  out["fits"] = fits = peak <= hbm
  compiler = f"TPU compiler, {mesh.devices.flat[0].device_kind}" if chip else jax.default_backend()
  print(f"  compiled train step ({compiler}): arguments {memory.argument_size_in_bytes / GIB:.2f} GiB, "
        f"outputs {memory.output_size_in_bytes / GIB:.2f} GiB (donated {memory.alias_size_in_bytes / GIB:.2f}), "
        f"temporaries {memory.temp_size_in_bytes / GIB:.2f} GiB")
  print(f"  peak {peak / GIB:.2f} GiB per {kind} of {hbm / GIB:.2f} GiB: {'fits' if fits else 'does NOT fit'}"
        f" ({(1 - peak / hbm):.0%} spare)")
  hlo = compiled.as_text()
  out["fence_in_program"] = FENCE_SCOPE in hlo
  out["cpu_options_in_program"] = any(k.startswith("xla_cpu") for k in out["compiler_options"])
  if chip:
    project(out, chip, compiled, hlo, c, model_cfg, mesh.size)
  return out


def project(out: dict, chip: hardware.TpuChip, compiled, hlo: str, c, model_cfg, chips: int) -> None:
  """FLOPs, HBM traffic and collective bytes per chip, and the roofline step time they bound (projections)."""
  flops = 3 * hardware.forward_flops(model_cfg) * c.global_batch_size / chips  # forward + backward, per chip
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  xla_flops, hbm_bytes = float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0))
  comm = collective_bytes(hlo)
  out.update(flops_per_chip=flops, xla_flops_per_chip=xla_flops, hbm_bytes_per_chip=hbm_bytes,
             collective_bytes_per_chip=comm)
  print(f"  per chip per step: {flops / 1e12:.2f} TFLOP counted from the model (3 x {hardware.forward_flops(model_cfg) / 1e9:.1f} "
        f"GFLOP per image forward; XLA's cost analysis {xla_flops / 1e12:.2f}), {hbm_bytes / GIB:.2f} GiB of HBM traffic, "
        f"collectives " + ", ".join(f"{k} {v / MIB:.1f} MiB" for k, v in comm.items() if v) + "")
  times = {"compute": flops / chip.bf16_flops, "HBM": hbm_bytes / chip.hbm_bandwidth}
  if chip.ici_bandwidth:
    times["ICI"] = sum(comm.values()) / (chip.ici_bandwidth / 2)  # each direction carries half
  bound = max(times, key=times.get)
  out["projection"] = {}
  for efficiency in (1.0, 0.5):
    step = times[bound] / efficiency
    out["projection"][f"{efficiency:.0%}"] = {"step_s": step, "images_per_s": c.global_batch_size / step}
    print(f"  projection at {efficiency:.0%} of peak: {step * 1e3:.1f} ms per step, "
          f"{c.global_batch_size / step:,.0f} images/s ({bound}-bound; " +
          ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in times.items()) + " at 100%)")


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
  parser.add_argument("--topology", default="cpu", help="cpu (XLA:CPU's estimate) or a TPU slice: v5p-16, "
                      "v5litepod-64, v6e-32, v4-32, v5e:2x2 (the TPU compiler, deviceless)")
  parser.add_argument("--num-slices", type=int, default=1, help="TPU slices (multi-slice over DCN)")
  parser.add_argument("--grad-fence", default="auto", choices=("auto", "on", "off"),
                      help="the CPU-only gradient fence (auto: the platform's choice)")
  parser.add_argument("--json", default=None, help="also write the report as JSON here")
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
  if args.num_slices < 1:
    raise UserError("--num-slices must be >= 1")
  if args.topology != "cpu":
    hardware.parse_topology(args.topology)  # a bad name is one line before any work
  child = f"{args.topology}:{args.devices}"
  if (args.devices or args.topology != "cpu") and os.environ.get(_CHILD) != child:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", _CHILD: child}
    if args.topology == "cpu":
      env["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={args.devices}"
    else:  # only the TPU compiler is used: never look for a TPU or its metadata server
      env["TPU_SKIP_MDS_QUERY"] = "1"
    os.execve(sys.executable, [sys.executable, "-m", "nag_jax.dry_run", *(argv or sys.argv[1:])], env)
  out = report(args)
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump(out, f, indent=2, default=str)
  return 0


if __name__ == "__main__":
  sys.exit(main())
