"""The sampling config (ml_collections) shared by `nag_jax.sample` configs, and its conversion to dataclasses."""
from __future__ import annotations

import dataclasses

import ml_collections

from nag_jax.guidance import GuidanceConfig
from nag_jax.sampling.pipeline import SamplerConfig
from nag_jax.sharding.mesh import default_mesh_config

# Paper appendix B: CFG alone 1.5; NAG alone 3.0; NAG + CFG: cfg 1.2, nag 2.0.
PRESETS = {"none": (1.0, 0.0), "cfg": (1.5, 0.0), "nag": (1.0, 3.0), "nag_cfg": (1.2, 2.0)}


def default_sample_config(family: str, preset: str = "nag") -> ml_collections.ConfigDict:
  """Defaults of the official sample scripts for `family` with one of the paper's guidance presets."""
  if preset not in PRESETS:
    raise ValueError(f"unknown guidance preset {preset!r}; expected one of {tuple(PRESETS)}")
  c = ml_collections.ConfigDict()
  c.checkpoint = ""            # converted model directory (python -m nag_jax.convert)
  c.vae = ""                   # converted SD-VAE directory; "" writes latents (or pixels, below)
  c.estimator = ""             # g_phi directory, needed only by classifier-based NAG
  c.pixel_space = False        # the model works on images in [-1, 1] directly (the demo's digits)
  c.out_dir = "samples"
  c.num_samples = 64
  c.batch_size = 16            # global batch per compiled call (split over devices and processes)
  c.seed = 0
  c.labels = ""                # "" = uniform random classes, else comma-separated class ids, cycled
  c.dtype = "float32"          # "bfloat16" computes the model in bf16 (params stay f32)
  c.write_npz = True           # ADM-format samples.npz (arr_0 uint8 NHWC) for FID
  c.grid_size = 64             # images in grid.png
  c.mesh = ml_collections.ConfigDict(default_mesh_config())
  c.sampler = ml_collections.ConfigDict(dataclasses.asdict(
      SamplerConfig(method="ddpm" if family == "dit" else "sde")))
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


def to_dataclasses(c: ml_collections.ConfigDict) -> tuple[SamplerConfig, GuidanceConfig]:
  """(SamplerConfig, GuidanceConfig) from the `sampler` and `guidance` sub-configs (validated)."""
  g = c.guidance.to_dict()
  for k in ("cfg_interval", "nag_interval", "dog_interval"):
    g[k] = tuple(g[k])
  return SamplerConfig(**c.sampler.to_dict()), GuidanceConfig(**g)
