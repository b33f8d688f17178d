"""What the dry run and the benchmarks need to know about accelerators: each TPU generation's chip, slice names,
the GPUs' peaks, the hardware variants of the paper's runs (`SETUPS`), and the model's FLOPs.

The TPU table is Google's published per-chip figures (cloud.google.com/tpu/docs/v4, /v5e, /v5p-training, /v6e,
read December 2026); a figure the page does not give is None, and what depends on it is not projected. The GPU
figures are NVIDIA's data sheets (dense, without sparsity). Step times computed from these are projections
(roofline bounds), not measurements.
"""
from __future__ import annotations

import dataclasses
import math
import re

from nag_jax.errors import UserError
from nag_jax.models.config import ModelConfig

GB, GIB = 1e9, 2**30


@dataclasses.dataclass(frozen=True)
class TpuChip:
  """One chip of a TPU generation (per-chip figures; bandwidths in bytes/s)."""
  generation: str
  hbm_bytes: float
  bf16_flops: float        # peak dense bf16 FLOP/s
  hbm_bandwidth: float
  ici_bandwidth: float | None  # bidirectional inter-chip interconnect
  dcn_bandwidth: float | None  # data-centre network (multi-slice)
  cores_per_chip: int      # Cloud accelerator-type names count TensorCores: v4-8 = 4 chips
  torus_dims: int          # 3 for v4/v5p (AxBxC), 2 for v5e/v6e (AxB)
  chip_config: str = "default"  # libtpu's chip config: v4's "default" shows each TensorCore as a device, while
                                # JAX on a v4 VM runs one megacore device per chip, as "megacore" does


CHIPS = {
    "v4": TpuChip("v4", 32 * GIB, 275e12, 1200 * GB, None, None, cores_per_chip=2, torus_dims=3,
                   chip_config="megacore"),
    "v5e": TpuChip("v5e", 16 * GB, 197e12, 819 * GB, 400 * GB, 2 * 100e9 / 8 / 8, cores_per_chip=1, torus_dims=2),
    "v5p": TpuChip("v5p", 95 * GIB, 459e12, 2765 * GB, 1200 * GB, 50e9 / 8, cores_per_chip=2, torus_dims=3),
    "v6e": TpuChip("v6e", 32 * GB, 918e12, 1638 * GB, 800 * GB, None, cores_per_chip=1, torus_dims=2),
}
# Dense bf16 peak FLOP/s and memory of GPUs, by device_kind substring (NVIDIA data sheets, SXM parts).
GPUS = {"H200": (989e12, 141 * GB), "H100": (989e12, 80 * GB), "A100": (312e12, 80 * GB), "L4": (121e12, 24 * GB)}
# device_kind of each TPU generation, as JAX reports it.
TPU_KINDS = {"v4": "TPU v4", "v5e": "TPU v5 lite", "v5p": "TPU v5", "v6e": "TPU v6 lite"}

# Cloud accelerator-type prefixes -> generation (v5e slices are "v5litepod-N").
ALIASES = {"v4": "v4", "v5e": "v5e", "v5litepod": "v5e", "v5lite": "v5e", "v5p": "v5p", "v6e": "v6e"}
# Slice shapes by chip count, as Cloud TPU builds them.
SHAPES_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8", 256: "4x8x8",
             512: "8x8x8"}
SHAPES_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}


def parse_topology(name: str) -> tuple[TpuChip, str]:
  """(chip, JAX topology name "gen:AxBxC") of a Cloud accelerator type ("v5p-64", "v5litepod-16", "v6e-32") or a
  JAX topology name ("v5e:2x2"); UserError for anything else."""
  m = re.fullmatch(r"(v4|v5e|v5litepod|v5lite|v5p|v6e)[:-](\w+)", name.strip().lower())
  if not m:
    raise UserError(f"--topology must be cpu, a TPU type such as v5p-64, v5litepod-16, v6e-32, v4-32, or a shape such "
                    f"as v5e:2x2, got {name!r}")
  chip = CHIPS[ALIASES[m.group(1)]]
  size = m.group(2)
  if "x" in size:
    dims = [int(d) for d in size.split("x") if d.isdigit()]
    if len(dims) != chip.torus_dims or math.prod(dims) < 1:
      raise UserError(f"--topology {name}: a {chip.generation} shape has {chip.torus_dims} dimensions")
    return chip, f"{chip.generation}:{size}"
  if not size.isdigit() or int(size) % chip.cores_per_chip:
    raise UserError(f"--topology {name}: the number after the dash counts "
                    f"{'TensorCores (2 per chip)' if chip.cores_per_chip == 2 else 'chips'}")
  chips = int(size) // chip.cores_per_chip
  shapes = SHAPES_3D if chip.torus_dims == 3 else SHAPES_2D
  if chips not in shapes:
    raise UserError(f"--topology {name}: {chips} chips is not a {chip.generation} slice this tool knows "
                    f"({', '.join(str(c * chip.cores_per_chip) for c in shapes)}); give the shape, e.g. "
                    f"{chip.generation}:{next(iter(shapes.values()))}")
  return chip, f"{chip.generation}:{shapes[chips]}"


def forward_flops(config: ModelConfig) -> float:
  """FLOPs of one DiT/SiT forward of one image (2 per multiply-add): about 237 GFLOP for XL/2 at 256 px.

  Per block: the qkv, output and MLP projections, the two attention products, the adaLN modulation; plus
  the patch embedding and the final layer.
  """
  t, d, h = config.num_tokens, config.hidden_size, int(config.hidden_size * config.mlp_ratio)
  patch = config.patch_size ** 2
  block = 2 * t * d * (3 * d + d + 2 * h) + 2 * 2 * t * t * d + 2 * d * 6 * d
  embed = 2 * t * patch * config.in_channels * d
  final = 2 * t * d * patch * config.out_channels + 2 * d * 2 * d
  return float(config.depth * block + embed + final)


def peak_flops(device_kind: str) -> float | None:
  """Dense bf16 peak FLOP/s of a device by its `device_kind` ("TPU v5 lite", "NVIDIA H100 80GB HBM3"); None if
  unknown."""
  kind = device_kind.lower()
  for generation, name in sorted(TPU_KINDS.items(), key=lambda kv: -len(kv[1])):  # "TPU v5 lite" before "TPU v5"
    if kind.startswith(name.lower()):
      return CHIPS[generation].bf16_flops
  return next((flops for name, (flops, _) in GPUS.items() if name.lower() in kind), None)


@dataclasses.dataclass(frozen=True)
class Setup:
  """How the paper's XL/2 runs are laid out on one kind of hardware (`configs/*.py:...,NAME`).

  Training keeps the paper's global batch 256 in bfloat16 compute (float32 params, optimizer and EMA); sampling
  runs `sample_per_device` images per device per compiled call, data parallel (the replicated XL/2 weights are
  1.3 GB: no per-step parameter all-gather). The figures each choice gives are in the config files' docstrings,
  from `python -m nag_jax.dry_run --config ...` (the TPU compiler; GPU rows are not compiler-checked).
  """
  devices: int               # chips (TPU) or GPUs
  train_mesh: dict           # axis sizes of the training mesh
  sample_per_device: int     # images per device per sampler call
  remat: bool = False
  accumulation_steps: int = 1
  topology: str = ""         # the TPU slice for the deviceless compile; "" for GPUs
  why: str = ""              # the reason for the training mesh


SETUPS = {
    "v4-32": Setup(16, {"data": 2, "fsdp": 8}, 32, topology="v4-32",
                   why="16 images per chip: the v5p-64 layout (fsdp 8 within each data group)"),
    "v5e-64": Setup(64, {"data": 8, "fsdp": 8}, 16, topology="v5litepod-64",
                    why="4 images per chip, 16 GB: pure data parallelism holds the 10 GiB of state on every chip "
                        "(peak 12.3 GiB, 18% spare, projected 332 ms per step); fsdp 8 shards it (5.3 GiB, 179 ms)"),
    "v5p-64": Setup(32, {"data": 4, "fsdp": 8}, 32, topology="v5p-64",
                    why="8 images per chip: projected 62 ms per step, against 69 ms for pure fsdp 32 and 91 ms (and "
                        "14.1 GiB) for pure data parallelism"),
    "v6e-32": Setup(32, {"data": 4, "fsdp": 8}, 32, topology="v6e-32",
                    why="8 images per chip: the v5p-64 layout"),
    "8xH100": Setup(8, {"data": 1, "fsdp": 8}, 32, why="one NVLink node, 32 images per GPU: fsdp shards the state"),
    "8xA100-80GB": Setup(8, {"data": 1, "fsdp": 8}, 32, why="as 8xH100"),
}


def split_config_arg(arg: str, default: str) -> tuple[str, str]:
  """A config argument "CHOICE[,HARDWARE]" -> (CHOICE or default, HARDWARE or "")."""
  choice, _, hardware_name = (arg or "").partition(",")
  return choice.strip() or default, hardware_name.strip()


def setup(name: str) -> Setup:
  """The hardware variant `name` of SETUPS; UserError naming the known ones."""
  if name not in SETUPS:
    raise UserError(f"unknown hardware {name!r}; known: {', '.join(SETUPS)}")
  return SETUPS[name]
