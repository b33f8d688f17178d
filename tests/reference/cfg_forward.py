"""Test oracle: the official `forward_with_cfg` in JAX, exactly (3-channel quirk), plus the 4-channel variant."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from nag_jax.models.dit import DiT


def forward_with_cfg(model: DiT, params, x: jax.Array, t: jax.Array, y: jax.Array, cfg_scale: float,
                     guide_channels: int = 3) -> jax.Array:
  """Official CFG forward: uses only the first half of x; guides channels [:guide_channels].

  The remaining channels keep the conditional output in the first half and the unconditional
  output in the second half, exactly as DiT/SiT models.py L250-266 (guide_channels=3 reproduces
  the released numbers; 4 guides every latent channel).
  """
  half = x[: x.shape[0] // 2]
  out = model.apply({"params": params}, jnp.concatenate([half, half]), t, y)
  eps, rest = out[..., :guide_channels], out[..., guide_channels:]
  cond, uncond = jnp.split(eps, 2)
  half_eps = uncond + cfg_scale * (cond - uncond)
  return jnp.concatenate([jnp.concatenate([half_eps, half_eps]), rest], axis=-1)
