"""DiT / SiT backbone in Flax linen, numerically matching facebookresearch/DiT and willisma/SiT."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from nag_jax.models import initializers as init
from nag_jax.models.attention import attention
from nag_jax.models.config import ModelConfig
from nag_jax.models.embeddings import LabelEmbedder, TimestepEmbedder, sincos_2d
from nag_jax.models.layers import cotangent_fence, dense
from nag_jax.sharding import constrain
from nag_jax.errors import UserError


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
  """adaLN modulation: x * (1 + scale) + shift, broadcast over tokens."""
  return x * (1 + scale[:, None]) + shift[:, None]


def layer_norm(x: jax.Array) -> jax.Array:
  """LayerNorm without affine parameters, eps 1e-6, computed in float32."""
  x32 = x.astype(jnp.float32)
  mean = x32.mean(-1, keepdims=True)
  var = jnp.square(x32 - mean).mean(-1, keepdims=True)
  return ((x32 - mean) * jax.lax.rsqrt(var + 1e-6)).astype(x.dtype)


def norm_modulate(x: jax.Array, shift: jax.Array, scale: jax.Array, dtype) -> jax.Array:
  """modulate(LayerNorm(x)) in float32 as one elementwise fusion, cast once to the next dot's dtype."""
  return modulate(layer_norm(x.astype(jnp.float32)), shift, scale).astype(dtype)


class Attention(nn.Module):
  """timm Attention: fused qkv (q, k, v thirds, heads contiguous), the `implementation` core, projection."""
  hidden_size: int
  num_heads: int
  dtype: jnp.dtype = jnp.float32
  implementation: str = ModelConfig.attention

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, n, d = x.shape
    qkv = dense(3 * d, ("embed", "heads"), self.dtype, name="qkv")(x)
    qkv = qkv.astype(self.dtype).reshape(b, n, 3, self.num_heads, d // self.num_heads)
    q, k, v = (jnp.squeeze(a, 2) for a in jnp.split(qkv, 3, axis=2))  # split: its gradient is a concatenation
    out = attention(q, k, v, self.implementation)
    return dense(d, ("heads", "embed"), self.dtype, name="proj")(out.reshape(b, n, d))


class DiTBlock(nn.Module):
  """Transformer block with adaLN-Zero conditioning (official DiTBlock); residual stream in float32."""
  hidden_size: int
  num_heads: int
  mlp_ratio: float = 4.0
  dtype: jnp.dtype = jnp.float32
  attention: str = ModelConfig.attention

  @nn.compact
  def __call__(self, x: jax.Array, c: jax.Array) -> jax.Array:
    d, dt = self.hidden_size, self.dtype
    tokens = ("batch", "length", "act_embed")
    x, c = constrain(x, *tokens), constrain(c, "batch", "act_embed")
    mod = dense(6 * d, ("embed", "mlp"), dt, kernel_init=init.zeros,
                name="adaLN_modulation")(nn.silu(c))
    mod = constrain(mod, "batch", "act_embed")
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = jnp.split(mod, 6, axis=-1)
    h = Attention(d, self.num_heads, dt, self.attention, name="attn")(norm_modulate(x, shift_msa, scale_msa, dt))
    x = x + gate_msa[:, None] * constrain(h, *tokens)
    h = norm_modulate(x, shift_mlp, scale_mlp, dt)
    h = constrain(dense(int(d * self.mlp_ratio), ("embed", "mlp"), dt, name="fc1")(h),
                  "batch", "length", "mlp")
    h = constrain(dense(d, ("mlp", "embed"), dt, name="fc2")(nn.gelu(h, approximate=True)), *tokens)
    return constrain(x + gate_mlp[:, None] * h, *tokens)


class FinalLayer(nn.Module):
  """adaLN (shift, scale) + linear to p*p*out_channels per token, zero-initialised."""
  hidden_size: int
  patch_size: int
  out_channels: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, c: jax.Array) -> jax.Array:
    mod = dense(2 * self.hidden_size, ("embed", "mlp"), self.dtype, kernel_init=init.zeros,
                name="adaLN_modulation")(nn.silu(c))
    shift, scale = jnp.split(mod, 2, axis=-1)
    return dense(self.patch_size ** 2 * self.out_channels, ("embed", "patch_out"), self.dtype,
                 kernel_init=init.zeros, name="linear")(norm_modulate(x, shift, scale, self.dtype))


class Backbone(nn.Module):
  """The DiT/SiT trunk shared by the denoiser and g_phi: patch, time and label embedders, then the blocks."""
  config: ModelConfig

  def setup(self):
    cfg = self.config
    dt = cfg.compute_dtype
    self.x_embedder = nn.Conv(cfg.hidden_size, (cfg.patch_size,) * 2, strides=cfg.patch_size,
                              padding="VALID", dtype=dt,
                              kernel_init=init.partitioned(init.patch_embed_init, (None, None, None, "embed")),
                              bias_init=init.partitioned(init.zeros, ("embed",)))
    self.t_embedder = TimestepEmbedder(cfg.hidden_size, cfg.time_scale, dt)
    self.y_embedder = LabelEmbedder(cfg.num_classes, cfg.hidden_size, cfg.class_dropout_prob > 0)
    block = nn.remat(DiTBlock) if cfg.remat else DiTBlock  # same params, activations recomputed
    self.blocks = [block(cfg.hidden_size, cfg.num_heads, cfg.mlp_ratio, dt, cfg.attention) for _ in range(cfg.depth)]

  def features(self, x: jax.Array, t: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Tokens (B, T, D) after the last block and the conditioning c (B, D), before the final layer."""
    cfg = self.config
    b, h, w, _ = x.shape
    if (h, w) != (cfg.input_size, cfg.input_size) or x.shape[-1] != cfg.in_channels:
      raise UserError(f"expected x of shape (B, {cfg.input_size}, {cfg.input_size}, {cfg.in_channels}) "
                      f"(NHWC), got {x.shape}")
    tokens = self.x_embedder(x.astype(cfg.compute_dtype)).reshape(b, -1, cfg.hidden_size).astype(jnp.float32)
    tokens = tokens + jnp.asarray(sincos_2d(cfg.hidden_size, cfg.input_size // cfg.patch_size))[None]
    c = self.t_embedder(t) + self.y_embedder(y)
    fenced = cfg.fenced
    for block in self.blocks:
      if fenced:
        tokens, c = cotangent_fence((tokens, c))
      tokens = block(tokens, c)
    return tokens, c


class DiT(Backbone):
  """DiT/SiT: (x NHWC, t (B,), y (B,)) -> eps[+variance] (DiT) or velocity (SiT), NHWC."""

  def setup(self):
    super().setup()
    cfg = self.config
    self.final_layer = FinalLayer(cfg.hidden_size, cfg.patch_size, cfg.out_channels, cfg.compute_dtype)

  def __call__(self, x: jax.Array, t: jax.Array, y: jax.Array) -> jax.Array:
    cfg = self.config
    tokens, c = self.features(x, t, y)
    out = unpatchify(self.final_layer(tokens, c), cfg.patch_size, cfg.out_channels).astype(jnp.float32)
    if cfg.output_channels < cfg.out_channels:  # the family's process drops the (dead) sigma half (SiT)
      out = out[..., :cfg.output_channels]
    return out


def unpatchify(x: jax.Array, p: int, c: int) -> jax.Array:
  """(N, T, p*p*C) with per-token order (p_row, p_col, C) -> (N, H, W, C)."""
  n, t, _ = x.shape
  g = int(round(t ** 0.5))
  x = x.reshape(n, g, g, p, p, c)
  return jnp.einsum("nhwpqc->nhpwqc", x).reshape(n, g * p, g * p, c)


def init_params(config: ModelConfig, key: jax.Array, batch: int = 1):
  """Initialise DiT/SiT parameters (official init) and return the unboxed params pytree."""
  model = DiT(config)
  x, t, y = dummy_inputs(config, batch)
  return nn.meta.unbox(model.init(key, x, t, y)["params"])


def cast_for_compute(params, config: ModelConfig):
  """Params with every dot kernel cast to the compute dtype, once, before a loop of forwards.

  Inside the model each kernel is cast again, which is then a no-op; biases, the label table and
  everything elementwise stay float32.
  """
  if config.compute_dtype == jnp.float32:
    return params
  def cast(path, leaf):
    return leaf.astype(config.compute_dtype) if getattr(path[-1], "key", None) == "kernel" else leaf
  return jax.tree_util.tree_map_with_path(cast, params)


def dummy_inputs(config: ModelConfig, batch: int = 1):
  """Zero inputs of the right shapes and dtypes for init/eval_shape."""
  x = jnp.zeros((batch, config.input_size, config.input_size, config.in_channels), jnp.float32)
  return x, jnp.zeros((batch,), jnp.float32), jnp.zeros((batch,), jnp.int32)
