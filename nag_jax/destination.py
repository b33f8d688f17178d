"""Safe destinations for every writer: stage beside the target, replace only this project's own artifacts.

A destination folder is written by building it in a staging folder next to it and renaming that into
place. What is already there is replaced only when it is a recognisable artifact of the same kind
(its entries are all names that kind writes) and `overwrite` is set; a non-empty foreign folder is
never touched, with or without `overwrite`.
"""
from __future__ import annotations

import os
import pathlib
import shutil
import tempfile
import uuid

from nag_jax.errors import UserError


class DestinationError(UserError):
  """A destination cannot be written safely; the message says why in one sentence."""


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def check(path: str | pathlib.Path, *, names: frozenset[str], what: str, overwrite: bool) -> pathlib.Path:
  """Raises DestinationError unless `path` may receive an artifact `what` whose entries are `names`.

  Allowed: a missing path under a writable folder, an empty folder, or (with `overwrite`) a folder
  that holds only entries from `names`. Returns the absolute path.
  """
  path = pathlib.Path(path).absolute()
  if path.exists() and not path.is_dir():
    raise DestinationError(f"{path} is a file, not a folder")
  parent = path.parent
  while not parent.exists():
    parent = parent.parent
  if not parent.is_dir():
    raise DestinationError(f"{path} cannot be created: {parent} is a file, not a folder")
  if not os.access(parent if not path.exists() else path, os.W_OK | os.X_OK):
    raise DestinationError(f"{path} cannot be written: {parent if not path.exists() else path} is not writable")
  if path.is_dir():
    entries = {p.name for p in path.iterdir()}
    if entries and not entries <= names:
      foreign = sorted(entries - names)[:3]
      raise DestinationError(f"{path} is a non-empty folder that is not a {what} (it holds {', '.join(foreign)}"
                             f"{', ...' if len(entries - names) > 3 else ''}); choose a new or empty folder")
    if entries and not overwrite:
      raise DestinationError(f"{path} already holds a {what}; pass --overwrite to replace it")
  return path


def make_staging(path: pathlib.Path, name: str | None = None) -> pathlib.Path:
  """A fresh staging folder beside `path` with the user's umask (`name` fixes it for multi-process runs)."""
  path.parent.mkdir(parents=True, exist_ok=True)
  if name is None:
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".staging", dir=path.parent))
  else:
    staging = path.parent / name
    staging.mkdir()
  os.chmod(staging, 0o777 & ~_umask())
  return staging


def commit(staging: pathlib.Path, path: pathlib.Path, *, names: frozenset[str], what: str) -> None:
  """Renames `staging` to `path`; an existing `path` (empty, or holding only `names`) is moved aside first.

  The check is repeated here, so a folder that turned foreign since `check` is left as it is.
  """
  check(path, names=names, what=what, overwrite=True)
  if path.exists():
    old = path.parent / f".{path.name}.replaced-{uuid.uuid4().hex[:8]}"
    path.rename(old)
    staging.rename(path)
    shutil.rmtree(old)
  else:
    staging.rename(path)
