"""Conditioning embeddings of DiT/SiT: timestep, class label and the fixed 2-D sin-cos position table."""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from nag_jax.models import initializers as init
from nag_jax.models.layers import Dense

FREQ_DIM = 256  # frequency_embedding_size of the official TimestepEmbedder


def timestep_embedding(t: jax.Array, dim: int = FREQ_DIM, max_period: float = 10000.0) -> jax.Array:
  """Sinusoidal embedding of (fractional) timesteps, [cos, sin] order as in the official code."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = t.astype(jnp.float32)[:, None] * freqs[None]
  emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  if dim % 2:
    emb = jnp.concatenate([emb, jnp.zeros_like(emb[:, :1])], axis=-1)
  return emb


class TimestepEmbedder(nn.Module):
  """t -> MLP(sinusoid(t * time_scale)); time_scale is 1 for every official checkpoint."""
  hidden_size: int
  time_scale: float = 1.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, t: jax.Array) -> jax.Array:
    freq = timestep_embedding(t * self.time_scale)
    h = Dense(self.hidden_size, dtype=self.dtype, name="mlp_0",
              kernel_init=init.partitioned(init.normal002, ("freq", "embed")),
              bias_init=init.partitioned(init.zeros, ("embed",)))(freq)
    h = nn.silu(h)
    return Dense(self.hidden_size, dtype=self.dtype, name="mlp_2",
                 kernel_init=init.partitioned(init.normal002, ("mlp", "embed")),
                 bias_init=init.partitioned(init.zeros, ("embed",)))(h)


class LabelEmbedder(nn.Module):
  """Class label table with a null row (id = num_classes) when class dropout is used.

  Label dropout itself is done by the training step with an explicit key, not inside the model.
  """
  num_classes: int
  hidden_size: int
  use_null_class: bool = True

  @nn.compact
  def __call__(self, y: jax.Array) -> jax.Array:
    rows = self.num_classes + int(self.use_null_class)
    table = self.param("embedding_table", init.partitioned(init.normal002, ("vocab", "embed")),
                       (rows, self.hidden_size), jnp.float32)
    return jnp.take(table, y, axis=0)


def sincos_1d(dim: int, pos: np.ndarray) -> np.ndarray:
  """1-D sin-cos table in float64, [sin, cos] order (official get_1d_sincos_pos_embed_from_grid)."""
  omega = np.arange(dim // 2, dtype=np.float64) / (dim / 2.0)
  omega = 1.0 / 10000 ** omega
  out = np.einsum("m,d->md", pos.reshape(-1).astype(np.float64), omega)
  return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_2d(dim: int, grid_size: int) -> np.ndarray:
  """2-D sin-cos table (T, dim) as float32; the first half of the channels encodes the column."""
  grid_h = np.arange(grid_size, dtype=np.float32)
  grid_w = np.arange(grid_size, dtype=np.float32)
  grid = np.stack(np.meshgrid(grid_w, grid_h), axis=0)  # w first, as the official code
  emb = np.concatenate([sincos_1d(dim // 2, grid[0]), sincos_1d(dim // 2, grid[1])], axis=1)
  return emb.astype(np.float32)
