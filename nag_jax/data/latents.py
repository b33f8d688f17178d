"""Precomputed VAE latents in array_record files: the writer and the grain source that reads them.

Each record is a msgpack map `{"latent": float32 (2, h, w, c), "label": int}` holding the latents of
the center-cropped image and of its horizontal flip (both flips are stored, so training can draw the
flip without re-encoding). A folder holds `latents-NNNNN.array_record` shards and `meta.json`.
"""
from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Callable

from array_record.python import array_record_module
from flax import serialization
import grain
import jax
import numpy as np
import tqdm

from nag_jax.errors import PathError, UserError

META_FILE = "meta.json"
SHARD_PATTERN = "latents-{:05d}.array_record"

EncodeFn = Callable[[np.ndarray, jax.Array], Any]


def serialize_record(latent: np.ndarray, label: int) -> bytes:
  """Packs one (2, h, w, c) latent pair and its label into msgpack bytes."""
  return serialization.msgpack_serialize(
      {"latent": np.asarray(latent, np.float32), "label": int(label)})


def parse_record(data: bytes) -> dict[str, np.ndarray]:
  """Unpacks one record into the source format `{"x": float32 (2, h, w, c), "y": np.int32}`."""
  record = serialization.msgpack_restore(data)
  return {"x": record["latent"], "y": np.int32(record["label"])}


class LatentSource:
  """Reads a folder written by `write_latents`; records are `{"x": (2, h, w, c), "y"}`."""

  kind = "latent"

  def __init__(self, directory: str | os.PathLike):
    directory = pathlib.Path(directory)
    if not (directory / META_FILE).is_file():
      raise PathError(f"{directory} is not a latents folder (no {META_FILE}); write one with "
                              "python -m nag_jax.extract_latents")
    self.meta = json.loads((directory / META_FILE).read_text())
    paths = [str(directory / SHARD_PATTERN.format(i)) for i in range(self.meta["num_shards"])]
    self._data = grain.sources.ArrayRecordDataSource(paths)
    if len(self._data) != self.meta["num_records"]:
      raise UserError(f"{directory} holds {len(self._data)} records, meta.json says "
                       f"{self.meta['num_records']}")
    self.directory, self.num_classes = directory, self.meta["num_classes"]

  def __len__(self) -> int:
    return len(self._data)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    return parse_record(self._data[index])

  def __repr__(self) -> str:
    return f"LatentSource(directory={str(self.directory)!r}, n={len(self)})"


def _batches(source, batch_size: int, num_threads: int):
  """Yields the source in order as batches of stacked records, decoded by `num_threads` threads."""
  ds = grain.MapDataset.source(source).batch(batch_size)
  return ds.to_iter_dataset(
      grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=2 * num_threads))


def write_latents(source, encode_fn: EncodeFn, directory: str | os.PathLike, *, key: jax.Array,
                  batch_size: int = 64, records_per_shard: int = 100_000, num_threads: int = 8,
                  metadata: dict[str, Any] | None = None) -> pathlib.Path:
  """Encodes every image of an image source and its horizontal flip, and writes array_record shards.

  `encode_fn(images_uint8_nhwc, key) -> latents_nhwc` is called on 2·batch_size images (the batch then
  its flips; the last batch is padded so the shape never changes) with `fold_in(key, batch_index)`.
  `metadata` is stored in meta.json beside the counts. Returns the folder.
  """
  if getattr(source, "kind", None) != "image":
    raise UserError(f"write_latents needs an image source, got {source!r}")
  if batch_size <= 0 or records_per_shard <= 0:
    raise UserError(f"batch_size and records_per_shard must be positive, got {batch_size}, "
                     f"{records_per_shard}")
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  writer, num_written, latent_shape = None, 0, None
  progress = tqdm.tqdm(total=len(source), desc="encoding latents", unit="img")
  for batch_index, batch in enumerate(_batches(source, batch_size, num_threads)):
    images, labels = np.asarray(batch["x"]), batch["y"]
    n = len(images)
    if images.dtype != np.uint8 or images.ndim != 4:
      raise UserError(f"expected uint8 NHWC images, got {images.dtype} {images.shape}")
    images = np.concatenate([images, np.repeat(images[-1:], batch_size - n, axis=0)])
    both = np.concatenate([images, images[:, :, ::-1]])
    latents = np.asarray(encode_fn(both, jax.random.fold_in(key, batch_index)), np.float32)
    pairs = np.stack([latents[:n], latents[batch_size:batch_size + n]], axis=1)
    latent_shape = list(pairs.shape[2:])
    for pair, label in zip(pairs, labels):
      if num_written % records_per_shard == 0:
        if writer is not None:
          writer.close()
        path = directory / SHARD_PATTERN.format(num_written // records_per_shard)
        writer = array_record_module.ArrayRecordWriter(str(path), "group_size:1")
      writer.write(serialize_record(pair, label))
      num_written += 1
    progress.update(n)
  progress.close()
  writer.close()
  meta = {"num_records": num_written, "num_shards": -(-num_written // records_per_shard),
          "latent_shape": latent_shape, "num_classes": source.num_classes, "source": repr(source),
          **(metadata or {})}
  (directory / META_FILE).write_text(json.dumps(meta, indent=2))
  return directory
