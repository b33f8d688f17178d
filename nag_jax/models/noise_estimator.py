"""The noise-level estimator g_phi of appendix B.2: the DiT/SiT backbone with a noise-level regressor head.

The final layer is replaced by a two-layer MLP (hidden -> hidden/2, SiLU, -> 1) on the mean-pooled
block-output tokens, and the noise-condition input is held at the pseudo level, so the network has
to read the noise level off x. It shares DiT's `Backbone` (not DiT itself: another call signature), so its
params are the DiT params without `final_layer`, plus the head.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from nag_jax.models import initializers as init
from nag_jax.models.dit import Backbone, dense


class NoiseEstimator(Backbone):
  """g_phi(x, y) -> (B,) predicted noise level: SiT t in [0, 1] (1 = data), or DiT t / 1000.

  `pseudo_level`: the noise-condition input, as the caller resolved it (`Process.pseudo_level`).
  """
  pseudo_level: float

  def setup(self):
    super().setup()
    dt = self.config.compute_dtype
    self.head_fc1 = dense(self.config.hidden_size // 2, ("embed", "mlp"), dt)
    self.head_fc2 = dense(1, ("mlp", None), dt, kernel_init=init.zeros)

  def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
    tokens, _ = self.features(x, jnp.full(x.shape[:1], self.pseudo_level, jnp.float32), y)
    pooled = tokens.astype(jnp.float32).mean(axis=1)
    return self.head_fc2(nn.silu(self.head_fc1(pooled.astype(tokens.dtype))))[:, 0].astype(jnp.float32)


def estimator_inputs(model: NoiseEstimator, batch: int = 1) -> tuple[jax.Array, jax.Array]:
  """Zero (x, y) of the estimator's input shapes, for init and eval_shape."""
  cfg = model.config
  x = jnp.zeros((batch, cfg.input_size, cfg.input_size, cfg.in_channels), jnp.float32)
  return x, jnp.zeros((batch,), jnp.int32)
