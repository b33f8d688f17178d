"""Pictures of samples: model-space arrays to uint8 RGB, and rows of images tiled into one grid.

Shared by the training loop's periodic sample grid and the demo's figures.
"""
from __future__ import annotations

import jax
import numpy as np

from nag_jax.models.vae_io import pixels_to_uint8


def to_rgb_uint8(x: jax.Array) -> np.ndarray:
  """NHWC model-space samples in [-1, 1] -> uint8 RGB (1 channel repeated; latents show channels 0-2)."""
  x = np.asarray(x)
  x = np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x[..., :3]
  return np.asarray(pixels_to_uint8(x))


def grid(rows: list[np.ndarray], pad: int = 1) -> np.ndarray:
  """Tiles rows of (N, H, W, 3) images into one (H', W', 3) image with `pad` black pixels between."""
  rows = [np.pad(r, ((0, 0), (pad, pad), (pad, pad), (0, 0))) for r in rows]
  return np.concatenate([np.concatenate(list(r), axis=1) for r in rows], axis=0)
