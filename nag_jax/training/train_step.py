"""The pure train step (loss, gradient accumulation, AdamW, EMA) and its sharded, donated `jax.jit`."""
from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from nag_jax.models.config import ModelConfig
from nag_jax.platform import dot_compiler_options
from nag_jax.sharding import batch_sharding, replicated
from nag_jax.training.objectives import Objective
from nag_jax.training.train_state import TrainState

Batch = dict[str, jax.Array]


def train_step(state: TrainState, batch: Batch, *, objective: Objective, accumulation_steps: int = 1,
               learning_rate_fn: Callable | None = None) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer step on a global batch {"x": NHWC, "y": (B,)}; returns the new state and metrics.

  All draws come from `fold_in(state.key, state.step)` for the whole batch, which is then split into
  `accumulation_steps` micro-batches whose mean gradients are averaged (same result, less memory).
  """
  x0, y = batch["x"].astype(jnp.float32), batch["y"]
  draws = objective.draw(jax.random.fold_in(state.key, state.step), x0, y)

  def loss_fn(params, micro):
    x, d = micro
    losses = objective.losses(lambda p, *args: state.apply_fn({"params": p}, *args), params, x, d)
    return jnp.mean(losses["loss"]), {k: jnp.mean(v) for k, v in losses.items()}

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if accumulation_steps == 1:
    (_, metrics), grads = grad_fn(state.params, (x0, draws))
  else:
    m = x0.shape[0] // accumulation_steps
    # Row j*k + i goes to micro-batch i: the split keeps each device's rows on that device.
    micro = jax.tree.map(lambda a: a.reshape(m, accumulation_steps, *a.shape[1:]).swapaxes(0, 1),
                         (x0, draws))

    def accumulate(acc, mb):
      (_, aux), g = grad_fn(state.params, mb)
      return jax.tree.map(jnp.add, acc, (g, aux)), None

    (_, aux_shape), grad_shape = jax.eval_shape(grad_fn, state.params, jax.tree.map(lambda a: a[0], micro))
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (grad_shape, aux_shape))
    (grads, metrics), _ = jax.lax.scan(accumulate, zeros, micro)
    grads, metrics = jax.tree.map(lambda a: a / accumulation_steps, (grads, metrics))
  new_state = state.apply_gradients(grads)
  metrics["grad_norm"] = optax.tree.norm(grads)
  metrics["param_norm"] = optax.tree.norm(new_state.params)
  metrics["noise_drop_rate"] = jnp.mean(draws.drop_t.astype(jnp.float32))
  metrics["label_drop_rate"] = jnp.mean(draws.drop_y.astype(jnp.float32))
  if learning_rate_fn is not None:
    metrics["learning_rate"] = learning_rate_fn(state.step)
  return new_state, metrics


def jit_train_step(state_shardings: Any, mesh: Mesh, *, model_config: ModelConfig, image_ndim: int = 4,
                   compiler_options: dict[str, str] | None = None,
                   **step_kwargs) -> Callable[[TrainState, Batch], tuple[TrainState, dict]]:
  """`train_step` jitted with explicit shardings (state as given, batch over data x fsdp), state donated.

  XLA gets the model's dot options on the mesh's platform (`nag_jax.platform.dot_compiler_options`), then
  `compiler_options` (benchmarks/train.py uses them to compare XLA:CPU's fusion pass off).
  """
  batch_shardings = {"x": batch_sharding(mesh, image_ndim), "y": batch_sharding(mesh, 1)}
  return jax.jit(functools.partial(train_step, **step_kwargs),
                 in_shardings=(state_shardings, batch_shardings),
                 out_shardings=(state_shardings, replicated(mesh)), donate_argnums=0,
                 compiler_options={**dot_compiler_options(model_config, mesh.devices), **(compiler_options or {})})
