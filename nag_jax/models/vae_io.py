"""Latents <-> uint8 images with the SD-VAE, as the official DiT/SiT scripts do it (NHWC).

`decode_to_uint8` and `encode` are jittable, so a sampler can decode inside its compiled call;
`decode_in_batches` is the host-side loop for many latents with bounded memory and a progress bar.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from nag_jax import checks
from nag_jax.models.vae import AutoencoderKL
from nag_jax.errors import UserError


def _shift(module: AutoencoderKL) -> float:
  return module.config.shift_factor or 0.0


def pixels_to_uint8(x: jax.Array) -> jax.Array:
  """Images in [-1, 1] -> uint8 via clip(127.5 x + 128, 0, 255), the official sample_ddp.py rule (jittable)."""
  return jnp.clip(127.5 * jnp.asarray(x, jnp.float32) + 128.0, 0.0, 255.0).astype(jnp.uint8)


def uint8_to_pixels(x):
  """uint8 images -> float32 in [-1, 1] by x / 127.5 - 1 (ToTensor + Normalize(0.5, 0.5)); numpy or jax arrays."""
  return x.astype(np.float32) / 127.5 - 1.0


def decode_to_uint8(module: AutoencoderKL, params: dict, latents: jax.Array,
                    scaling_factor: float | None = None) -> jax.Array:
  """Scaled latents (B, h, w, C) -> uint8 images (B, H, W, 3) via `pixels_to_uint8` (sample_ddp.py).

  `scaling_factor` defaults to the config's (0.18215 for the SD-VAE); latents are divided by it.
  """
  scale = module.config.scaling_factor if scaling_factor is None else scaling_factor
  z = latents.astype(jnp.float32) / scale + _shift(module)
  x = module.apply({"params": params}, z, method=AutoencoderKL.decode)
  return pixels_to_uint8(x)


def encode(module: AutoencoderKL, params: dict, images: jax.Array, key: jax.Array | None,
           mode: bool = False) -> jax.Array:
  """Images (B, H, W, C) -> latents x scaling_factor, as train.py's `latent_dist.sample() * 0.18215`.

  uint8 images are mapped to [-1, 1] by `uint8_to_pixels`; float images
  must already be in [-1, 1]. `mode=True` takes the posterior mean instead of a sample (no key needed).
  `key`: one for the batch, or one per image (shape (B,)), see `DiagonalGaussian.sample`.
  """
  if key is None and not mode:
    raise UserError("encode needs a key to sample the posterior (or mode=True)")
  if jnp.issubdtype(images.dtype, jnp.integer):
    images = uint8_to_pixels(images)
  posterior = module.apply({"params": params}, images, method=AutoencoderKL.encode)
  z = posterior.mode() if mode else posterior.sample(key)
  return (z - _shift(module)) * module.config.scaling_factor


def decode_in_batches(module: AutoencoderKL, params: dict, latents: np.ndarray, batch_size: int = 8,
                      scaling_factor: float | None = None, progress: bool = True) -> np.ndarray:
  """Decodes many scaled latents on the host, `batch_size` at a time (one compile), into uint8 NHWC.

  The last batch is zero-padded to `batch_size`, so every call reuses the same compiled function.
  """
  checks.check_positive("batch_size", batch_size)
  fn = jax.jit(lambda p, z: decode_to_uint8(module, p, z, scaling_factor))
  n = latents.shape[0]
  out = []
  with tqdm.tqdm(total=n, unit="img", desc="VAE decode", disable=not progress) as bar:
    for start in range(0, n, batch_size):
      chunk = np.asarray(latents[start:start + batch_size], np.float32)
      pad = batch_size - chunk.shape[0]
      if pad:
        chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)])
      out.append(np.asarray(fn(params, chunk))[:batch_size - pad])
      bar.update(batch_size - pad)
  if not out:
    empty = jax.ShapeDtypeStruct((0,) + tuple(latents.shape[1:]), jnp.float32)
    return np.zeros(jax.eval_shape(fn, params, empty).shape, np.uint8)
  return np.concatenate(out)
