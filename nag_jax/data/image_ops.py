"""Image decoding and the ADM/DiT center crop, shared by the folder and TFDS sources."""
from __future__ import annotations

import os

import numpy as np
from PIL import Image


def center_crop_arr(pil_image: Image.Image, image_size: int) -> Image.Image:
  """ADM's `center_crop_arr`, as in the official DiT train.py (guided-diffusion image_datasets.py).

  Halves the image with BOX filtering while its short side is at least 2·size, resizes with BICUBIC so
  the short side equals `image_size`, then crops the centre square.
  """
  while min(*pil_image.size) >= 2 * image_size:
    pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
  scale = image_size / min(*pil_image.size)
  pil_image = pil_image.resize(tuple(round(x * scale) for x in pil_image.size),
                               resample=Image.BICUBIC)
  arr = np.array(pil_image)
  crop_y = (arr.shape[0] - image_size) // 2
  crop_x = (arr.shape[1] - image_size) // 2
  return Image.fromarray(arr[crop_y:crop_y + image_size, crop_x:crop_x + image_size])


def to_rgb_array(image: Image.Image | np.ndarray, image_size: int | None) -> np.ndarray:
  """Converts a PIL image or uint8 array to RGB (as torchvision's loader does), center-cropped when sized.

  Returns a uint8 (H, W, 3) array; `image_size=None` keeps the original size.
  """
  if isinstance(image, np.ndarray):
    image = Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image)
  image = image.convert("RGB")
  if image_size is not None:
    image = center_crop_arr(image, image_size)
  return np.asarray(image, dtype=np.uint8)


def load_image(path: str | os.PathLike, image_size: int | None) -> np.ndarray:
  """Decodes an image file to a uint8 (H, W, 3) RGB array, center-cropped to `image_size` if given."""
  with Image.open(path) as image:
    return to_rgb_array(image, image_size)
