"""Reads evaluation inputs: ADM `.npz` sample batches (`arr_0`, uint8 NHWC), image folders, and
reference statistics (`mu`, `sigma`), validating them with one clear error each.

`.npz` arrays are streamed from the zip in batches, so 50,000 samples never sit in memory at once.
"""
import dataclasses
import os
import zipfile
from collections.abc import Iterator

import numpy as np
from PIL import Image

from nag_jax import checks, paths
from nag_jax.evaluation.fid import check_covariance
from nag_jax.errors import PathError, UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".ppm", ".pgm", ".tif", ".tiff")
_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0,
                   (2, 0): np.lib.format.read_array_header_2_0}


def check_image_meta(shape: tuple[int, ...], dtype: np.dtype, source: str) -> None:
  """Raises UserError unless the array is (N, H, W, 3), or grayscale (N, H, W, 1), of an integer dtype."""
  dtype = np.dtype(dtype)
  if dtype.kind not in "ui":
    raise UserError(f"{source}: images must be uint8 pixel values in [0, 255], got dtype {dtype} "
                    "(quantise float images to uint8 as the samplers do)")
  if len(shape) != 4 or shape[-1] not in (1, 3) or 0 in shape:
    hint = " (looks like NCHW; transpose to NHWC)" if len(shape) == 4 and shape[1] in (1, 3) else ""
    raise UserError(f"{source}: images must be a non-empty NHWC array (N, H, W, 3), or grayscale (N, H, W, 1), "
                    f"got shape {tuple(shape)}{hint}")


def check_pixel_range(batch: np.ndarray, source: str) -> None:
  """Raises ValueError if integer pixel values fall outside [0, 255]."""
  if batch.dtype != np.uint8 and batch.size and (batch.min() < 0 or batch.max() > 255):
    raise UserError(f"{source}: pixel values must lie in [0, 255], "
                    f"found [{batch.min()}, {batch.max()}]")


class NpzImages:
  """One array of an `.npz` (default ADM's `arr_0`), read in batches and returned as uint8."""

  def __init__(self, path: str | os.PathLike, key: str = "arr_0"):
    self.path, self.key = os.fspath(path), key
    self.source = f"{self.path}[{key}]"
    with paths.path(self.path).open("rb") as raw, zipfile.ZipFile(raw) as zf:
      if f"{key}.npy" not in zf.namelist():
        raise UserError(f"{self.path}: no {key!r} array (ADM sample files hold images in 'arr_0')")
      with zf.open(f"{key}.npy") as f:
        self.shape, fortran, self.dtype = self._read_header(f)
    if fortran:
      raise UserError(f"{self.source}: Fortran-ordered arrays are not supported")
    check_image_meta(self.shape, self.dtype, self.source)
    if self.dtype != np.uint8:  # One extra pass so a range error comes before any compute.
      for batch in self._raw_batches(4096):
        check_pixel_range(batch, self.source)

  def _read_header(self, f):
    version = np.lib.format.read_magic(f)
    if version not in _HEADER_READERS:
      raise UserError(f"{self.source}: unsupported .npy format version {version}")
    return _HEADER_READERS[version](f)

  def __len__(self) -> int:
    return self.shape[0]

  def _raw_batches(self, batch_size: int) -> Iterator[np.ndarray]:
    checks.check_positive("batch_size", batch_size)
    item_shape = self.shape[1:]
    item_bytes = int(np.prod(item_shape)) * self.dtype.itemsize
    with paths.path(self.path).open("rb") as raw, zipfile.ZipFile(raw) as zf, zf.open(f"{self.key}.npy") as f:
      self._read_header(f)
      for start in range(0, len(self), batch_size):
        count = min(batch_size, len(self) - start)
        data = f.read(count * item_bytes)
        yield np.frombuffer(data, self.dtype).reshape((count,) + item_shape)

  def batches(self, batch_size: int) -> Iterator[np.ndarray]:
    """Yields (b, H, W, 3) uint8 batches in file order; grayscale is repeated to RGB (as PIL's convert("RGB"),
    which pytorch-fid applies to image files)."""
    for batch in self._raw_batches(batch_size):
      batch = batch.astype(np.uint8, copy=False)
      yield np.repeat(batch, 3, axis=-1) if batch.shape[-1] == 1 else batch


class FolderImages:
  """Image files of one folder (sorted by name), converted to RGB uint8; all must share one size."""

  def __init__(self, path: str | os.PathLike):
    self.source = os.fspath(path)
    self.files = sorted(p for p in paths.path(path).iterdir()
                        if p.suffix.lower() in IMAGE_SUFFIXES)
    if not self.files:
      raise UserError(f"{self.source}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    width, height = self._size(self.files[0])
    for file in self.files[1:]:  # Headers only: a size mismatch fails before any compute.
      w, h = self._size(file)
      if (w, h) != (width, height):
        raise UserError(f"{file}: size {w}x{h} differs from the folder's first image "
                        f"{width}x{height}; resize all images to one size first")
    self.shape = (len(self.files), height, width, 3)

  @staticmethod
  def _size(file) -> tuple[int, int]:
    with file.open("rb") as raw, Image.open(raw) as im:
      return im.size

  def __len__(self) -> int:
    return len(self.files)

  def batches(self, batch_size: int) -> Iterator[np.ndarray]:
    """Yields (b, H, W, 3) uint8 batches in sorted file order."""
    checks.check_positive("batch_size", batch_size)
    for start in range(0, len(self.files), batch_size):
      images = []
      for file in self.files[start:start + batch_size]:
        with file.open("rb") as raw, Image.open(raw) as im:
          images.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
      yield np.stack(images)


def _check_npz(path: str | os.PathLike) -> None:
  p = paths.path(path)
  paths.check_bucket(p)
  if not p.is_file():
    raise PathError(
        f"{os.fspath(path)!r} not found (expected an .npz file or an image folder)")
  with p.open("rb") as raw:
    if not zipfile.is_zipfile(raw):
      raise UserError(f"{os.fspath(path)!r} is neither an .npz file nor a folder of images")


def open_images(path: str | os.PathLike) -> NpzImages | FolderImages:
  """An ADM `.npz` (`arr_0`) or a folder of images, validated."""
  if paths.path(path).is_dir():
    return FolderImages(path)
  _check_npz(path)
  return NpzImages(path)


@dataclasses.dataclass(frozen=True)
class Reference:
  """Reference statistics (`mu`, `sigma`, or None) and reference images (or None), from one path.

  `adm`: the file is an ADM reference batch (its evaluator also stores the spatial statistics `mu_s`,
  `sigma_s`), whose `mu`/`sigma` come from ADM's TF graph with its TF1 resizing.
  """
  mu: np.ndarray | None
  sigma: np.ndarray | None
  images: NpzImages | FolderImages | None
  adm: bool = False


def open_reference(path: str | os.PathLike) -> Reference:
  """ADM reference batch (`mu`, `sigma`, optional `arr_0`) or a folder of reference images."""
  if paths.path(path).is_dir():
    return Reference(None, None, FolderImages(path))
  _check_npz(path)
  with paths.path(path).open("rb") as raw, np.load(raw) as f:
    if "mu" not in f.files or "sigma" not in f.files:
      raise UserError(f"{os.fspath(path)!r} has no 'mu' and 'sigma' reference statistics "
                      f"(found {', '.join(f.files) or 'nothing'})")
    mu, sigma = f["mu"].astype(np.float64), f["sigma"].astype(np.float64)
    has_images = "arr_0" in f.files
    adm = {"mu_s", "sigma_s"} <= set(f.files)
  if mu.ndim != 1 or sigma.shape != (mu.shape[0],) * 2:
    raise UserError(f"{os.fspath(path)!r}: 'mu' must be (D,) and 'sigma' (D, D), "
                    f"got {mu.shape} and {sigma.shape}")
  if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
    raise UserError(f"{os.fspath(path)!r}: 'mu'/'sigma' contain NaN or inf")
  check_covariance(sigma, f"{os.fspath(path)!r}: 'sigma'")
  return Reference(mu, sigma, NpzImages(path) if has_images else None, adm=adm)
