"""Resumable sample writing: per-batch part files, then an ADM `samples.npz` and a PNG grid."""
from __future__ import annotations

import pathlib

import numpy as np
from PIL import Image


def part_path(out_dir: pathlib.Path, batch: int, start: int) -> pathlib.Path:
  return out_dir / "parts" / f"batch{batch:06d}_row{start:08d}.npz"


def write_part(out_dir: pathlib.Path, batch: int, start: int, images: np.ndarray, labels: np.ndarray) -> None:
  """Writes one process's rows of one batch atomically (tmp file, then rename)."""
  path = part_path(out_dir, batch, start)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(".tmp.npz")
  np.savez(tmp, images=images, labels=labels)
  tmp.rename(path)


def merge_parts(out_dir: pathlib.Path, num_samples: int) -> tuple[np.ndarray, np.ndarray]:
  """All written rows in order, cut to num_samples: (uint8 NHWC images, labels)."""
  parts = sorted((out_dir / "parts").glob("batch*_row*.npz"), key=lambda p: int(p.stem.split("_row")[1]))
  images, labels = [], []
  for p in parts:
    with np.load(p) as f:
      images.append(f["images"])
      labels.append(f["labels"])
  return np.concatenate(images)[:num_samples], np.concatenate(labels)[:num_samples]


def save_grid(images: np.ndarray, path: pathlib.Path, ncols: int = 8) -> None:
  """uint8 NHWC images (1 or 3 channels) -> one PNG grid with a 2-pixel border."""
  n, h, w, c = images.shape
  ncols = min(ncols, n)
  nrows = -(-n // ncols)
  grid = np.full((nrows * (h + 2) + 2, ncols * (w + 2) + 2, c), 255, np.uint8)
  for i, img in enumerate(images):
    r, q = divmod(i, ncols)
    grid[2 + r * (h + 2):2 + r * (h + 2) + h, 2 + q * (w + 2):2 + q * (w + 2) + w] = img
  Image.fromarray(grid[..., 0] if c == 1 else grid).save(path)


def to_uint8(x: np.ndarray) -> np.ndarray:
  """Images in [-1, 1] -> uint8 via clip(127.5 x + 128, 0, 255), the official sample_ddp.py rule."""
  return np.clip(127.5 * np.asarray(x, np.float32) + 128.0, 0, 255).astype(np.uint8)


def latents_preview(latents: np.ndarray) -> np.ndarray:
  """A viewable uint8 picture of latents: first 3 channels scaled to their min/max."""
  z = np.asarray(latents[..., :3], np.float32)
  z = (z - z.min()) / max(float(z.max() - z.min()), 1e-8)
  return (255 * z).astype(np.uint8)
