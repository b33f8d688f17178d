"""Random-access data sources for grain: in-memory arrays, a folder of class sub-folders, TFDS.

Every source returns `{"x": array, "y": np.int32}` per record and has `kind` ("image": x is (H, W, C),
uint8 or float in [-1, 1]; "latent": x is float32 (2, h, w, c), [no flip, flip]) and `num_classes`.
`__repr__` is stable across processes, because grain checks it when an iterator state is restored.
"""
from __future__ import annotations

import importlib.util
import os
import pathlib

import numpy as np
from PIL import Image

from nag_jax import checks
from nag_jax.data import image_ops
from nag_jax.errors import PathError, UserError

# The extensions torchvision's ImageFolder accepts.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
KINDS = ("image", "latent")


class ArraySource:
  """In-memory arrays `x` (N, ...) and integer labels `y` (N,), for tests and the demo."""

  def __init__(self, x: np.ndarray, y: np.ndarray, *, kind: str = "image",
               num_classes: int | None = None):
    x, y = np.asarray(x), np.asarray(y)
    if kind not in KINDS:
      raise UserError(f"kind must be one of {KINDS}, got {kind!r}")
    if len(x) != len(y) or len(x) == 0:
      raise UserError(f"x and y must be non-empty with the same length, got {len(x)} and {len(y)}")
    if kind == "image" and x.ndim != 4 or kind == "latent" and (x.ndim != 5 or x.shape[1] != 2):
      raise UserError(f"x of kind {kind!r} must be (N, H, W, C) for images or (N, 2, h, w, c) for "
                      f"latents, got shape {x.shape}")
    checks.check_labels(y, np.iinfo(np.int32).max if num_classes is None else num_classes, "y")
    self.x, self.y, self.kind = x, y.astype(np.int32), kind
    self.num_classes = int(y.max()) + 1 if num_classes is None else num_classes

  def __len__(self) -> int:
    return len(self.x)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    return {"x": self.x[index], "y": self.y[index]}

  def __repr__(self) -> str:
    return (f"ArraySource(kind={self.kind}, shape={self.x.shape}, dtype={self.x.dtype}, "
            f"num_classes={self.num_classes})")


class FolderSource:
  """A folder of class sub-folders (ImageFolder layout): sorted class names give the label ids.

  Images are decoded to RGB with PIL and, when `image_size` is set, center-cropped as ADM/DiT do.
  """

  kind = "image"

  def __init__(self, root: str | os.PathLike, image_size: int | None = None):
    root = pathlib.Path(root)
    if not root.is_dir():
      raise PathError(f"dataset folder {root} does not exist")
    if image_size is not None and image_size <= 0:
      raise UserError(f"image_size must be positive, got {image_size}")
    self.classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    if not self.classes:
      raise UserError(f"dataset folder {root} has no class sub-folders")
    self.files, labels = [], []
    for label, name in enumerate(self.classes):
      files = sorted(str(p) for p in (root / name).rglob("*")
                     if p.suffix.lower() in IMG_EXTENSIONS and p.is_file())
      if not files:
        raise UserError(f"class folder {root / name} has no images ({', '.join(IMG_EXTENSIONS)})")
      self.files += files
      labels += [label] * len(files)
    self.labels = np.asarray(labels, np.int32)
    self.root, self.image_size, self.num_classes = root, image_size, len(self.classes)
    if image_size is None:
      self._check_same_size()

  def _check_same_size(self):
    """Raises when images differ in size, since without a crop they cannot be batched."""
    first = {}
    for path in self.files:
      with Image.open(path) as image:
        first.setdefault(image.size, path)
      if len(first) > 1:
        (size_a, a), (size_b, b) = first.items()
        raise UserError(f"images in {self.root} have mixed sizes ({a}: {size_a}, {b}: {size_b}) and "
                        "no image_size is set to center-crop them")

  def __len__(self) -> int:
    return len(self.files)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    return {"x": image_ops.load_image(self.files[index], self.image_size), "y": self.labels[index]}

  def __repr__(self) -> str:
    return f"FolderSource(root={str(self.root)!r}, image_size={self.image_size}, n={len(self)})"


class TfdsSource:
  """A TFDS image dataset by name (e.g. "imagenet2012"), read by random access from array_record.

  `prepare=True` builds it first (needs tensorflow; ImageNet needs ILSVRC2012_img_{train,val}.tar
  in `manual_dir`). Images are converted to RGB and center-cropped to `image_size` when set.
  """

  kind = "image"

  def __init__(self, name: str, *, split: str = "train", data_dir: str | None = None,
               image_size: int | None = None, prepare: bool = False, manual_dir: str | None = None,
               image_key: str = "image", label_key: str = "label"):
    if importlib.util.find_spec("tensorflow_datasets") is None:
      raise ImportError("TFDS sources need tensorflow-datasets: pip install tensorflow-datasets")
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    try:
      builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
    except tfds.core.registered.DatasetNotFoundError:
      raise UserError(f"{name!r} is neither a TFDS dataset nor an existing folder") from None
    if prepare:
      if importlib.util.find_spec("tensorflow") is None:
        raise ImportError(f"preparing TFDS dataset {name!r} needs tensorflow: "
                          "pip install tensorflow-cpu (reading a prepared one does not)")
      builder.download_and_prepare(
          file_format="array_record",
          download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    try:
      self._data = builder.as_data_source(split=split)
    except KeyError as e:
      raise PathError(
          f"TFDS dataset {name!r} is not prepared in {builder.data_dir}; prepare it once with "
          "prepare=True (--prepare), with the manual-download files in manual_dir if it needs them"
      ) from e
    shape = builder.info.features[image_key].shape
    if image_size is None and None in shape[:2]:
      raise UserError(f"TFDS dataset {name!r} has images of varying sizes {shape} and no "
                      "image_size is set to center-crop them")
    self.num_classes = builder.info.features[label_key].num_classes
    self.name, self.split, self.image_size = name, split, image_size
    self._keys = (image_key, label_key)

  def __len__(self) -> int:
    return len(self._data)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    example = self._data[index]
    image = image_ops.to_rgb_array(example[self._keys[0]], self.image_size)
    return {"x": image, "y": np.int32(example[self._keys[1]])}

  def __repr__(self) -> str:
    return (f"TfdsSource(name={self.name!r}, split={self.split!r}, image_size={self.image_size}, "
            f"n={len(self)})")


def digits_arrays(size: int = 16) -> tuple[np.ndarray, np.ndarray]:
  """sklearn's 8×8 digits (1797 images, 10 classes) upsampled by pixel repetition to `size`.

  Returns float32 NHWC images (N, size, size, 1) in [-1, 1] and int32 labels: a tiny real data set
  for the demo and tests that needs no download.
  """
  if size <= 0 or size % 8:
    raise UserError(f"size must be a positive multiple of 8, got {size}")
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  digits = datasets.load_digits()
  images = digits.images.astype(np.float32) / 16.0 * 2.0 - 1.0
  factor = size // 8
  images = images.repeat(factor, axis=1).repeat(factor, axis=2)
  return images[..., None], digits.target.astype(np.int32)
