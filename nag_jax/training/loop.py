"""The training loop: validate, build the sharded state or resume it, train, log, sample, checkpoint.

It does not import clu (which imports TensorFlow): `train.train_with_logging` passes a clu metric writer
and progress hook in; `train(config, workdir)` alone runs with neither (quick CPU runs, the kill test).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import ml_collections
import numpy as np
from absl import logging

from nag_jax import paths, platform
from nag_jax.checkpoints import model_dir
from nag_jax.checkpoints.vae_convert import load_vae
from nag_jax.errors import NonFiniteError
from nag_jax.sharding import make_mesh, multihost
from nag_jax.training import checkpointing, config_validation, init_state, input_pipeline, run_control, samples
from nag_jax.training.objectives import create_objective
from nag_jax.training.train_state import TrainState
from nag_jax.training.train_step import jit_train_step

EXPORT_DIR = "model"


def check_finite(pending: list[tuple[int, dict]]) -> None:
  """Raises NonFiniteError naming the first step whose loss, gradient or params are NaN or infinite."""
  for step, m in pending:
    bad = {k: float(m[k]) for k in ("loss", "grad_norm", "param_norm") if not np.isfinite(m[k])}
    if bad:
      raise NonFiniteError(f"non-finite {bad} at step {step}; training stopped (checkpoints are only "
                           "written after a check, so the last one is intact)")


def flush_metrics(writer: Any, pending: list[tuple[int, dict]]) -> None:
  """Checks the metrics of the steps since the last flush, then writes their mean at the last step."""
  if not pending:
    return
  pending = [(s, jax.device_get(m)) for s, m in pending]
  check_finite(pending)
  if writer is not None:
    mean = {f"train/{k}": float(np.mean([m[k] for _, m in pending])) for k in pending[-1][1]}
    writer.write_scalars(pending[-1][0], mean)


def train(config: ml_collections.ConfigDict, workdir: paths.PathLike, *, writer: Any = None,
          progress: Callable[[int], Any] | None = None, validated: bool = False) -> TrainState:
  """Trains per `config` in `workdir` (checkpoints/, model/ export of the EMA or g_phi) and returns the state.

  Resumes from the latest complete checkpoint in `workdir/checkpoints` (the data stream restarts at its
  step), so a run killed at any moment continues exactly, on any number of processes. After a SIGTERM it
  saves and raises `run_control.Preempted`. `writer` is a clu `MetricWriter` (scalars, sample grids);
  `progress(step)` is called after every step. `validated` says the caller has run
  `config_validation.validate` and checked the workdir (bucket, shared by the processes) already.
  """
  workdir = paths.path(workdir)
  if not validated:
    config_validation.validate(config)
    paths.check_bucket(workdir)
    multihost.check_shared(workdir, "--workdir")
  mesh = make_mesh(config.mesh.to_dict())
  source = input_pipeline.create_source(config.data)
  model_config = config_validation.model_config_of(config, source.num_classes)
  input_pipeline.check_source(source, model_config)
  compiled_config = platform.resolve(model_config, mesh.devices)  # its platform-dependent choices, for the step
  initialize, abstract_state, schedule = init_state.state_initializer(config, compiled_config, mesh)
  ck = config.checkpoint
  manager = checkpointing.create_manager(workdir / checkpointing.CHECKPOINT_DIR, every_steps=ck.every_steps,
                                         keep=ck.keep, async_save=ck.async_save)
  checkpointing.check_run_config(workdir, config, write=jax.process_index() == 0)
  state = checkpointing.restore_latest(manager, abstract_state)
  state = initialize() if state is None else state
  start = int(state.step)
  data_iter = input_pipeline.create_iterator(config, source, mesh, start_step=start)
  logging.info("%s %s: step %d of %d; %s", config.mode, model_config, start, config.num_train_steps, source)

  objective = create_objective(model_config, config.objective, noise_level=config.mode == "noise_estimator")
  step_fn = jit_train_step(jax.tree.map(lambda s: s.sharding, abstract_state), mesh, objective=objective,
                           model_config=compiled_config,
                           accumulation_steps=config.optimizer.accumulation_steps, learning_rate_fn=schedule)
  sample_fn = None
  if config.sample.every_steps and writer is not None:
    vae = load_vae(config.sample.vae)[:2] if config.sample.vae else None
    sample_fn = samples.make_sample_grid_fn(model_config, config.sample, mesh,
                                            jax.tree.map(lambda s: s.sharding, abstract_state.params),
                                            config.objective.pseudo_level, config.seed, vae)
  pending: list[tuple[int, dict]] = []
  digests = run_control.DigestLog(workdir, start, config.log_batch_digests)
  preemption = run_control.Preemption(manager)
  try:
    for step in range(start + 1, config.num_train_steps + 1):
      with jax.profiler.StepTraceAnnotation("train", step_num=step), jax.set_mesh(mesh):
        batch = input_pipeline.global_batch(next(data_iter), mesh)
        digests.add(step, batch)
        state, metrics = step_fn(state, batch)
      pending.append((step, metrics))
      if progress is not None:
        progress(step)
      last = step == config.num_train_steps
      preempted = preemption.reached(step)
      save = step % ck.every_steps == 0 or last or preempted
      if save or step % config.log_every_steps == 0:
        flush_metrics(writer, pending)  # raises on a non-finite loss before anything is saved
        digests.flush()
        pending = []
      if save:
        checkpointing.save(manager, step, state, force=True)
      if preempted and not last:
        raise run_control.Preempted(step)
      if sample_fn is not None and (step % config.sample.every_steps == 0 or last):
        grid = sample_fn(state.eval_params)
        writer.write_images(step, {"samples/top_plain_bottom_nag": grid[None]})
  finally:
    preemption.close()
    manager.wait_until_finished()  # an in-flight save of a checked state completes even on an error
  model_dir.save(workdir / EXPORT_DIR, state.eval_params, model_config.replace(remat=False), overwrite=True,
                 source=f"{config.mode} {workdir} step {int(state.step)} "
                        f"({'EMA' if state.ema_params is not None else 'params'})",
                 pseudo_level=config.objective.pseudo_level)
  return state
