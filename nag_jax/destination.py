"""Safe destinations for every writer: stage beside the target, replace only this project's own artifacts.

A destination folder is written by building it in a staging folder next to it and renaming that into
place; a destination file is written to a staging file beside it and renamed over it. What is already
there is replaced only when it is a recognisable artifact of the same kind (a folder whose entries all
match the names that kind writes, `fnmatch` patterns allowed) and `overwrite` is set; a non-empty
foreign folder is never touched, with or without `overwrite`.
"""
from __future__ import annotations

import fnmatch
import os
import pathlib
import shutil
import tempfile
import uuid
from typing import Callable

from nag_jax.errors import UserError


class DestinationError(UserError):
  """A destination cannot be written safely; the message says why in one sentence."""


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def _writable_parent(path: pathlib.Path) -> pathlib.Path:
  """The nearest existing ancestor of `path`; DestinationError if it is a file or not writable."""
  parent = path.parent
  while not parent.exists():
    parent = parent.parent
  if not parent.is_dir():
    raise DestinationError(f"{path} cannot be created: {parent} is a file, not a folder")
  if not os.access(parent, os.W_OK | os.X_OK):
    raise DestinationError(f"{path} cannot be written: {parent} is not writable")
  return parent


def foreign_entries(path: pathlib.Path, names: frozenset[str]) -> list[str]:
  """Entries of folder `path` that match none of `names` (exact names or fnmatch patterns), sorted."""
  return sorted(e.name for e in path.iterdir() if not any(fnmatch.fnmatchcase(e.name, n) for n in names))


def check(path: str | pathlib.Path, *, names: frozenset[str], what: str, overwrite: bool,
          resume: bool = False) -> pathlib.Path:
  """Raises DestinationError unless `path` may receive an artifact `what` whose entries are `names`.

  Allowed: a missing path under a writable folder, an empty folder, or (with `overwrite`, or `resume`
  for a writer that continues its own artifact) a folder that holds only entries from `names`.
  Returns the absolute path.
  """
  path = pathlib.Path(path).absolute()
  if path.exists() and not path.is_dir():
    raise DestinationError(f"{path} is a file, not a folder")
  _writable_parent(path)
  if path.is_dir():
    if not os.access(path, os.W_OK | os.X_OK):
      raise DestinationError(f"{path} cannot be written: it is not writable")
    foreign = foreign_entries(path, names)
    if foreign:
      raise DestinationError(f"{path} is a non-empty folder that is not a {what} (it holds {', '.join(foreign[:3])}"
                             f"{', ...' if len(foreign) > 3 else ''}); choose a new or empty folder")
    if any(path.iterdir()) and not (overwrite or resume):
      raise DestinationError(f"{path} already holds a {what}; pass --overwrite to replace it")
  return path


def clear(path: pathlib.Path, names: frozenset[str], what: str) -> None:
  """Deletes the entries of artifact folder `path` (all of them must match `names`): a fresh start."""
  check(path, names=names, what=what, overwrite=True)
  for entry in path.iterdir():
    if entry.is_dir() and not entry.is_symlink():
      shutil.rmtree(entry)
    else:
      entry.unlink()


def check_file(path: str | pathlib.Path, *, what: str, overwrite: bool) -> pathlib.Path:
  """Raises DestinationError unless file `path` may be written: new, or existing with `overwrite`; never a folder."""
  path = pathlib.Path(path).absolute()
  if path.is_dir():
    raise DestinationError(f"{path} is a folder; name the {what} file to write")
  _writable_parent(path)
  if path.exists() and not overwrite:
    raise DestinationError(f"{path} exists; pass --overwrite to replace it")
  return path


def write_file(path: str | pathlib.Path, write: Callable[[pathlib.Path], object], *, what: str,
               overwrite: bool) -> pathlib.Path:
  """Calls `write(staging)` on a fresh file name beside `path` (same suffix), then renames it over `path`.

  A failed write leaves `path` as it was and removes the staging file.
  """
  path = check_file(path, what=what, overwrite=overwrite)
  path.parent.mkdir(parents=True, exist_ok=True)
  staging = path.parent / f".{path.stem}.{uuid.uuid4().hex[:8]}.staging{path.suffix}"
  try:
    write(staging)
    os.replace(staging, path)
  finally:
    if staging.exists():
      staging.unlink()
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
