"""The training loop: validate, build the sharded state or resume it, train, log, sample, checkpoint."""
from __future__ import annotations

import pathlib

import jax
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers, periodic_actions

from nag_jax.checkpoints import model_dir
from nag_jax.sharding import make_mesh
from nag_jax.training import checkpointing, config_validation, init_state, input_pipeline, samples
from nag_jax.training.objectives import create_objective
from nag_jax.training.train_state import TrainState
from nag_jax.training.train_step import jit_train_step

EXPORT_DIR = "model"


def check_finite(pending: list[tuple[int, dict]]) -> None:
  """Raises FloatingPointError naming the first step whose loss or gradient norm is NaN or infinite."""
  for step, m in pending:
    bad = {k: float(m[k]) for k in ("loss", "grad_norm") if not np.isfinite(m[k])}
    if bad:
      raise FloatingPointError(f"non-finite {bad} at step {step}; training stopped (the last "
                               "checkpoint was saved before this step and is intact)")


def write_metrics(writer: metric_writers.MetricWriter, pending: list[tuple[int, dict]]) -> None:
  """Checks the metrics of the steps since the last write, then writes their mean at the last step."""
  if not pending:
    return
  pending = [(s, jax.device_get(m)) for s, m in pending]
  check_finite(pending)
  mean = {k: float(np.mean([m[k] for _, m in pending])) for k in pending[-1][1]}
  writer.write_scalars(pending[-1][0], {f"train/{k}": v for k, v in mean.items()})


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> TrainState:
  """Trains per `config` in `workdir` (checkpoints/, TensorBoard events, model/ export); returns the state.

  Resumes from the latest complete checkpoint in `workdir/checkpoints` (state and data order), so a
  run killed at any moment continues exactly where its last checkpoint left off.
  """
  config_validation.validate(config)
  workdir = pathlib.Path(workdir)
  mesh = make_mesh(config.mesh.to_dict())
  source = input_pipeline.create_source(config.data)
  model_config = config_validation.model_config_of(config, source.num_classes)
  input_pipeline.check_source(source, model_config)
  data_iter = input_pipeline.create_iterator(config, source)
  initialize, abstract_state, schedule = init_state.state_initializer(config, model_config, mesh)
  ck = config.checkpoint
  manager = checkpointing.create_manager(workdir / "checkpoints", every_steps=ck.every_steps, keep=ck.keep,
                                         async_save=ck.async_save)
  state = checkpointing.restore_latest(manager, abstract_state, data_iter)
  if state is None:
    state = initialize()
  start = int(state.step)
  logging.info("%s %s from step %d of %d; %s", config.mode, model_config, start, config.num_train_steps,
               source)

  objective = create_objective(model_config, config.objective, noise_level=config.mode == "noise_estimator")
  step_fn = jit_train_step(jax.tree.map(lambda s: s.sharding, abstract_state), mesh, objective=objective,
                           accumulation_steps=config.optimizer.accumulation_steps, learning_rate_fn=schedule)
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  if start == 0:
    writer.write_hparams(dict(_flatten(config.to_dict())))
  progress = periodic_actions.ReportProgress(num_train_steps=config.num_train_steps, writer=writer,
                                             every_steps=config.log_every_steps)
  sample_fn = None
  if config.sample.every_steps:
    sample_fn = samples.make_sample_grid_fn(model_config, config.sample, config.objective.pseudo_level)

  pending: list[tuple[int, dict]] = []
  try:
    for step in range(start + 1, config.num_train_steps + 1):
      with jax.profiler.StepTraceAnnotation("train", step_num=step):
        state, metrics = step_fn(state, input_pipeline.global_batch(next(data_iter), mesh))
      pending.append((step, metrics))
      progress(step)
      last = step == config.num_train_steps
      save = step % config.checkpoint.every_steps == 0 or last or manager.reached_preemption(step)
      if save or step % config.log_every_steps == 0:
        write_metrics(writer, pending)  # raises on a non-finite loss before anything is saved
        pending = []
      if save:
        checkpointing.save(manager, step, state, data_iter, force=True)
      if sample_fn is not None and (step % config.sample.every_steps == 0 or last):
        grid = sample_fn(state.eval_params, jax.random.key(config.seed))
        writer.write_images(step, {"samples/top_plain_bottom_nag": grid[None]})
  finally:
    manager.wait_until_finished()  # an in-flight save of a good state completes even on an error
    writer.flush()
  if config.mode != "noise_estimator" and jax.process_count() == 1:
    model_dir.save(workdir / EXPORT_DIR, state.eval_params, model_config, overwrite=True,
                   source=f"{workdir} step {int(state.step)} ({'EMA' if state.ema_params is not None else 'params'})")
  return state


def _flatten(d: dict, prefix: str = ""):
  for k, v in d.items():
    if isinstance(v, dict):
      yield from _flatten(v, f"{prefix}{k}.")
    else:
      yield f"{prefix}{k}", "None" if v is None else v
