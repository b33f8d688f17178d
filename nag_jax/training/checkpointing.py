"""Orbax training checkpoints: the TrainState (EMA included) and the grain iterator, saved together.

Orbax writes each step into a temporary folder and renames it into place once complete, so a save cut
short by `kill -9` is never listed; leftovers are deleted when the manager is created. Restores go
straight into the current mesh's shardings.
"""
from __future__ import annotations

import pathlib
from typing import Any

import grain
import orbax.checkpoint as ocp

from nag_jax.checkpoints import CheckpointError


def create_manager(directory: str | pathlib.Path, *, every_steps: int, keep: int,
                   async_save: bool = True) -> ocp.CheckpointManager:
  """A manager saving every `every_steps` steps and keeping the last `keep`."""
  options = ocp.CheckpointManagerOptions(
      save_interval_steps=every_steps, max_to_keep=keep, create=True, cleanup_tmp_directories=True,
      enable_async_checkpointing=async_save)
  return ocp.CheckpointManager(pathlib.Path(directory).absolute(), item_names=("state", "data"),
                               options=options)


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_iterator, *, force: bool = False) -> bool:
  """Starts saving (in the background when async) if the step is due or `force`; True if it started."""
  return manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(data_iterator)), force=force)


def restore_latest(manager: ocp.CheckpointManager, abstract_state: Any, data_iterator) -> Any | None:
  """The latest complete checkpoint restored into `abstract_state`'s shardings (and the iterator), or None.

  A checkpoint that exists but cannot be read raises CheckpointError naming its folder.
  """
  step = manager.latest_step()
  if step is None:
    return None
  try:
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=grain.checkpoint.CheckpointRestore(data_iterator)))
  except Exception as e:  # orbax and grain raise many types for missing, truncated or foreign files
    raise CheckpointError(f"cannot restore training checkpoint step {step} from {manager.directory / str(step)} "
                          f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); move the "
                          "folder away to resume from an earlier step") from e
  return restored.state
