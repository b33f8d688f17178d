"""Safe destinations for every writer: stage beside the target, replace only this project's own artifacts.

On disk, a destination folder is written by building it in a staging folder next to it and renaming that
into place; a destination file is written to a staging file beside it and renamed over it. What is already
there is replaced only when it is a recognisable artifact of the same kind (a folder whose entries all
match the names that kind writes, `fnmatch` patterns allowed) and `overwrite` is set; a non-empty foreign
folder is never touched, with or without `overwrite`.

In cloud storage (`nag_jax.paths`) folders cannot be renamed: a folder artifact is written in place, its
writer putting the file that marks it complete last (a model's config.json, Orbax's commit marker, a
sampling run's outputs); a file is written to a local staging file and then uploaded as one object, which
appears only once whole. The refusals are the same: a foreign prefix is never touched, and an artifact is
replaced only with `overwrite` (its old objects are deleted first: an object store has no atomic swap).
"""
from __future__ import annotations

import fnmatch
import os
import pathlib
import shutil
import tempfile
import uuid
from typing import Callable

from etils import epath

from nag_jax import paths
from nag_jax.errors import UserError


class DestinationError(UserError):
  """A destination cannot be written safely; the message says why in one sentence."""


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def _writable_parent(path: epath.Path) -> epath.Path:
  """The nearest existing ancestor of `path`; DestinationError if it is a file or not writable."""
  if paths.is_cloud(path):
    paths.check_bucket(path)
    return path.parent
  parent = path.parent
  while not parent.exists():
    parent = parent.parent
  if not parent.is_dir():
    raise DestinationError(f"{path} cannot be created: {parent} is a file, not a folder")
  if not os.access(parent, os.W_OK | os.X_OK):
    raise DestinationError(f"{path} cannot be written: {parent} is not writable")
  return parent


def foreign_entries(path: paths.PathLike, names: frozenset[str]) -> list[str]:
  """Entries of folder `path` that match none of `names` (exact names or fnmatch patterns), sorted."""
  return sorted(e.name for e in paths.path(path).iterdir() if not any(fnmatch.fnmatchcase(e.name, n) for n in names))


def check(path: paths.PathLike, *, names: frozenset[str], what: str, overwrite: bool,
          resume: bool = False) -> epath.Path:
  """Raises DestinationError unless `path` may receive an artifact `what` whose entries are `names`.

  Allowed: a missing path under a writable folder (or in an existing bucket), an empty folder, or (with
  `overwrite`, or `resume` for a writer that continues its own artifact) a folder that holds only entries from
  `names`. Returns the path (absolute when local).
  """
  path = paths.path(path)
  cloud = paths.is_cloud(path)
  if not cloud and path.exists() and not path.is_dir():
    raise DestinationError(f"{path} is a file, not a folder")
  _writable_parent(path)
  if cloud and path.is_file():
    raise DestinationError(f"{path} is a file, not a folder")
  if path.is_dir():
    if not cloud and not os.access(path, os.W_OK | os.X_OK):
      raise DestinationError(f"{path} cannot be written: it is not writable")
    foreign = foreign_entries(path, names)
    if foreign:
      raise DestinationError(f"{path} is a non-empty folder that is not a {what} (it holds {', '.join(foreign[:3])}"
                             f"{', ...' if len(foreign) > 3 else ''}); choose a new or empty folder")
    if any(path.iterdir()) and not (overwrite or resume):
      raise DestinationError(f"{path} already holds a {what}; pass --overwrite to replace it")
  return path


def clear(path: paths.PathLike, names: frozenset[str], what: str) -> None:
  """Deletes the entries of artifact folder `path` (all of them must match `names`): a fresh start."""
  path = check(path, names=names, what=what, overwrite=True)
  for entry in path.iterdir():
    if entry.is_dir() and (paths.is_cloud(entry) or not os.path.islink(entry)):
      entry.rmtree()
    else:
      entry.unlink()


def check_file(path: paths.PathLike, *, what: str, overwrite: bool) -> epath.Path:
  """Raises DestinationError unless file `path` may be written: new, or existing with `overwrite`; never a folder."""
  path = paths.path(path)
  if path.is_dir():
    raise DestinationError(f"{path} is a folder; name the {what} file to write")
  _writable_parent(path)
  if path.exists() and not overwrite:
    raise DestinationError(f"{path} exists; pass --overwrite to replace it")
  return path


def write_file(path: paths.PathLike, write: Callable[[pathlib.Path], object], *, what: str,
               overwrite: bool) -> epath.Path:
  """Calls `write(staging)` on a fresh local file (same suffix), then moves it to `path` in one step.

  On disk the staging file lies beside `path` and is renamed over it; in cloud storage it lies in the local
  temporary folder and is uploaded as one object (streamed: a 10 GB file never sits in memory). A failed write
  leaves `path` as it was and removes the staging file.
  """
  path = check_file(path, what=what, overwrite=overwrite)
  name = f".{path.stem}.{uuid.uuid4().hex[:8]}.staging{path.suffix}"
  if paths.is_cloud(path):
    staging = pathlib.Path(tempfile.gettempdir()) / name
  else:
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(path.parent) / name
  try:
    write(staging)
    if paths.is_cloud(path):
      upload(staging, path)
    else:
      os.replace(staging, path)
  finally:
    if staging.exists():
      staging.unlink()
  return path


def upload(local: pathlib.Path, path: epath.Path) -> None:
  """Copies a local file to `path` (any epath), streaming."""
  with open(local, "rb") as src, path.open("wb") as dst:
    shutil.copyfileobj(src, dst, length=16 * 2**20)


def make_staging(path: epath.Path, name: str | None = None) -> epath.Path:
  """A fresh staging folder beside `path` with the user's umask (`name` fixes it for multi-process runs).

  In cloud storage there is no staging: the folder is written in place (see the module docstring).
  """
  if paths.is_cloud(path):
    return path
  path.parent.mkdir(parents=True, exist_ok=True)
  if name is None:
    staging = epath.Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".staging", dir=path.parent))
  else:
    staging = path.parent / name
    staging.mkdir()
  os.chmod(staging, 0o777 & ~_umask())
  return staging


def commit(staging: epath.Path, path: epath.Path, *, names: frozenset[str], what: str) -> None:
  """Renames `staging` to `path`; an existing `path` (empty, or holding only `names`) is moved aside first.

  The check is repeated here, so a folder that turned foreign since `check` is left as it is. In cloud
  storage `staging` is `path` itself (`make_staging`): nothing to move.
  """
  if paths.is_cloud(path):
    return
  check(path, names=names, what=what, overwrite=True)
  if path.exists():
    old = path.parent / f".{path.name}.replaced-{uuid.uuid4().hex[:8]}"
    path.rename(old)
    staging.rename(path)
    shutil.rmtree(old)
  else:
    staging.rename(path)
