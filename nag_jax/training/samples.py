"""The periodic sample grid: the same noise and labels sampled without NAG (top row) and with NAG (bottom)."""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from nag_jax.guidance import GuidanceConfig
from nag_jax.models.config import ModelConfig
from nag_jax.sampling.pipeline import METHODS, SamplerConfig, build_sampler


def to_uint8(x: jax.Array) -> np.ndarray:
  """NHWC model-space samples in [-1, 1] -> uint8 RGB (1 channel repeated; latents show channels 0-2)."""
  x = np.asarray(x)
  x = np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x[..., :3]
  return np.clip(127.5 * x + 128.0, 0, 255).astype(np.uint8)


def grid(rows: list[np.ndarray], pad: int = 1) -> np.ndarray:
  """Tiles rows of (N, H, W, 3) images into one (H', W', 3) image with `pad` black pixels between."""
  rows = [np.pad(r, ((0, 0), (pad, pad), (pad, pad), (0, 0))) for r in rows]
  return np.concatenate([np.concatenate(list(r), axis=1) for r in rows], axis=0)


def make_sample_grid_fn(model_config: ModelConfig, sc: ml_collections.ConfigDict,
                        pseudo_level: float | None = None) -> Callable[[Any, jax.Array], np.ndarray]:
  """fn(params, key) -> uint8 grid of `sc.num_images` samples without and with NAG (`sc.nag_scale`).

  Uses the family's default sampler (DDPM for DiT, Euler-Maruyama SDE for SiT) with `sc.num_steps`.
  """
  sampler = SamplerConfig(method=METHODS[model_config.family][0], num_steps=sc.num_steps)
  base = dict(cfg_scale=sc.cfg_scale, pseudo_level=pseudo_level)
  plain = build_sampler(model_config, sampler, GuidanceConfig(**base))
  nag = build_sampler(model_config, sampler, GuidanceConfig(nag_scale=sc.nag_scale, **base))
  labels = jnp.arange(sc.num_images, dtype=jnp.int32) % model_config.num_classes

  def sample_grid(params, key):
    return grid([to_uint8(fn(params, key, labels)["latents"]) for fn in (plain, nag)])

  return sample_grid
