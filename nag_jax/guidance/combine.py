"""The guidance algebra, given the branch outputs of one step. This file is the whole idea of NAG.

  CFG (class):  uncond + s (cond - uncond)           s = cfg_scale, 1 = off
  NAG (noise):  (w + 1) out(x|t) - w out(x|t_pseudo) w = nag_scale, 0 = off   (paper eq. 11)
  NAG + CFG:    out(c,t) + (s - 1)(out(c,t) - out(null,t)) + w (out(c,t) - out(c,t_pseudo))
  nested form:  CFG applied to NAG-guided cond and NAG-guided uncond (uncond uses (null, t_pseudo))
  DoG:          + (s_dog - 1)(out(c,t) - parent(null,t)), the parent being the pre-trained model.

Only the first `latent_channels` are guided (CFG optionally only the first `cfg_channels`, the official
3-channel quirk); DiT's variance channels always come from the conditional branch.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from nag_jax.guidance.config import GuidanceConfig


def cfg(cond: jax.Array, uncond: jax.Array, scale: float) -> jax.Array:
  """Classifier-free guidance, CFG convention."""
  return uncond + scale * (cond - uncond)


def nag(cond_t: jax.Array, cond_pseudo: jax.Array, w: float) -> jax.Array:
  """Classifier-free noise awareness guidance, paper eq. 11."""
  return (w + 1) * cond_t - w * cond_pseudo


def _channel_mask(n_channels: int, guided: int | None) -> jax.Array:
  guided = n_channels if guided is None else min(guided, n_channels)
  return (jnp.arange(n_channels) < guided).astype(jnp.float32)


def combine(outs: dict, g: GuidanceConfig, active: frozenset, latent_channels: int) -> jax.Array:
  """Guided output from the branch outputs `outs` (keys: cond, cfg_uncond, nag_uncond, nag_cfg_uncond, dog)."""
  full = outs["cond"]
  c = latent_channels
  cond = full[..., :c]
  cfg_mask = _channel_mask(c, g.cfg_channels)
  if "nag" in active and g.nag_form == "nested":
    cond_n = nag(cond, outs["nag_uncond"][..., :c], g.nag_scale)
    guided = cond_n
    if "cfg" in active:
      uncond_n = nag(outs["cfg_uncond"][..., :c], outs["nag_cfg_uncond"][..., :c], g.nag_scale)
      guided = cond_n + cfg_mask * (cfg(cond_n, uncond_n, g.cfg_scale) - cond_n)
  else:
    guided = cond
    if "cfg" in active:
      guided = guided + cfg_mask * (cfg(cond, outs["cfg_uncond"][..., :c], g.cfg_scale) - cond)
    if "nag" in active:
      guided = guided + (nag(cond, outs["nag_uncond"][..., :c], g.nag_scale) - cond)
  if "dog" in active:
    guided = guided + (cfg(cond, outs["dog"][..., :c], g.dog_scale) - cond)
  return jnp.concatenate([guided, full[..., c:]], axis=-1)
