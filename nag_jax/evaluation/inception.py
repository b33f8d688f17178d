"""The FID InceptionV3 (pytorch-fid's port of the 2015 TF graph) in Flax linen, NHWC.

Module names follow the PyTorch state dict (`Mixed_5b.branch1x1.conv`), so conversion is a
mechanical rename; see `inception_convert.py`.
"""
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from nag_jax.errors import UserError

Resize = Literal["pytorch_fid", "tf1"]
RESIZE_MODES = ("pytorch_fid", "tf1")
INPUT_SIZE = 299


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
  return (v, v) if isinstance(v, int) else tuple(v)


class BasicConv2d(nn.Module):
  """Conv (no bias) + BatchNorm (eps 1e-3, running statistics) + ReLU, as torchvision's block."""
  features: int
  kernel_size: int | tuple[int, int]
  strides: int = 1
  padding: int | tuple[int, int] = 0

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    ph, pw = _pair(self.padding)
    x = nn.Conv(self.features, _pair(self.kernel_size), _pair(self.strides),
                padding=((ph, ph), (pw, pw)), use_bias=False, name="conv")(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
    return nn.relu(x)


def _avg_pool_3x3(x: jax.Array) -> jax.Array:
  """3x3/1 average pool that ignores the zero padding, as TF (pytorch-fid's FID patch)."""
  return nn.avg_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


class InceptionA(nn.Module):
  """FIDInceptionA (Mixed_5b..5d)."""
  pool_features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b1 = BasicConv2d(64, 1, name="branch1x1")(x)
    b5 = BasicConv2d(48, 1, name="branch5x5_1")(x)
    b5 = BasicConv2d(64, 5, padding=2, name="branch5x5_2")(b5)
    b3 = BasicConv2d(64, 1, name="branch3x3dbl_1")(x)
    b3 = BasicConv2d(96, 3, padding=1, name="branch3x3dbl_2")(b3)
    b3 = BasicConv2d(96, 3, padding=1, name="branch3x3dbl_3")(b3)
    bp = BasicConv2d(self.pool_features, 1, name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """Grid reduction 35 -> 17 (Mixed_6a)."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b3 = BasicConv2d(384, 3, strides=2, name="branch3x3")(x)
    bd = BasicConv2d(64, 1, name="branch3x3dbl_1")(x)
    bd = BasicConv2d(96, 3, padding=1, name="branch3x3dbl_2")(bd)
    bd = BasicConv2d(96, 3, strides=2, name="branch3x3dbl_3")(bd)
    bp = nn.max_pool(x, (3, 3), (2, 2))
    return jnp.concatenate([b3, bd, bp], axis=-1)


class InceptionC(nn.Module):
  """FIDInceptionC (Mixed_6b..6e) with factorised 7x7 convolutions."""
  channels_7x7: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c7 = self.channels_7x7
    b1 = BasicConv2d(192, 1, name="branch1x1")(x)
    b7 = BasicConv2d(c7, 1, name="branch7x7_1")(x)
    b7 = BasicConv2d(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
    b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
    bd = BasicConv2d(c7, 1, name="branch7x7dbl_1")(x)
    bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
    bd = BasicConv2d(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
    bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
    bd = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
    bp = BasicConv2d(192, 1, name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """Grid reduction 17 -> 8 (Mixed_7a)."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b3 = BasicConv2d(192, 1, name="branch3x3_1")(x)
    b3 = BasicConv2d(320, 3, strides=2, name="branch3x3_2")(b3)
    b7 = BasicConv2d(192, 1, name="branch7x7x3_1")(x)
    b7 = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
    b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
    b7 = BasicConv2d(192, 3, strides=2, name="branch7x7x3_4")(b7)
    bp = nn.max_pool(x, (3, 3), (2, 2))
    return jnp.concatenate([b3, b7, bp], axis=-1)


class InceptionE(nn.Module):
  """FIDInceptionE_1 (`pool="avg"`, Mixed_7b) and FIDInceptionE_2 (`pool="max"`, Mixed_7c)."""
  pool: Literal["avg", "max"]

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b1 = BasicConv2d(320, 1, name="branch1x1")(x)
    b3 = BasicConv2d(384, 1, name="branch3x3_1")(x)
    b3 = jnp.concatenate([
        BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
        BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)], axis=-1)
    bd = BasicConv2d(448, 1, name="branch3x3dbl_1")(x)
    bd = BasicConv2d(384, 3, padding=1, name="branch3x3dbl_2")(bd)
    bd = jnp.concatenate([
        BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
        BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)], axis=-1)
    if self.pool == "avg":
      bp = _avg_pool_3x3(x)
    else:  # The FID graph max-pools here (pytorch-fid keeps this quirk of the TF model).
      bp = nn.max_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)))
    bp = BasicConv2d(192, 1, name="branch_pool")(bp)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


def resize_bilinear_tf1(x: jax.Array, size: int) -> jax.Array:
  """TF1 `ResizeBilinear` (align_corners=False, no half-pixel centres) of NHWC `x` to size x size.

  Source coordinate `dst * in / out`: the legacy alignment of the 2015 Inception graph that ADM's
  evaluator runs.
  """
  for axis in (2, 1):  # Width first, then height, in TF's order of interpolation.
    n = x.shape[axis]
    src = jnp.arange(size, dtype=jnp.float32) * jnp.float32(n / size)
    i0 = jnp.floor(src).astype(jnp.int32)
    i1 = jnp.minimum(i0 + 1, n - 1)
    w = (src - i0).reshape((-1,) + (1,) * (x.ndim - 1 - axis))
    lo, hi = jnp.take(x, i0, axis=axis), jnp.take(x, i1, axis=axis)
    x = lo + (hi - lo) * w
  return x


def preprocess(images: jax.Array, resize: Resize = "pytorch_fid") -> jax.Array:
  """Maps NHWC pixel values in [0, 255] to the network input: 299x299 in [-1, 1].

  "pytorch_fid": x/255, bilinear half-pixel resize without antialiasing, 2x-1 (pytorch-fid with
  `resize_input=True, normalize_input=True`). "tf1": TF1 legacy resize, then (x-128)/128, as the TF
  graph in ADM's evaluator.
  """
  x = images.astype(jnp.float32)
  b, _, _, c = x.shape
  if resize == "pytorch_fid":
    x = jax.image.resize(x / 255.0, (b, INPUT_SIZE, INPUT_SIZE, c), "bilinear", antialias=False)
    return 2.0 * x - 1.0
  if resize == "tf1":
    return (resize_bilinear_tf1(x, INPUT_SIZE) - 128.0) / 128.0
  raise UserError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")


class InceptionV3(nn.Module):
  """FID InceptionV3: NHWC pixels in [0, 255] -> (pool features (B, 2048), logits (B, 1008))."""
  resize: Resize = "pytorch_fid"
  num_classes: int = 1008

  @nn.compact
  def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    x = preprocess(images, self.resize)
    x = BasicConv2d(32, 3, strides=2, name="Conv2d_1a_3x3")(x)
    x = BasicConv2d(32, 3, name="Conv2d_2a_3x3")(x)
    x = BasicConv2d(64, 3, padding=1, name="Conv2d_2b_3x3")(x)
    x = nn.max_pool(x, (3, 3), (2, 2))
    x = BasicConv2d(80, 1, name="Conv2d_3b_1x1")(x)
    x = BasicConv2d(192, 3, name="Conv2d_4a_3x3")(x)
    x = nn.max_pool(x, (3, 3), (2, 2))
    x = InceptionA(32, name="Mixed_5b")(x)
    x = InceptionA(64, name="Mixed_5c")(x)
    x = InceptionA(64, name="Mixed_5d")(x)
    x = InceptionB(name="Mixed_6a")(x)
    for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
      x = InceptionC(c7, name=name)(x)
    x = InceptionD(name="Mixed_7a")(x)
    x = InceptionE("avg", name="Mixed_7b")(x)
    x = InceptionE("max", name="Mixed_7c")(x)
    pool = jnp.mean(x, axis=(1, 2))
    return pool, nn.Dense(self.num_classes, name="fc")(pool)


def adm_logits(variables: dict, pool: jax.Array) -> jax.Array:
  """Logits as ADM's evaluator forms them for the Inception Score: `pool @ fc.kernel`, no bias."""
  return jnp.dot(pool, variables["params"]["fc"]["kernel"], precision=jax.lax.Precision.HIGHEST)
