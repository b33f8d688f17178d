"""Flax port of the diffusers `AutoencoderKL` (the Stable Diffusion VAE used by DiT and SiT), NHWC.

Parameter names mirror the diffusers state-dict keys (`down_blocks.0.resnets.1` becomes
`down_blocks_0/resnets_1`), so conversion is a rename plus a kernel transpose.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from nag_jax.errors import UserError

# diffusers get_activation(); torch nn.GELU is the exact (erf) form.
ACTIVATIONS = {
    "silu": nn.silu, "swish": nn.silu, "relu": nn.relu,
    "gelu": functools.partial(nn.gelu, approximate=False),
    "mish": lambda x: x * jnp.tanh(nn.softplus(x)),
}
GROUP_NORM_EPS = 1e-6  # every GroupNorm of the diffusers VAE


@dataclasses.dataclass(frozen=True)
class VAEConfig:
  """The fields of a diffusers `AutoencoderKL` config.json, with the same names and defaults."""
  in_channels: int = 3
  out_channels: int = 3
  down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",)
  up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",)
  block_out_channels: tuple[int, ...] = (64,)
  layers_per_block: int = 1
  act_fn: str = "silu"
  latent_channels: int = 4
  norm_num_groups: int = 32
  sample_size: int | tuple[int, ...] = 32
  scaling_factor: float = 0.18215
  shift_factor: float | None = None
  latents_mean: tuple[float, ...] | None = None
  latents_std: tuple[float, ...] | None = None
  force_upcast: bool = True
  use_quant_conv: bool = True
  use_post_quant_conv: bool = True
  mid_block_add_attention: bool = True

  def __post_init__(self):
    n = len(self.block_out_channels)
    problems = []
    if set(self.down_block_types) != {"DownEncoderBlock2D"} or len(self.down_block_types) != n:
      problems.append(f"down_block_types must be {n} x DownEncoderBlock2D, got {self.down_block_types}")
    if set(self.up_block_types) != {"UpDecoderBlock2D"} or len(self.up_block_types) != n:
      problems.append(f"up_block_types must be {n} x UpDecoderBlock2D, got {self.up_block_types}")
    if any(c % self.norm_num_groups for c in self.block_out_channels):
      problems.append(f"block_out_channels {self.block_out_channels} are not all divisible by "
                      f"norm_num_groups {self.norm_num_groups}")
    if self.act_fn not in ACTIVATIONS:
      problems.append(f"act_fn must be one of {sorted(ACTIVATIONS)}, got {self.act_fn!r}")
    if problems:
      raise UserError("unsupported AutoencoderKL config: " + "; ".join(problems))

  @classmethod
  def from_dict(cls, d: dict) -> VAEConfig:
    """Parses a diffusers config dict; `_`-prefixed metadata is dropped, unknown fields are refused."""
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(k for k in d if not k.startswith("_") and k not in fields)
    if unknown:
      raise UserError(f"unknown AutoencoderKL config fields {unknown}")
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in fields}
    return cls(**kw)

  def to_dict(self) -> dict:
    """A diffusers-compatible config dict (lists for tuples, `_class_name` set)."""
    d = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}
    return {"_class_name": "AutoencoderKL", **d}

  @property
  def downsample_factor(self) -> int:
    """Image side / latent side (8 for the SD-VAE)."""
    return 2 ** (len(self.block_out_channels) - 1)


# The architecture of stabilityai/sd-vae-ft-ema (and -mse), the VAE of DiT and SiT.
SD_VAE = VAEConfig(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                   up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, norm_num_groups=32,
                   latent_channels=4, sample_size=256, scaling_factor=0.18215)


@flax.struct.dataclass
class DiagonalGaussian:
  """The posterior q(z|x) as diffusers' DiagonalGaussianDistribution (logvar clamped to [-30, 20]), NHWC."""
  mean: jax.Array
  logvar: jax.Array

  @classmethod
  def from_moments(cls, moments: jax.Array) -> DiagonalGaussian:
    """Splits encoder moments (…, 2C) into mean (first C channels) and clamped logvar."""
    mean, logvar = jnp.split(moments, 2, axis=-1)
    return cls(mean, jnp.clip(logvar, -30.0, 20.0))

  @property
  def std(self) -> jax.Array:
    """exp(logvar / 2)."""
    return jnp.exp(0.5 * self.logvar)

  def sample(self, key: jax.Array) -> jax.Array:
    """mean + std * N(0, 1): the `latent_dist.sample()` of the official training script.

    `key` is one key for the whole batch, or one key per row (shape (B,)): then row i's draw depends on its
    key alone, not on the batch it was encoded in.
    """
    if jnp.ndim(key) == 0:
      noise = jax.random.normal(key, self.mean.shape, self.mean.dtype)
    else:
      noise = jax.vmap(lambda k: jax.random.normal(k, self.mean.shape[1:], self.mean.dtype))(key)
    return self.mean + self.std * noise

  def mode(self) -> jax.Array:
    """The deterministic latent (the mean)."""
    return self.mean


def _conv(features: int, kernel: int, dtype: Any, name: str, stride: int = 1, padding: Any = None) -> nn.Conv:
  pad = kernel // 2 if padding is None else padding
  return nn.Conv(features, (kernel, kernel), strides=stride, padding=pad, dtype=dtype, name=name)


def _norm(groups: int, dtype: Any, name: str) -> nn.GroupNorm:
  # Two-pass variance, as torch computes it; the fast E[x^2]-E[x]^2 form loses ~1e-4 at these sizes.
  return nn.GroupNorm(num_groups=groups, epsilon=GROUP_NORM_EPS, use_fast_variance=False, dtype=dtype,
                      name=name)


class ResnetBlock(nn.Module):
  """diffusers ResnetBlock2D without time embedding: (GroupNorm, act, 3x3 conv) x 2 plus a shortcut."""
  out_channels: int
  groups: int
  act_fn: str
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    act = ACTIVATIONS[self.act_fn]
    h = _conv(self.out_channels, 3, self.dtype, "conv1")(act(_norm(self.groups, self.dtype, "norm1")(x)))
    h = _conv(self.out_channels, 3, self.dtype, "conv2")(act(_norm(self.groups, self.dtype, "norm2")(h)))
    if x.shape[-1] != self.out_channels:
      x = _conv(self.out_channels, 1, self.dtype, "conv_shortcut")(x)
    return x + h


class Attention(nn.Module):
  """The VAE's one-head spatial self-attention: GroupNorm, softmax(q k^T / sqrt(C)) v in f32, residual."""
  groups: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    y = _norm(self.groups, self.dtype, "group_norm")(x).reshape(b, h * w, c)
    q, k, v = (nn.Dense(c, dtype=self.dtype, name=n)(y) for n in ("to_q", "to_k", "to_v"))
    logits = jnp.einsum("bqc,bkc->bqk", q, k, preferred_element_type=jnp.float32) / math.sqrt(c)
    y = jnp.einsum("bqk,bkc->bqc", jax.nn.softmax(logits, axis=-1).astype(v.dtype), v)
    return x + nn.Dense(c, dtype=self.dtype, name="to_out_0")(y).reshape(b, h, w, c)


class Downsample(nn.Module):
  """Pad right/bottom by one, then a stride-2 3x3 conv (diffusers Downsample2D with padding=0)."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return _conv(x.shape[-1], 3, self.dtype, "conv", stride=2, padding=((0, 1), (0, 1)))(x)


class Upsample(nn.Module):
  """Nearest-neighbour 2x upsampling, then a 3x3 conv (diffusers Upsample2D)."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return _conv(x.shape[-1], 3, self.dtype, "conv")(x)


class ResnetStack(nn.Module):
  """DownEncoderBlock2D / UpDecoderBlock2D: `num_layers` resnets, then an optional resampler."""
  out_channels: int
  num_layers: int
  resample: str | None  # None, "down" or "up"
  config: VAEConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for i in range(self.num_layers):
      x = ResnetBlock(self.out_channels, self.config.norm_num_groups, self.config.act_fn, self.dtype,
                      name=f"resnets_{i}")(x)
    if self.resample == "down":
      x = Downsample(self.dtype, name="downsamplers_0")(x)
    elif self.resample == "up":
      x = Upsample(self.dtype, name="upsamplers_0")(x)
    return x


class MidBlock(nn.Module):
  """UNetMidBlock2D of the VAE: resnet, attention (if `mid_block_add_attention`), resnet."""
  config: VAEConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    c = x.shape[-1]
    x = ResnetBlock(c, cfg.norm_num_groups, cfg.act_fn, self.dtype, name="resnets_0")(x)
    if cfg.mid_block_add_attention:
      x = Attention(cfg.norm_num_groups, self.dtype, name="attentions_0")(x)
    return ResnetBlock(c, cfg.norm_num_groups, cfg.act_fn, self.dtype, name="resnets_1")(x)


class Encoder(nn.Module):
  """Images (B, H, W, in_channels) -> moments (B, H/f, W/f, 2 * latent_channels)."""
  config: VAEConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg, chans = self.config, self.config.block_out_channels
    x = _conv(chans[0], 3, self.dtype, "conv_in")(x)
    for i, ch in enumerate(chans):
      last = i == len(chans) - 1
      x = ResnetStack(ch, cfg.layers_per_block, None if last else "down", cfg, self.dtype,
                      name=f"down_blocks_{i}")(x)
    x = MidBlock(cfg, self.dtype, name="mid_block")(x)
    x = nn.silu(_norm(cfg.norm_num_groups, self.dtype, "conv_norm_out")(x))  # SiLU whatever act_fn is
    return _conv(2 * cfg.latent_channels, 3, self.dtype, "conv_out")(x)


class Decoder(nn.Module):
  """Latents (B, h, w, latent_channels) -> images (B, h*f, w*f, out_channels) in about [-1, 1]."""
  config: VAEConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    cfg, chans = self.config, self.config.block_out_channels[::-1]
    x = _conv(chans[0], 3, self.dtype, "conv_in")(z)
    x = MidBlock(cfg, self.dtype, name="mid_block")(x)
    for i, ch in enumerate(chans):
      last = i == len(chans) - 1
      x = ResnetStack(ch, cfg.layers_per_block + 1, None if last else "up", cfg, self.dtype,
                      name=f"up_blocks_{i}")(x)
    x = nn.silu(_norm(cfg.norm_num_groups, self.dtype, "conv_norm_out")(x))
    return _conv(cfg.out_channels, 3, self.dtype, "conv_out")(x)


class AutoencoderKL(nn.Module):
  """The KL autoencoder: `encode` -> DiagonalGaussian posterior, `decode` -> images. Params stay f32.

  `dtype` is the compute dtype (e.g. bfloat16); GroupNorm statistics and softmax run in float32.
  """
  config: VAEConfig
  dtype: Any = jnp.float32

  def setup(self):
    cfg = self.config
    self.encoder = Encoder(cfg, self.dtype)
    self.decoder = Decoder(cfg, self.dtype)
    if cfg.use_quant_conv:
      self.quant_conv = _conv(2 * cfg.latent_channels, 1, self.dtype, None)
    if cfg.use_post_quant_conv:
      self.post_quant_conv = _conv(cfg.latent_channels, 1, self.dtype, None)

  def encode(self, x: jax.Array) -> DiagonalGaussian:
    """Images in [-1, 1], (B, H, W, C) -> posterior over unscaled latents (float32)."""
    moments = self.encoder(x)
    if self.config.use_quant_conv:
      moments = self.quant_conv(moments)
    return DiagonalGaussian.from_moments(moments.astype(jnp.float32))

  def decode(self, z: jax.Array) -> jax.Array:
    """Unscaled latents (B, h, w, latent_channels) -> images in about [-1, 1] (compute dtype)."""
    if self.config.use_post_quant_conv:
      z = self.post_quant_conv(z)
    return self.decoder(z)

  def __call__(self, x: jax.Array) -> jax.Array:
    """Reconstruction through the posterior mode (used by `init`, which needs every layer)."""
    return self.decode(self.encode(x).mode())


def dummy_images(config: VAEConfig) -> jax.Array:
  """The smallest image batch every layer accepts, for `init` and `jax.eval_shape`."""
  side = config.downsample_factor
  return jnp.zeros((1, side, side, config.in_channels), jnp.float32)


def abstract_params(config: VAEConfig) -> dict:
  """ShapeDtypeStructs of the params from `jax.eval_shape` of init (nothing is allocated)."""
  model = AutoencoderKL(config)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), dummy_images(config)))["params"]
