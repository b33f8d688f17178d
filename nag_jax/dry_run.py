"""Dry run of a sharded program: the mesh, per-device bytes and the compiler's verdict, nothing allocated.

  python -m nag_jax.dry_run --topology v5p-16 --model DiT-XL/2 --batch 256 --mesh fsdp=-1 --dtype bfloat16
  python -m nag_jax.dry_run --topology v5p-16 --program sample --batch 512 --dtype bfloat16 --attention splash
  python -m nag_jax.dry_run --config configs/imagenet_finetune_nag.py:DiT,v5p-64
  python -m nag_jax.dry_run --model DiT-XL/2 --devices 8 --mesh fsdp=-1 --device-memory-gb 16

The state is abstract (`jax.eval_shape`) and the program is compiled ahead of time: `--program train` (the
default) the sharded train step, `--program sample` one call of the sampler with the paper's NAG+CFG guidance
(`--guidance`), every step and the SD-VAE decoding included. `--config FILE:ARG` takes the model, batch, mesh,
dtype, remat, accumulation and (for a hardware variant, nag_jax.hardware.SETUPS) the TPU slice from a training
or sampling config.
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
from nag_jax.models import config as config_module
from nag_jax.models import get_model_config, init_params
from nag_jax.models.layers import FENCE_SCOPE
from nag_jax.sampling import config as sample_config
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
  """(config, program) of the dry run: the --config file's (--mesh, --attention and --steps, when given, override
  it; its model, batch, dtype, remat and accumulation stand), or one built from the flags."""
  if args.config:
    c = cli.load_config_file(args.config)
    program = "train" if "global_batch_size" in c else "sample"
    if args.program and args.program != program:
      raise UserError(f"--config {args.config} is a {program} config; --program {args.program} does not apply")
    if args.attention:
      (c.model if program == "train" else c).attention = args.attention
    if args.steps and program == "sample":
      c.sampler.num_steps = args.steps
    if args.mesh:
      c.mesh.update({"data": 1, "fsdp": 1, "tensor": 1, **parse_mesh(args.mesh)})
    return c, program
  program = args.program or "train"
  if program == "sample":
    c = sample_config.default_sample_config(args.model[:3].lower(), args.guidance)
    c.update(batch_size=args.batch, dtype=args.dtype, attention=args.attention or "auto")
    c.sampler.num_steps = args.steps or c.sampler.num_steps
  else:
    c = base_config.get_base_config()
    c.global_batch_size = args.batch
    c.optimizer.accumulation_steps = args.accumulation_steps
    c.model = base_config.model_fields(args.model, image_size=args.image_size, dtype=args.dtype, remat=args.remat,
                                       attention=args.attention or "auto")
  c.mesh.update({"data": 1, "fsdp": 1, "tensor": 1, **parse_mesh(args.mesh or "data=-1")})  # unnamed axes: 1
  return c, program


def model_config(args: argparse.Namespace, c, program: str):
  """The ModelConfig compiled: the training config's model, or --model in the sampling config's dtype."""
  if program == "train":
    cfg = config_validation.model_config_of(c)
  else:
    name = args.model
    if args.config and not args.model_given:  # a sampling config: the family its sampler is for
      name = "SiT-XL/2" if c.sampler.method in ("sde", "ode") else "DiT-XL/2"
    cfg = get_model_config(name, image_size=args.image_size, dtype=c.dtype, attention=c.attention or "auto")
  if args.depth:
    cfg = cfg.replace(depth=args.depth)
  # XLA:CPU's estimate is a guide to accelerators: compiled as they run it, without the CPU-only gradient fence.
  fence = "off" if args.topology == "cpu" and args.grad_fence == "auto" else args.grad_fence
  return cfg.replace(grad_fence=fence)


def tpu_devices(args: argparse.Namespace):
  """(chip, devices) of the TPU slice --topology names, for the TPU compiler on this host (no TPU needed)."""
  if importlib.util.find_spec("libtpu") is None:
    raise UserError("--topology needs the TPU compiler, libtpu: pip install -e \".[tpu]\"")
  from jax.experimental import topologies  # pylint: disable=import-outside-toplevel
  chip, name = hardware.parse_topology(args.topology)
  desc = topologies.get_topology_desc(platform="tpu", topology_name=name, chip_config_name=chip.chip_config,
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
  """Builds the abstract state and compiles the program; returns the numbers it prints."""
  c, program = build_config(args)
  topology = args.topology
  chip, devices = (None, None) if topology == "cpu" else tpu_devices(args)
  mesh_config = c.mesh.to_dict()
  if args.num_slices > 1:  # data parallel over the slices (the slow DCN), the mesh within each
    mesh_config["dcn"] = {"data": args.num_slices}
  mesh = sharding.make_mesh(mesh_config, devices=devices)
  model_cfg = platform.resolve(model_config(args, c, program), mesh.devices)
  if args.num_slices > 1:  # each data-parallel group's devices in one slice: only the data axis crosses DCN
    groups = mesh.devices.reshape(mesh.shape["data"], -1)
    out_slices = {"slices": len({d.slice_index for d in mesh.devices.flat}),
                  "groups_within_one_slice": all(len({d.slice_index for d in g}) == 1 for g in groups)}
  else:
    out_slices = {"slices": 1}
  kind = "chip" if chip else "device"
  where = f"{mesh.size} chips of {topology} ({mesh.devices.flat[0].device_kind})" if chip else f"{mesh.size} devices"
  name = describe_model(model_cfg) + (f" at depth {model_cfg.depth}" if args.depth else "")
  out = {"program": program, "topology": topology, "devices": mesh.size, "mesh": dict(mesh.shape),
         "attention": model_cfg.attention, "grad_fence": model_cfg.grad_fence, "dtype": model_cfg.dtype,
         **out_slices}
  if program == "train":
    lowered, batch = lower_train(c, model_cfg, mesh, out, kind, name, where, not args.no_compile)
  else:
    lowered, batch = lower_sample(c, model_cfg, mesh, out, kind, name, where, not args.no_compile,
                                  decode=not args.no_decode)
  out["batch"] = batch
  out["compiler_options"] = platform.dot_compiler_options(model_cfg, mesh.devices)
  if lowered is None:
    return out
  compiled = lowered.compile()
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
  out["spare"] = 1 - peak / hbm
  compiler = f"TPU compiler, {mesh.devices.flat[0].device_kind}" if chip else jax.default_backend()
  print(f"  compiled {'train step' if program == 'train' else 'sampler call'} ({compiler}): arguments "
        f"{memory.argument_size_in_bytes / GIB:.2f} GiB, outputs {memory.output_size_in_bytes / GIB:.2f} GiB "
        f"(donated {memory.alias_size_in_bytes / GIB:.2f}), temporaries {memory.temp_size_in_bytes / GIB:.2f} GiB")
  print(f"  peak {peak / GIB:.2f} GiB per {kind} of {hbm / GIB:.2f} GiB: {'fits' if fits else 'does NOT fit'}"
        f" ({(1 - peak / hbm):.0%} spare)")
  hlo = compiled.as_text()
  out["fence_in_program"] = FENCE_SCOPE in hlo
  out["cpu_options_in_program"] = any(k.startswith("xla_cpu") for k in out["compiler_options"])
  out["mosaic_calls"] = hlo.count('custom_call_target="tpu_custom_call"')  # XLA emits some itself (the VAE's)
  out["splash_kernels"] = sorted(set(re.findall(r"%(splash_mha_\w+?)(?:\.\d+)? = .*tpu_custom_call", hlo)))
  out["collective_ops"] = {k: len(re.findall(rf" {k}(?:-start)?\(", hlo)) for k in COLLECTIVES}
  if chip:
    project(out, chip, compiled, hlo, model_cfg, mesh.size)
  return out


def describe_model(cfg) -> str:
  """'DiT-XL/2' of a registry-sized ModelConfig (else its widths)."""
  size = next((k for k, v in config_module.SIZES.items() if v[1:] == (cfg.hidden_size, cfg.num_heads)), None)
  family = {"dit": "DiT", "sit": "SiT"}[cfg.family]
  return f"{family}-{size}/{cfg.patch_size}" if size else f"{family} depth {cfg.depth} width {cfg.hidden_size}"


def lower_train(c, model_cfg, mesh, out: dict, kind: str, name: str, where: str, lower: bool):
  """(the lowered train step or None for --no-compile, global batch); per-device state bytes into `out`."""
  sharding.check_batch(mesh, c.global_batch_size // c.optimizer.accumulation_steps)
  _, abstract, schedule = init_state.state_initializer(c, model_cfg, mesh)
  n_params = sum(x.size for x in jax.tree.leaves(abstract.params))
  out.update(params=n_params, param_bytes=sharding.bytes_per_device(abstract.params),
             ema_bytes=sharding.bytes_per_device(abstract.ema_params),
             opt_bytes=sharding.bytes_per_device(abstract.opt_state), remat=model_cfg.remat,
             accumulation_steps=c.optimizer.accumulation_steps)
  out["flops_per_image"] = 3 * hardware.forward_flops(model_cfg)  # forward + backward
  out["flops_note"] = f"3 x {hardware.forward_flops(model_cfg) / 1e9:.1f} GFLOP per image forward"
  print(f"{name} ({n_params / 1e6:.1f}M params, {model_cfg.dtype} compute, attention {model_cfg.attention}"
        f"{', remat' if model_cfg.remat else ''}), train step, global batch {c.global_batch_size} "
        f"(x{c.optimizer.accumulation_steps} accumulation), {where}, mesh {out['mesh']}")
  print(f"  per {kind}: params {out['param_bytes'] / MIB:.1f} MiB, EMA {out['ema_bytes'] / MIB:.1f} MiB, "
        f"optimizer {out['opt_bytes'] / MIB:.1f} MiB")
  if not lower:
    return None, c.global_batch_size
  size = model_cfg.input_size
  batch = {"x": jax.ShapeDtypeStruct((c.global_batch_size, size, size, model_cfg.in_channels), jnp.float32,
                                     sharding=sharding.batch_sharding(mesh, 4)),
           "y": jax.ShapeDtypeStruct((c.global_batch_size,), jnp.int32, sharding=sharding.batch_sharding(mesh))}
  step = jit_train_step(jax.tree.map(lambda s: s.sharding, abstract), mesh, model_config=model_cfg,
                        objective=create_objective(model_cfg, c.objective),
                        accumulation_steps=c.optimizer.accumulation_steps, learning_rate_fn=schedule)
  with jax.set_mesh(mesh):
    return step.lower(abstract, batch), c.global_batch_size


def lower_sample(c, model_cfg, mesh, out: dict, kind: str, name: str, where: str, lower: bool, decode: bool):
  """(the lowered sampler call or None for --no-compile, images per call): the config's sampler and guidance,
  SD-VAE decoding to uint8 inside the call (as `nag_jax.sample` with --config.vae)."""
  from nag_jax.checkpoints import model_dir  # pylint: disable=import-outside-toplevel
  from nag_jax.models import vae as vae_lib, vae_io  # pylint: disable=import-outside-toplevel
  from nag_jax.sampling.pipeline import build_sampler, network_rows  # pylint: disable=import-outside-toplevel
  sampler_cfg, guidance = sample_config.to_dataclasses(c)
  sharding.check_batch(mesh, c.batch_size)
  rows = network_rows(model_cfg, sampler_cfg, guidance)
  shardings = model_dir.param_shardings(model_cfg, mesh)
  params = sharding.with_shardings(jax.eval_shape(lambda: init_params(model_cfg, jax.random.key(0))), shardings)
  n_params = sum(x.size for x in jax.tree.leaves(params))
  rep = sharding.replicated(mesh)
  out.update(params=n_params, param_bytes=sharding.bytes_per_device(params), network_rows_per_image=rows,
             steps=sampler_cfg.num_steps, guidance={"cfg_scale": guidance.cfg_scale, "nag_scale": guidance.nag_scale})
  out["flops_per_image"] = rows * hardware.forward_flops(model_cfg)
  out["flops_note"] = (f"{rows} network rows per image ({sampler_cfg.num_steps} steps x guidance branches) x "
                       f"{hardware.forward_flops(model_cfg) / 1e9:.1f} GFLOP; the VAE decoder not counted")
  print(f"{name} ({n_params / 1e6:.1f}M params, {c.dtype} compute, attention {model_cfg.attention}), sampler call: "
        f"{sampler_cfg.method} {sampler_cfg.num_steps} steps, cfg {guidance.cfg_scale} nag {guidance.nag_scale} "
        f"({rows} network rows per image){', SD-VAE decode' if decode else ''}, {c.batch_size} images per call, "
        f"{where}, mesh {out['mesh']}")
  print(f"  per {kind}: params {out['param_bytes'] / MIB:.1f} MiB")
  if not lower:
    return None, c.batch_size
  decode_fn, vae_params = None, None
  if decode:
    vae = vae_lib.AutoencoderKL(vae_lib.SD_VAE)
    decode_fn = lambda p, z: vae_io.decode_to_uint8(vae, p, z)
    vae_params = sharding.with_shardings(vae_lib.abstract_params(vae_lib.SD_VAE),
                                         jax.tree.map(lambda _: rep, vae_lib.abstract_params(vae_lib.SD_VAE)))
  sample = sharding.shard_sampler(build_sampler(model_cfg, sampler_cfg, guidance, decode=decode_fn, jit=False,
                                                devices=mesh.devices), mesh, shardings)
  key = jax.ShapeDtypeStruct((), jax.eval_shape(lambda: jax.random.key(0)).dtype, sharding=rep)
  labels = jax.ShapeDtypeStruct((c.batch_size,), jnp.int32, sharding=sharding.batch_sharding(mesh))
  with jax.set_mesh(mesh):
    return sample.jitted.lower(params, key, labels, vae_params, None, None, None), c.batch_size


def project(out: dict, chip: hardware.TpuChip, compiled, hlo: str, model_cfg, chips: int) -> None:
  """FLOPs, HBM traffic and collective bytes per chip, and the roofline time per call they bound (projections).

  XLA's cost analysis and the HLO text hold a loop's body once: for the sampler (its steps) and for gradient
  accumulation (its micro-batches) XLA's FLOPs and bytes are one iteration's plus what runs once. The collectives'
  and (training) HBM bytes are then multiplied by the iterations, an upper bound; the sampler's HBM traffic is not
  projected (one step's, the VAE's included: its time is not a bound), its compute is the model count's.
  """
  flops = out["flops_per_image"] * out["batch"] / chips
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  xla_flops, hbm_bytes = float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0))
  loops = out["steps"] if out["program"] == "sample" else out["accumulation_steps"]
  comm = collective_bytes(hlo)
  out.update(flops_per_chip=flops, xla_flops_per_chip=xla_flops, hbm_bytes_per_chip=hbm_bytes,
             collective_bytes_per_chip=comm, loop_iterations=loops)
  unit = "step" if out["program"] == "train" else "call"
  once = f" (a loop's body counted once: {loops} iterations)" if loops > 1 else ""
  print(f"  per chip per {unit}: {flops / 1e12:.2f} TFLOP counted from the model ({out['flops_note']}); XLA's cost "
        f"analysis{once} {xla_flops / 1e12:.2f} TFLOP and {hbm_bytes / GIB:.2f} GiB of HBM traffic; collectives "
        + (", ".join(f"{k} {v / MIB:.1f} MiB" for k, v in comm.items() if v) or "none"))
  times = {"compute": (flops if loops > 1 else max(flops, xla_flops)) / chip.bf16_flops}
  if out["program"] == "train":
    times["HBM"] = hbm_bytes * loops / chip.hbm_bandwidth
  if chip.ici_bandwidth:
    times["ICI"] = sum(comm.values()) * loops / (chip.ici_bandwidth / 2)  # each direction carries half
  bound = max(times, key=times.get)
  out["projection"] = {"bound": bound, "seconds_at_100%": times}
  for efficiency in (1.0, 0.5):
    seconds = times[bound] / efficiency
    out["projection"][f"{efficiency:.0%}"] = {f"{unit}_s": seconds, "images_per_s": out["batch"] / seconds}
    print(f"  projection at {efficiency:.0%} of peak: {seconds * 1e3:,.1f} ms per {unit}, "
          f"{out['batch'] / seconds:,.0f} images/s ({bound}-bound; " +
          ", ".join(f"{k} {v * 1e3:,.1f} ms" for k, v in times.items()) + " at 100%)")


def parse_args(argv: list[str] | None = None):
  """The command line (see the module docstring); a bad flag raises UserError."""
  parser = cli.ArgumentParser(prog="python -m nag_jax.dry_run", description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", default=None, help="a training or sampling config, FILE.py[:ARG] (e.g. "
                      "configs/imagenet_finetune_nag.py:DiT,v5p-64): its model, batch, mesh, dtype and hardware")
  parser.add_argument("--program", default=None, choices=("train", "sample"),
                      help="the train step (default) or one sampler call (NAG+CFG, VAE decoding included)")
  parser.add_argument("--model", default=None, help="registry name, e.g. DiT-XL/2 (default) or SiT-B/4")
  parser.add_argument("--devices", type=int, default=8, help="simulated CPU devices (0: this machine's)")
  parser.add_argument("--mesh", default=None, help="axis sizes, e.g. 'data=2,fsdp=-1' (-1 fills; default: the "
                      "config's, else data=-1)")
  parser.add_argument("--batch", type=int, default=256, help="global training batch, or images per sampler call")
  parser.add_argument("--accumulation-steps", type=int, default=1)
  parser.add_argument("--image-size", type=int, default=256)
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--device-memory-gb", type=float, default=16.0)
  parser.add_argument("--remat", action="store_true", help="activation checkpointing of every block")
  parser.add_argument("--depth", type=int, default=0, help="override the model's blocks (quicker compile)")
  parser.add_argument("--no-compile", action="store_true", help="only the per-device bytes (fast)")
  parser.add_argument("--attention", default=None, choices=[a for a in config_module.ATTENTION if not a.endswith("-interpret")],
                      help="the attention backend (default: the config's, auto)")
  parser.add_argument("--guidance", default="nag_cfg", choices=tuple(sample_config.PRESETS),
                      help="the sampler's guidance preset (paper appendix B)")
  parser.add_argument("--steps", type=int, default=0, help="sampler steps (default: the config's, 250)")
  parser.add_argument("--no-decode", action="store_true", help="sampler without the SD-VAE decoding")
  parser.add_argument("--topology", default=None, help="cpu (XLA:CPU's estimate) or a TPU slice: v5p-16, "
                      "v5litepod-64, v6e-32, v4-32, v5e:2x2 (the TPU compiler, deviceless); default: the config's "
                      "hardware, else cpu")
  parser.add_argument("--num-slices", type=int, default=1, help="TPU slices (multi-slice over DCN)")
  parser.add_argument("--grad-fence", default="auto", choices=("auto", "on", "off"),
                      help="the CPU-only gradient fence (auto: the platform's choice)")
  parser.add_argument("--json", default=None, help="also write the report as JSON here")
  args = parser.parse_args(argv)
  args.model_given = args.model is not None
  args.model = args.model or "DiT-XL/2"
  return args


def resolve_topology(args: argparse.Namespace) -> str:
  """--topology, else the TPU slice of the --config's hardware variant, else "cpu"."""
  if args.topology:
    return args.topology
  if args.config:
    name = cli.load_config_file(args.config).get("hardware", "")
    if name and hardware.setup(name).topology:
      return hardware.setup(name).topology
  return "cpu"


@cli.entry_point
def main(argv: list[str] | None = None) -> int:
  """The command: prints the report; an expected failure is one `error:` line and code 2."""
  args = parse_args(argv)
  for name in ("batch", "accumulation_steps", "image_size"):
    if getattr(args, name) < 1:
      raise UserError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
  if args.devices < 0 or args.depth < 0 or not args.device_memory_gb > 0:
    raise UserError("--devices and --depth must be >= 0 and --device-memory-gb > 0")
  if args.num_slices < 1 or args.steps < 0:
    raise UserError("--num-slices must be >= 1 and --steps >= 0")
  args.topology = resolve_topology(args)
  if args.topology != "cpu":
    hardware.parse_topology(args.topology)  # a bad name is one line before any work
  child = f"{args.topology}:{args.devices}"
  if (args.devices or args.topology != "cpu") and os.environ.get(_CHILD) != child:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", _CHILD: child}
    if args.topology == "cpu":
      env["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={args.devices}"
    else:  # only the TPU compiler is used: never look for a TPU or its metadata server, and let several dry
      env.update(TPU_SKIP_MDS_QUERY="1", ALLOW_MULTIPLE_LIBTPU_LOAD="1")  # runs share libtpu (no TPU to guard)
    os.execve(sys.executable, [sys.executable, "-m", "nag_jax.dry_run", *(argv or sys.argv[1:])], env)
  out = report(args)
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump(out, f, indent=2, default=str)
  return 0


if __name__ == "__main__":
  sys.exit(main())
