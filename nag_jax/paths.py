"""One path type for every file argument, local or cloud: `etils.epath.Path` (what flax, big_vision and Orbax use).

`gs://` (and the other fsspec schemes epath knows: s3://, az://) go through fsspec: gcsfs for `gs://` (the `gcs`
extra). epath would use TensorFlow's `tf.io.gfile` instead whenever TensorFlow is importable; nag_jax sets
EPATH_USE_TF=false (unless the environment sets it) so that every path goes through one backend, the one that
honours STORAGE_EMULATOR_HOST (a local GCS emulator). Orbax writes array data through tensorstore
(TENSORSTORE_GCS_HTTP_URL points it at an emulator) and its metadata and commit markers through epath.

Object stores cannot rename folders: writers that stage a folder and rename it into place on disk write
cloud folders in place and mark them complete last (see `nag_jax.destination`).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import pathlib
import shutil
import tempfile
from typing import Iterator, Union

os.environ.setdefault("EPATH_USE_TF", "false")  # before epath picks a backend (it caches the choice)

from etils import epath  # pylint: disable=wrong-import-position

from nag_jax.errors import PathError, UserError  # pylint: disable=wrong-import-position

PathLike = Union[str, os.PathLike, epath.Path]
CLOUD_SCHEMES = ("gs://", "s3://", "az://")


def is_cloud(path: PathLike) -> bool:
  """True for an object-store URI (gs://, s3://, az://)."""
  return os.fspath(path).startswith(CLOUD_SCHEMES)


def path(p: PathLike) -> epath.Path:
  """`p` as an epath.Path: cloud URIs as they are, local paths made absolute."""
  if isinstance(p, epath.Path) and is_cloud(p):
    return p
  text = os.fspath(p)
  return epath.Path(text) if is_cloud(text) else epath.Path(os.path.abspath(text))


LOCAL_DATA_HINT = ("the latents (array_record) and image-folder readers and writers cannot open: copy it to local "
                   "disk, or mount the bucket (e.g. gcsfuse) and give the mounted path")


def local_only(p: PathLike, what: str, hint: str = LOCAL_DATA_HINT) -> None:
  """Raises UserError for a cloud `p` where only local files work (`what` names the argument)."""
  if is_cloud(p):
    raise UserError(f"{what} {os.fspath(p)} is in cloud storage, which {hint}")


@contextlib.contextmanager
def local_copy(p: PathLike) -> Iterator[pathlib.Path]:
  """A local path of file `p`: `p` itself on disk; a downloaded temporary copy (deleted afterwards) in the cloud,
  for readers that open files by name (torch.load of a pickle, safetensors)."""
  if not is_cloud(p):
    yield pathlib.Path(os.fspath(p))
    return
  source = path(p)
  with tempfile.TemporaryDirectory(prefix="nag_jax_") as folder:
    local = pathlib.Path(folder) / source.name
    with source.open("rb") as src, open(local, "wb") as dst:
      shutil.copyfileobj(src, dst, length=16 * 2**20)
    yield local


def check_sha256(p: PathLike, expected: str, what: str) -> None:
  """Raises UserError unless file `p`'s SHA-256 starts with `expected` (the full 64 hex digits, or a prefix of at
  least 8, like the `-6726825d` in the name of pytorch-fid's Inception weights). Streams the file."""
  expected = expected.strip().lower()
  if not 8 <= len(expected) <= 64 or any(c not in "0123456789abcdef" for c in expected):
    raise UserError(f"--sha256 must be 8 to 64 hexadecimal digits, got {expected!r}")
  digest = hashlib.sha256()
  with path(p).open("rb") as f:
    for block in iter(lambda: f.read(16 * 2**20), b""):
      digest.update(block)
  if not digest.hexdigest().startswith(expected):
    raise UserError(f"{what} {os.fspath(p)} has SHA-256 {digest.hexdigest()}, not the expected {expected}: a "
                    "different or damaged download")


def check_bucket(p: PathLike) -> None:
  """For a cloud path: raises PathError unless its bucket exists (gcsfs reports a missing one only on write)."""
  if not is_cloud(p):
    return
  text = os.fspath(p)
  scheme, rest = text.split("://", 1)
  bucket = rest.split("/", 1)[0]
  if not bucket or not epath.Path(f"{scheme}://{bucket}").exists():
    raise PathError(f"{text}: bucket {scheme}://{bucket} does not exist (or is not readable with these credentials)")
