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

from nag_jax import diffusion as gd
from nag_jax import flow
from nag_jax.models.config import ModelConfig

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
  """Static description of the loss; hashed by identity so it can close over a jitted step."""
  kind: str  # "diffusion" (DiT eps + VB), "flow" (SiT velocity) or "noise_level" (g_phi)
  family: str
  null_class: int
  pseudo_level: float
  label_dropout: float = 0.1
  noise_dropout: float = 0.0
  input_perturbation: float = 0.0
  diffusion: Any = None   # gd.GaussianDiffusion (family "dit")
  transport: Any = None   # flow.Transport (family "sit")

  def draw(self, key: jax.Array, x0: jax.Array, y: jax.Array) -> Draws:
    """Draws t, noises and the two independent dropout masks for a batch (x0 NHWC, y (B,))."""
    b = x0.shape[0]
    k_t, k_noise, k_xi, k_y, k_drop = jax.random.split(key, 5)
    if self.family == "dit":
      t = jax.random.randint(k_t, (b,), 0, self.diffusion.num_timesteps)
    else:
      t0, t1 = flow.check_interval(self.transport)
      t = jax.random.uniform(k_t, (b,), jnp.float32, t0, t1)
    noise = jax.random.normal(k_noise, x0.shape, jnp.float32)
    input_noise = noise
    if self.input_perturbation:
      input_noise = noise + self.input_perturbation * jax.random.normal(k_xi, x0.shape, jnp.float32)
    drop_y = jax.random.uniform(k_y, (b,)) < self.label_dropout
    drop_t = jax.random.uniform(k_drop, (b,)) < self.noise_dropout
    return Draws(t, noise, input_noise, jnp.where(drop_y, self.null_class, y), drop_t, drop_y)

  def noisy_input(self, x0: jax.Array, d: Draws) -> tuple[jax.Array, jax.Array]:
    """(x_t built from the input noise at the true t, the t the network would see without dropout)."""
    if self.family == "dit":
      return gd.q_sample(self.diffusion, x0, d.t, d.input_noise), gd.model_timesteps(self.diffusion, d.t)
    x_t, _ = self.transport.path.plan(d.t, d.input_noise, x0)
    return x_t, d.t

  def losses(self, apply: ApplyFn, params: Any, x0: jax.Array, d: Draws) -> dict[str, jax.Array]:
    """Per-example losses {'loss', ...} for data x0 (NHWC) and the batch's draws."""
    x_t, t_model = self.noisy_input(x0, d)
    if self.kind == "noise_level":
      target = d.t.astype(jnp.float32)
      if self.family == "dit":
        target = target / self.diffusion.num_timesteps
      return {"loss": jnp.square(apply(params, x_t, d.y) - target)}
    t_in = jnp.where(d.drop_t, jnp.float32(self.pseudo_level), t_model)
    out = apply(params, x_t, t_in, d.y)
    if self.kind == "flow":
      _, u_t = self.transport.path.plan(d.t, d.noise, x0)
      return {"loss": gd.mean_flat(jnp.square(out - u_t))}
    c = x0.shape[-1]
    mse = gd.mean_flat(jnp.square(d.noise - out[..., :c]))
    if self.diffusion.variance_type != "learned_range":
      return {"loss": mse, "mse": mse}
    frozen = jnp.concatenate([jax.lax.stop_gradient(out[..., :c]), out[..., c:]], axis=-1)
    vb = gd.vb_terms_bpd(self.diffusion, frozen, x0, x_t, d.t)
    return {"loss": mse + vb, "mse": mse, "vb": vb}


def create_objective(model_config: ModelConfig, objective_config, *, noise_level: bool = False) -> Objective:
  """The objective of a DiT (eps + VB) or SiT (velocity) model, or of g_phi when `noise_level`."""
  oc = objective_config
  pseudo = model_config.pseudo_level if oc.pseudo_level is None else float(oc.pseudo_level)
  kind = "noise_level" if noise_level else ("diffusion" if model_config.family == "dit" else "flow")
  common = dict(kind=kind, family=model_config.family, null_class=model_config.null_class,
                pseudo_level=pseudo, label_dropout=float(oc.label_dropout),
                noise_dropout=0.0 if noise_level else float(oc.noise_dropout),
                input_perturbation=float(oc.input_perturbation))
  if model_config.family == "dit":
    diffusion = gd.create_diffusion("", noise_schedule=oc.noise_schedule, learn_sigma=model_config.learn_sigma,
                                    diffusion_steps=oc.diffusion_steps)
    return Objective(diffusion=diffusion, **common)
  return Objective(transport=flow.create_transport(oc.path_type), **common)


def trained_range(family: str, diffusion_steps: int = 1000) -> tuple[float, float]:
  """The range of t the network is trained on; a pseudo level must lie outside it."""
  return (0.0, float(diffusion_steps - 1)) if family == "dit" else (0.0, 1.0)

