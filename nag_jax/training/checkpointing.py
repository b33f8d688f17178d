"""Orbax training checkpoints of the TrainState (EMA included).

Orbax writes each step into a temporary folder and renames it into place once complete (on object stores,
which cannot rename, it writes a commit marker last), so a save cut short by `kill -9` is never listed;
leftovers are deleted when the manager is created. In a multi-process run every process calls save and
restore and Orbax writes each array shard once. Restores go straight into the current mesh's shardings.
The data iterator is not saved: its stream is a function of the seed and the step (`nag_jax.data.pipeline`).
"""
from __future__ import annotations

import json
from typing import Any

import ml_collections
import orbax.checkpoint as ocp

from nag_jax import destination, paths
from nag_jax.checkpoints import CheckpointError

RUN_CONFIG = "config.json"  # the config a workdir's checkpoints were written with
CHECKPOINT_DIR = "checkpoints"  # workdir/checkpoints: the Orbax steps
# Keys that shape the TrainState (a resume with other values cannot restore the checkpoints), and the
# model fields that do not.
STATE_KEYS = ("mode", "model", "optimizer.accumulation_steps")
STATE_FREE = ("model.dtype", "model.remat", "model.attention", "model.grad_fence")


def _state_fields(config: dict) -> dict[str, Any]:
  """{dotted key: value} of the STATE_KEYS of a config dict."""
  out = {}
  for key in STATE_KEYS:
    head, _, tail = key.partition(".")
    value = config.get(head, {}).get(tail) if tail else config.get(head)
    items = value.items() if isinstance(value, dict) else [("", value)]
    out.update({f"{key}.{k}" if k else key: v for k, v in items if f"{key}.{k}" not in STATE_FREE})
  return out


def has_checkpoint(workdir: paths.PathLike) -> bool:
  """True when workdir/checkpoints holds a finished step (Orbax's temporary folders do not count)."""
  folder = paths.path(workdir) / CHECKPOINT_DIR
  return folder.is_dir() and any(p.name.isdigit() for p in folder.iterdir())


def check_run_config(workdir: paths.PathLike, config: ml_collections.ConfigDict, write: bool = True) -> None:
  """Refuses to resume `workdir` with a config whose state-shaping keys differ from the recorded one.

  The first run records its config in workdir/config.json (`write`, process 0 only); a resume compares
  the mode, model and accumulation with it and raises CheckpointError naming every differing key.
  """
  resuming = has_checkpoint(workdir)
  path = paths.path(workdir) / RUN_CONFIG
  current = json.loads(json.dumps(config.to_dict(), default=str))
  if resuming and path.is_file():
    try:
      old = _state_fields(json.loads(path.read_text()))
    except (ValueError, AttributeError):
      old = None
    new = _state_fields(current)
    if old is not None:
      diff = [f"{k}={new.get(k)!r} (workdir: {old.get(k)!r})" for k in sorted(old.keys() | new.keys())
              if old.get(k) != new.get(k)]
      if diff:
        raise CheckpointError(f"the config differs from the one {workdir} was trained with in {', '.join(diff)}; "
                              "resume with the recorded values or start a new --workdir")
  if write and not (resuming and path.is_file()):
    path.parent.mkdir(parents=True, exist_ok=True)
    destination.write_file(path, lambda p: p.write_text(json.dumps(current, indent=2)), what="config",
                           overwrite=True)


def create_manager(directory: paths.PathLike, *, every_steps: int, keep: int,
                   async_save: bool = True) -> ocp.CheckpointManager:
  """A manager saving every `every_steps` steps and keeping the last `keep`."""
  options = ocp.CheckpointManagerOptions(
      save_interval_steps=every_steps, max_to_keep=keep, create=True, cleanup_tmp_directories=True,
      enable_async_checkpointing=async_save)
  return ocp.CheckpointManager(paths.path(directory), item_names=("state",), options=options)


def save(manager: ocp.CheckpointManager, step: int, state: Any, *, force: bool = False) -> bool:
  """Starts saving (in the background when async) if the step is due or `force`; True if it started."""
  return manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)), force=force)


def restore_latest(manager: ocp.CheckpointManager, abstract_state: Any) -> Any | None:
  """The latest complete checkpoint restored into `abstract_state`'s shardings, or None.

  A checkpoint that exists but cannot be read raises CheckpointError naming its folder.
  """
  step = manager.latest_step()
  if step is None:
    return None
  try:
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
  except Exception as e:  # orbax and grain raise many types for missing, truncated or foreign files
    raise CheckpointError(f"cannot restore training checkpoint step {step} from {manager.directory / str(step)} "
                          f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); move the "
                          "folder away to resume from an earlier step") from e
  return restored.state
