"""Resumable sample writing keyed on the sampling protocol: per-batch parts, `samples.npz`, a PNG grid.

`run.json` records the protocol (everything that determines the samples) before the first part is
written, and every part's name carries the protocol's hash, so a rerun into the same folder continues
only the same protocol; another one is refused naming the keys that differ, or (overwrite) starts afresh.
"""
from __future__ import annotations

import hashlib
import json
import re
import zipfile
from typing import Any

import numpy as np
from PIL import Image

from etils import epath

from nag_jax import destination, paths
from nag_jax.errors import UserError

RUN_FILE = "run.json"
PARTS_DIR = "parts"
# Everything a sampling run writes into its out_dir (fnmatch patterns): only these are ever replaced.
ARTIFACT_NAMES = frozenset({RUN_FILE, PARTS_DIR, "samples.npz", "latents.npz", "grid.png", ".*.staging.*"})
WHAT = "sampling output folder"
_PART = re.compile(r"batch(\d{6})_row(\d{8})_([0-9a-f]{12})\.npz")


class ProtocolError(destination.DestinationError):
  """out_dir holds samples written under another protocol; the message names the differing keys."""


def protocol_hash(protocol: dict[str, Any]) -> str:
  """12 hex digits naming a protocol (its canonical JSON)."""
  return hashlib.sha256(json.dumps(protocol, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
  return out


def differing_keys(old: dict, new: dict) -> list[str]:
  """Dotted keys whose values differ between two protocols (after a JSON round trip)."""
  a, b = (_flat(json.loads(json.dumps(p, default=str))) for p in (old, new))
  return sorted(k for k in a.keys() | b.keys() if a.get(k, "<absent>") != b.get(k, "<absent>"))


def prepare(out_dir: paths.PathLike, protocol: dict[str, Any], *, overwrite: bool,
            write: bool = True) -> epath.Path:
  """Checks out_dir for `protocol`; with `write`, clears it (overwrite) and records the protocol.

  Refuses a foreign folder, a file, and (without overwrite) samples of another protocol or parts with
  no run.json. Stale `*.tmp.npz` parts of ours are removed. Returns the absolute out_dir.
  """
  out_dir = destination.check(out_dir, names=ARTIFACT_NAMES, what=WHAT, overwrite=overwrite, resume=True)
  run_file = out_dir / RUN_FILE
  if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
    try:
      old = json.loads(run_file.read_text())["protocol"]
    except (OSError, ValueError, KeyError, TypeError):
      raise ProtocolError(f"{out_dir} holds sampling output without a readable {RUN_FILE} protocol, so it cannot "
                          "be resumed safely; pass --config.overwrite=True to start afresh, or choose another "
                          "out_dir") from None
    diff = differing_keys(old, protocol)
    if diff:
      raise ProtocolError(f"{out_dir} holds samples of another protocol (different {', '.join(diff)}); pass "
                          "--config.overwrite=True to start afresh, or choose another out_dir")
  if write:
    if overwrite and out_dir.is_dir():
      destination.clear(out_dir, ARTIFACT_NAMES, WHAT)
    (out_dir / PARTS_DIR).mkdir(parents=True, exist_ok=True)
    for stale in (out_dir / PARTS_DIR).glob(".batch*_row*.staging.npz"):  # a part a killed run was writing
      stale.unlink()
    if not run_file.exists() or overwrite:
      write_json(run_file, {"protocol": protocol, "protocol_hash": protocol_hash(protocol)})
  return out_dir


def write_json(path: epath.Path, data: dict) -> None:
  """Writes JSON atomically (staging file beside it, then rename)."""
  destination.write_file(path, lambda p: p.write_text(json.dumps(data, indent=2, default=str)), what="JSON",
                         overwrite=True)


def part_path(out_dir: epath.Path, batch: int, start: int, protocol: str) -> epath.Path:
  """The part file of rows from `start` of global batch `batch` under protocol hash `protocol`."""
  return out_dir / PARTS_DIR / f"batch{batch:06d}_row{start:08d}_{protocol}.npz"


def write_part(out_dir: paths.PathLike, batch: int, start: int, protocol: str, images: np.ndarray,
               labels: np.ndarray) -> None:
  """Writes one process's rows of one batch atomically (`destination.write_file`: a part exists only whole)."""
  path = part_path(paths.path(out_dir), batch, start, protocol)
  destination.write_file(path, lambda p: np.savez(p, images=images, labels=labels), what="part", overwrite=True)


def part_files(out_dir: paths.PathLike, protocol: str) -> list[epath.Path]:
  """The part files written under `protocol`, in row order.

  Other files in parts/ (temporary parts of a killed run, parts of a cleared protocol) are ignored.
  """
  out_dir = paths.path(out_dir)
  parts = []
  for p in (out_dir / PARTS_DIR).iterdir():
    m = _PART.fullmatch(p.name)
    if m and m.group(3) == protocol:
      parts.append((int(m.group(2)), p))
  if not parts:
    raise UserError(f"{out_dir / PARTS_DIR} holds no parts of protocol {protocol}")
  return [p for _, p in sorted(parts)]


def _rows(parts: list[epath.Path], num_rows: int, key: str):
  """Yields the `key` arrays of the parts in order, one part at a time, cut to `num_rows` rows in all."""
  left = num_rows
  for p in parts:
    if left <= 0:
      return
    with p.open("rb") as raw, np.load(raw) as f:
      block = f[key][:left]
    left -= len(block)
    yield block


def merge_parts(out_dir: paths.PathLike, num_samples: int, protocol: str) -> tuple[np.ndarray, np.ndarray]:
  """The rows written under `protocol`, in order, cut to num_samples, in memory: (images, labels)."""
  parts = part_files(out_dir, protocol)
  return (np.concatenate(list(_rows(parts, num_samples, "images"))),
          np.concatenate(list(_rows(parts, num_samples, "labels"))))


def _array_meta(parts: list[epath.Path], key: str) -> tuple[int, tuple[int, ...], np.dtype]:
  """(rows, item shape, dtype) of the parts' `key` arrays, read from their .npy headers only."""
  rows, item, dtype = 0, None, None
  for p in parts:
    with p.open("rb") as raw, zipfile.ZipFile(raw) as zf, zf.open(f"{key}.npy") as f:
      version = np.lib.format.read_magic(f)
      shape, _, dt = (np.lib.format.read_array_header_1_0(f) if version == (1, 0)
                      else np.lib.format.read_array_header_2_0(f))
    if item is not None and (shape[1:] != item or dt != dtype):
      raise UserError(f"{p} holds {key} of shape {shape} {dt}, the other parts {item} {dtype}")
    rows, item, dtype = rows + shape[0], shape[1:], dt
  return rows, item, dtype


def count_rows(parts: list[epath.Path], num_rows: int) -> int:
  """The rows a merge of `parts` cut to `num_rows` holds (fewer when fewer were sampled)."""
  return min(num_rows, _array_meta(parts, "labels")[0])


def write_merged_npz(path: paths.PathLike, parts: list[epath.Path], num_rows: int, names: dict[str, str]) -> None:
  """Writes the parts' arrays into one .npz at `path`, streaming: {part key: npz name}, e.g. images -> arr_0.

  Each member is stored uncompressed with ZIP64 (a 50,000-image batch at 256 px is 9.8 GB, over zip's
  4 GiB), holding one part in memory at a time; `numpy.load` and ADM's evaluator read it as any .npz.
  """
  with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
    for key, name in names.items():
      rows, item, dtype = _array_meta(parts, key)
      rows = min(rows, num_rows)
      with zf.open(f"{name}.npy", "w", force_zip64=True) as f:
        np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                  "fortran_order": False, "shape": (rows, *item)})
        for block in _rows(parts, rows, key):
          f.write(np.ascontiguousarray(block).reshape(-1).view(np.uint8).data)  # no copy


def save_grid(images: np.ndarray, path: paths.PathLike, ncols: int = 8) -> None:
  """uint8 NHWC images (1 or 3 channels) -> one PNG grid with a 2-pixel border."""
  n, h, w, c = images.shape
  ncols = min(ncols, n)
  nrows = -(-n // ncols)
  grid = np.full((nrows * (h + 2) + 2, ncols * (w + 2) + 2, c), 255, np.uint8)
  for i, img in enumerate(images):
    r, q = divmod(i, ncols)
    grid[2 + r * (h + 2):2 + r * (h + 2) + h, 2 + q * (w + 2):2 + q * (w + 2) + w] = img
  Image.fromarray(grid[..., 0] if c == 1 else grid).save(path)


def latents_preview(latents: np.ndarray) -> np.ndarray:
  """A viewable uint8 picture of latents: first 3 channels scaled to their min/max (over the ones given)."""
  z = np.asarray(latents[..., :3], np.float32)
  z = (z - z.min()) / max(float(z.max() - z.min()), 1e-8)
  return (255 * z).astype(np.uint8)
