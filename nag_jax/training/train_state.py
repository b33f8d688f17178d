"""The training state (params, EMA, optimizer state, step, RNG) and the AdamW optimizer built from config."""
from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax


class TrainState(flax.struct.PyTreeNode):
  """Everything a checkpoint holds; `rng` is raw uint32 key data so Orbax can save it.

  `ema_params` is None when `ema_decay` is 0 (no EMA copy is kept, e.g. for g_phi).
  """
  step: jax.Array
  params: Any
  ema_params: Any
  opt_state: optax.OptState
  rng: jax.Array
  apply_fn: Callable = flax.struct.field(pytree_node=False)
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)
  ema_decay: float = flax.struct.field(pytree_node=False, default=0.0)

  @classmethod
  def create(cls, *, apply_fn: Callable, params: Any, tx: optax.GradientTransformation, rng: jax.Array,
             ema_decay: float) -> "TrainState":
    """Step 0; the EMA starts as a copy of the params (the official `update_ema(ema, model, decay=0)`)."""
    ema = jax.tree.map(jnp.copy, params) if ema_decay else None
    return cls(step=jnp.zeros((), jnp.int32), params=params, ema_params=ema, opt_state=tx.init(params),
               rng=jax.random.key_data(rng), apply_fn=apply_fn, tx=tx, ema_decay=ema_decay)

  def apply_gradients(self, grads: Any) -> "TrainState":
    """One optimizer step, then ema = decay * ema + (1 - decay) * params."""
    updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
    params = optax.apply_updates(self.params, updates)
    ema = self.ema_params
    if ema is not None:
      d = self.ema_decay
      ema = jax.tree.map(lambda e, p: e * d + (1 - d) * p, ema, params)
    return self.replace(step=self.step + 1, params=params, ema_params=ema, opt_state=opt_state)

  @property
  def key(self) -> jax.Array:
    """The state's base PRNG key (step keys are `fold_in(key, step)`)."""
    return jax.random.wrap_key_data(self.rng)

  @property
  def eval_params(self) -> Any:
    """The weights to sample or export with: the EMA when kept, else the params."""
    return self.params if self.ema_params is None else self.ema_params


def learning_rate_schedule(optimizer_config, num_train_steps: int) -> optax.Schedule:
  """Linear warm-up from 0, then constant, cosine or linear decay to `end_learning_rate_factor * lr`."""
  lr, warm = optimizer_config.learning_rate, optimizer_config.warmup_steps
  rest = max(num_train_steps - warm, 1)
  end = lr * optimizer_config.end_learning_rate_factor
  main = {"constant": lambda: optax.constant_schedule(lr),
          "cosine": lambda: optax.cosine_decay_schedule(lr, rest, alpha=optimizer_config.end_learning_rate_factor),
          "linear": lambda: optax.linear_schedule(lr, end, rest)}[optimizer_config.schedule]()
  if not warm:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warm), main], [warm])


def create_optimizer(optimizer_config, num_train_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """AdamW (official defaults lr 1e-4, wd 0, betas 0.9/0.999), with optional global-norm clipping."""
  schedule = learning_rate_schedule(optimizer_config, num_train_steps)
  adamw = optax.adamw(schedule, b1=optimizer_config.b1, b2=optimizer_config.b2, eps=optimizer_config.eps,
                      weight_decay=optimizer_config.weight_decay)
  clip = optimizer_config.grad_clip_norm
  tx = optax.chain(optax.clip_by_global_norm(clip), adamw) if clip else adamw
  return tx, schedule
