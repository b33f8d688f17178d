"""The sampling config (ml_collections) shared by `nag_jax.sample` configs, and its conversion to dataclasses."""
from __future__ import annotations

import dataclasses

import ml_collections

from nag_jax import hardware, process
from nag_jax.errors import UserError
from nag_jax.guidance import GuidanceConfig
from nag_jax.sampling.pipeline import SamplerConfig
from nag_jax.sharding.mesh import default_mesh_config

# Paper appendix B: CFG alone 1.5; NAG alone 3.0; NAG + CFG: cfg 1.2, nag 2.0.
PRESETS = {"none": (1.0, 0.0), "cfg": (1.5, 0.0), "nag": (1.0, 3.0), "nag_cfg": (1.2, 2.0)}


def default_sample_config(family: str, preset: str = "nag") -> ml_collections.ConfigDict:
  """Defaults of the official sample scripts for `family` with one of the paper's guidance presets."""
  if preset not in PRESETS:
    raise UserError(f"unknown guidance preset {preset!r}; expected one of {tuple(PRESETS)}")
  c = ml_collections.ConfigDict()
  c.checkpoint = ""            # converted model directory (python -m nag_jax.convert)
  c.vae = ""                   # converted SD-VAE directory; "" writes latents (or pixels, below)
  c.estimator = ""             # g_phi directory, needed only by classifier-based NAG
  c.parent = ""                # converted model directory of the second model: the pre-trained model of Domain
                               # Guidance (guidance.dog_scale), or the weaker model of autoguidance
  c.pixel_space = False        # the model works on images in [-1, 1] directly (the demo's digits)
  c.out_dir = "samples"
  c.overwrite = False          # True: clear out_dir's samples and start afresh (else resume the same protocol)
  c.num_samples = 64
  c.batch_size = 16            # global batch per compiled call (split over devices and processes)
  c.seed = 0
  c.labels = ""                # "" = uniform random classes, else comma-separated class ids, cycled
  c.dtype = "float32"          # "bfloat16" computes the model in bf16 (params stay f32)
  c.attention = ""             # the attention backend (ModelConfig.attention); "" = the checkpoint's (usually "auto")
  c.hardware = ""              # the hardware variant this config was laid out for (nag_jax.hardware.SETUPS)
  c.write_npz = True           # ADM-format samples.npz (arr_0 uint8 NHWC) for FID
  c.grid_size = 64             # images in grid.png
  c.mesh = ml_collections.ConfigDict(default_mesh_config())
  c.sampler = ml_collections.ConfigDict(dataclasses.asdict(
      SamplerConfig(method=process.family_process(family).sampler_methods[0])))
  cfg_scale, nag_scale = PRESETS[preset]
  c.guidance = ml_collections.ConfigDict(dataclasses.asdict(GuidanceConfig(cfg_scale=cfg_scale,
                                                                           nag_scale=nag_scale)))
  c.guidance.pseudo_level = ml_collections.config_dict.placeholder(float)
  c.guidance.cfg_channels = ml_collections.config_dict.placeholder(int)
  c.guidance.cfg_channels = 3  # the official forward_with_cfg guides 3 of 4 channels; None = all
  c.sampler.respacing = ml_collections.config_dict.placeholder(str)
  c.sampler.last_step = ml_collections.config_dict.placeholder(str)  # typed str, may be set to None
  c.sampler.last_step = "Mean"
  return c


def check(c: ml_collections.ConfigDict) -> None:
  """Raises UserError naming the first bad key among those checked before anything is read or written."""
  if not c.checkpoint:
    raise UserError("--config.checkpoint is required (a directory written by python -m nag_jax.convert)")
  for key in ("num_samples", "batch_size"):
    if not isinstance(c[key], int) or c[key] < 1:
      raise UserError(f"--config.{key} must be a positive integer, got {c[key]!r}")
  if not isinstance(c.grid_size, int) or c.grid_size < 0:
    raise UserError(f"--config.grid_size must be an integer >= 0, got {c.grid_size!r}")
  if not c.out_dir:
    raise UserError("--config.out_dir must name a folder")
  needs_parent = [k for k in ("dog_scale", "autoguidance_scale") if c.guidance[k] > 1]
  if needs_parent and not c.parent:
    raise UserError(f"--config.guidance.{needs_parent[0]} > 1 needs --config.parent (a converted model directory: the "
                    "pre-trained model for Domain Guidance, the weaker model for autoguidance)")
  if c.labels:
    parse_labels(c.labels)


def parse_labels(labels: str, num_classes: int | None = None) -> list[int]:
  """The class ids of a `labels` string ("3,7"); UserError unless they are integers in [0, num_classes)."""
  try:
    ids = [int(v) for v in str(labels).split(",")]
  except ValueError:
    raise UserError(f"--config.labels must be comma-separated class ids, got {labels!r}") from None
  if num_classes is not None and (min(ids) < 0 or max(ids) >= num_classes):
    raise UserError(f"--config.labels must be class ids in [0, {num_classes}), got {labels}")
  return ids


def to_dataclasses(c: ml_collections.ConfigDict) -> tuple[SamplerConfig, GuidanceConfig]:
  """(SamplerConfig, GuidanceConfig) from the `sampler` and `guidance` sub-configs (validated)."""
  return SamplerConfig(**c.sampler.to_dict()), GuidanceConfig(**c.guidance.to_dict())


def apply_hardware(c: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """Lays a sampling config out for the hardware variant `name` ("" leaves it): data parallel over its devices,
  `sample_per_device` images per device per call, bfloat16 compute (nag_jax.hardware.SETUPS)."""
  if not name:
    return c
  setup = hardware.setup(name)
  c.hardware = name
  c.mesh.update({"data": -1, "fsdp": 1, "tensor": 1})
  c.batch_size = setup.devices * setup.sample_per_device
  c.dtype = "bfloat16"
  return c
