"""`train_with_logging`: the training loop with clu logging (TensorBoard + console, progress and ETA)."""
from __future__ import annotations

import os

import jax
import ml_collections
from clu import metric_writers, periodic_actions

from nag_jax import paths
from nag_jax.sharding import multihost
from nag_jax.training import checkpointing, config_validation, loop
from nag_jax.training.train_state import TrainState


def _flatten(d: dict, prefix: str = ""):
  for k, v in d.items():
    if isinstance(v, dict):
      yield from _flatten(v, f"{prefix}{k}.")
    else:
      yield f"{prefix}{k}", "None" if v is None else v


def train_with_logging(config: ml_collections.ConfigDict, workdir: paths.PathLike) -> TrainState:
  """Trains per `config` in `workdir`, writing metrics and sample grids to TensorBoard there (process 0).

  Steps per second and the ETA come from `periodic_actions.ReportProgress`; see `loop.train` for
  resumption, checkpoints and the exported model. TensorBoard events are written by TensorFlow's own file
  system (gs:// included, with TensorFlow's credentials); `config.tensorboard=False` keeps them to the console.
  """
  config_validation.validate(config)  # before the writer creates anything in workdir
  workdir = paths.path(workdir)
  paths.check_bucket(workdir)
  multihost.check_shared(workdir, "--workdir")  # before anything is written there
  checkpointing.check_run_config(workdir, config, write=False)  # a resume with another model: refused here
  writer = metric_writers.create_default_writer(
      os.fspath(workdir), just_logging=jax.process_index() > 0 or not config.tensorboard)
  writer.write_hparams(dict(_flatten(config.to_dict())))
  progress = periodic_actions.ReportProgress(num_train_steps=config.num_train_steps, writer=writer,
                                             every_steps=config.log_every_steps)
  try:
    return loop.train(config, workdir, writer=writer, progress=progress, validated=True)
  finally:
    writer.flush()
