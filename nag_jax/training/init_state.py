"""Builds the sharded initial TrainState for each mode: from scratch, fine-tune, or g_phi from a backbone.

Nothing is materialised on one host: the state is created by `jax.jit(..., out_shardings=...)` from the
logical axis names of the boxed abstract init, and a pretrained model is restored straight into its
shardings before it is merged in.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import ml_collections
import optax
from flax import traverse_util
from jax.sharding import Mesh

from nag_jax.checkpoints import CheckpointError, model_dir
from nag_jax.models.config import ModelConfig
from nag_jax.models.dit import DiT, dummy_inputs
from nag_jax.models.noise_estimator import NoiseEstimator, estimator_inputs
from nag_jax.sharding import logical_shardings
from nag_jax.training.objectives import create_objective
from nag_jax.training.train_state import TrainState, create_optimizer


def build_model(model_config: ModelConfig, config: ml_collections.ConfigDict) -> tuple[nn.Module, tuple]:
  """The module to train (DiT/SiT, or g_phi in noise_estimator mode) and dummy inputs for its init."""
  if config.mode == "noise_estimator":
    level = create_objective(model_config, config.objective, noise_level=True).pseudo_level
    model = NoiseEstimator(model_config, pseudo_level=level)
    return model, estimator_inputs(model)
  return DiT(model_config), dummy_inputs(model_config)


def merge_label_table(fresh: jax.Array, old: jax.Array, num_classes: int, old_num_classes: int) -> jax.Array:
  """A label table for a fine-tune: class rows carry over for the same classes (else stay fresh, a new
  dataset); the null-class row carries over when both tables have one, so the unconditional branch does."""
  table = fresh
  if num_classes == old_num_classes:
    table = table.at[:num_classes].set(old[:num_classes])
  if fresh.shape[0] == num_classes + 1 and old.shape[0] == old_num_classes + 1:
    table = table.at[-1].set(old[-1])
  return table


def merge_pretrained(fresh: dict, pretrained: dict, pretrained_config: ModelConfig,
                     num_classes: int | None = None) -> dict:
  """`fresh` params with every pretrained leaf of the same path and shape copied in.

  Leaves only in `fresh` (the g_phi head) stay fresh; leaves only in `pretrained` (the final layer when
  training g_phi) are dropped; label tables of another size go through `merge_label_table`, with
  `num_classes` the new model's class count (default: the pretrained one's).
  """
  old_classes = pretrained_config.num_classes
  pre = traverse_util.flatten_dict(pretrained)
  out = {}
  for path, value in traverse_util.flatten_dict(fresh).items():
    if path not in pre or pre[path].shape == value.shape:
      out[path] = pre.get(path, value)
    elif path[-1] == "embedding_table":
      out[path] = merge_label_table(value, pre[path], old_classes if num_classes is None else num_classes,
                                    old_classes)
    else:
      raise CheckpointError(f"pretrained {'/'.join(path)} has shape {pre[path].shape}, the model needs "
                            f"{value.shape}")
  return traverse_util.unflatten_dict(out)


def state_initializer(config: ml_collections.ConfigDict, model_config: ModelConfig,
                      mesh: Mesh) -> tuple[Callable[[], TrainState], Any, optax.Schedule]:
  """(initialize, abstract state, learning-rate schedule) for `config.mode`.

  `initialize()` builds the step-0 state directly sharded; the abstract state (ShapeDtypeStructs with
  shardings, nothing allocated) is the restore target when a checkpoint exists.
  """
  model, inputs = build_model(model_config, config)
  tx, schedule = create_optimizer(config.optimizer, config.num_train_steps)
  init_key, train_key = jax.random.split(jax.random.key(config.seed))

  def boxed_init(key):
    return model.init(key, *inputs)["params"]

  def make_state(params):
    return TrainState.create(apply_fn=model.apply, params=params, tx=tx, rng=train_key,
                             ema_decay=float(config.ema_decay))

  boxed = jax.eval_shape(lambda: make_state(boxed_init(init_key)))
  shardings = logical_shardings(boxed, mesh)
  abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                          nn.meta.unbox(boxed), shardings)

  def initialize() -> TrainState:
    if config.mode == "scratch":
      return jax.jit(lambda k: make_state(nn.meta.unbox(boxed_init(k))), out_shardings=shardings)(init_key)
    pre_config = model_dir.read_config(config.init_from)
    _, pretrained, _ = model_dir.load(config.init_from, shardings=model_dir.param_shardings(pre_config, mesh))
    merge = lambda k, pre: make_state(merge_pretrained(nn.meta.unbox(boxed_init(k)), pre, pre_config,
                                                       model_config.num_classes))
    return jax.jit(merge, out_shardings=shardings)(init_key, pretrained)

  return initialize, abstract, schedule
