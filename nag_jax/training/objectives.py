"""Training objectives: DiT eps+VB, SiT velocity and the g_phi noise-level regression, with condition dropout.

Every random draw is made here for the whole (global) batch from one key: t, the noise, the
input-perturbation noise, the class-label dropout to the null class and, independently, the
noise-condition dropout that feeds the pseudo level instead of t to the network (x_t keeps the
true t). The model itself is deterministic.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from nag_jax import process
from nag_jax.models.config import ModelConfig
from nag_jax.process import Process

# apply(params, x, t, y) for DiT/SiT; apply(params, x, y) for the noise estimator.
ApplyFn = Callable[..., jax.Array]


@dataclasses.dataclass(frozen=True)
class Draws:
  """The random inputs of one batch (all (B,) or (B, H, W, C))."""
  t: jax.Array          # DiT: integer step index; SiT: float in [t0, t1)
  noise: jax.Array      # regression target noise (x0 of the SiT path)
  input_noise: jax.Array  # noise that builds x_t: noise + gamma * xi (input perturbation)
  y: jax.Array          # labels after dropout to the null class
  drop_t: jax.Array     # bool: the network sees the pseudo level instead of t
  drop_y: jax.Array     # bool: the label was dropped


jax.tree_util.register_dataclass(Draws, data_fields=[f.name for f in dataclasses.fields(Draws)],
                                 meta_fields=[])


@dataclasses.dataclass(frozen=True, eq=False)
class Objective:
  """Static description of the loss; hashed by identity so it can close over a jitted step.

  The family's `process` draws t, builds x_t and scores the network output; `noise_level` trains g_phi
  (the level regression) instead of the denoiser.
  """
  process: Process
  null_class: int
  pseudo_level: float
  label_dropout: float = 0.1
  noise_dropout: float = 0.0
  input_perturbation: float = 0.0
  noise_level: bool = False

  def draw(self, key: jax.Array, x0: jax.Array, y: jax.Array) -> Draws:
    """Draws t, noises and the two independent dropout masks for a batch (x0 NHWC, y (B,))."""
    b = x0.shape[0]
    k_t, k_noise, k_xi, k_y, k_drop = jax.random.split(key, 5)
    t = self.process.draw_time(k_t, b)
    noise = jax.random.normal(k_noise, x0.shape, jnp.float32)
    input_noise = noise
    if self.input_perturbation:
      input_noise = noise + self.input_perturbation * jax.random.normal(k_xi, x0.shape, jnp.float32)
    drop_y = jax.random.uniform(k_y, (b,)) < self.label_dropout
    drop_t = jax.random.uniform(k_drop, (b,)) < self.noise_dropout
    return Draws(t, noise, input_noise, jnp.where(drop_y, self.null_class, y), drop_t, drop_y)

  def noisy_input(self, x0: jax.Array, d: Draws) -> tuple[jax.Array, jax.Array]:
    """(x_t built from the input noise at the true t, the t the network would see without dropout)."""
    return self.process.noisy_input(x0, d.t, d.input_noise)

  def losses(self, apply: ApplyFn, params: Any, x0: jax.Array, d: Draws) -> dict[str, jax.Array]:
    """Per-example losses {'loss', ...} for data x0 (NHWC) and the batch's draws."""
    x_t, t_model = self.noisy_input(x0, d)
    if self.noise_level:
      target = self.process.estimator_target(d.t.astype(jnp.float32))
      return {"loss": jnp.square(apply(params, x_t, d.y) - target)}
    t_in = jnp.where(d.drop_t, jnp.float32(self.pseudo_level), t_model)
    return self.process.losses(apply(params, x_t, t_in, d.y), x0, x_t, d.t, d.noise)


def objective_process(model_config: ModelConfig, objective_config) -> Process:
  """The family's process with the training config's forward-process options."""
  return process.create(model_config.family, noise_schedule=objective_config.noise_schedule,
                        diffusion_steps=objective_config.diffusion_steps, learn_sigma=model_config.learn_sigma,
                        path_type=objective_config.path_type)


def create_objective(model_config: ModelConfig, objective_config, *, noise_level: bool = False) -> Objective:
  """The objective of a DiT (eps + VB) or SiT (velocity) model, or of g_phi when `noise_level`."""
  proc = objective_process(model_config, objective_config)
  return Objective(proc, null_class=model_config.null_class,
                   pseudo_level=proc.pseudo_level(objective_config.pseudo_level),
                   label_dropout=float(objective_config.label_dropout),
                   noise_dropout=0.0 if noise_level else float(objective_config.noise_dropout),
                   input_perturbation=float(objective_config.input_perturbation), noise_level=noise_level)
