"""Precomputed VAE latents in array_record files: the writer and the grain source that reads them.

Each record is a msgpack map `{"latent": float32 (2, h, w, c), "label": int}` holding the latents of
the center-cropped image and of its horizontal flip (both flips are stored, so training can draw the
flip without re-encoding). A folder holds `latents-NNNNN.array_record` shards and `meta.json`.
"""
from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Callable, Sequence

from array_record.python import array_record_module
from flax import serialization
import grain
import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from nag_jax.errors import PathError, UserError

META_FILE = "meta.json"
SHARD_PATTERN = "latents-{:05d}.array_record"

EncodeFn = Callable[[np.ndarray, jax.Array], Any]  # (uint8 NHWC images, one key per image) -> latents


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

  @staticmethod
  def read_record(shard: str | os.PathLike, index: int) -> dict[str, np.ndarray]:
    """Record `index` of one shard file (before meta.json exists)."""
    return parse_record(grain.sources.ArrayRecordDataSource([str(shard)])[index])


def num_shards(num_records: int, records_per_shard: int) -> int:
  return -(-num_records // records_per_shard)


def shard_path(directory: pathlib.Path, shard: int) -> pathlib.Path:
  return directory / SHARD_PATTERN.format(shard)


def write_shards(source, encode_fn: EncodeFn, directory: str | os.PathLike, shards: Sequence[int], *,
                 key: jax.Array, batch_size: int = 64, records_per_shard: int = 100_000, num_threads: int = 8,
                 progress: bool = True) -> list[int]:
  """Encodes records [s·R, (s+1)·R) of an image source, and their horizontal flips, into shard file s.

  `encode_fn(images_uint8_nhwc, keys) -> latents_nhwc` gets 2·batch_size images (the batch, then its flips;
  the last batch padded so the shape never changes) and one key per image: record i is drawn with
  fold_in(fold_in(key, i), 0) and its flip with fold_in(fold_in(key, i), 1), so a record's latents do not
  depend on the batch, shard or process that encodes it. A shard file that exists is complete (each is
  written under a temporary name and renamed), so it is skipped: a killed run resumes where it stopped.
  Returns the shards written now.
  """
  if getattr(source, "kind", None) != "image":
    raise UserError(f"write_latents needs an image source, got {source!r}")
  if batch_size <= 0 or records_per_shard <= 0:
    raise UserError(f"batch_size and records_per_shard must be positive, got {batch_size}, "
                    f"{records_per_shard}")
  directory = pathlib.Path(directory)
  todo = [s for s in shards if not shard_path(directory, s).exists()]
  total = sum(min(len(source), (s + 1) * records_per_shard) - s * records_per_shard for s in todo)
  bar = tqdm.tqdm(total=total, desc="encoding latents", unit="img", disable=not progress)
  per_image = jax.jit(jax.vmap(lambda i: jnp.stack([jax.random.fold_in(jax.random.fold_in(key, i), f)
                                                    for f in (0, 1)])))
  for shard in todo:
    lo, hi = shard * records_per_shard, min(len(source), (shard + 1) * records_per_shard)
    final = shard_path(directory, shard)
    tmp = final.with_name(final.name + ".tmp")
    writer = array_record_module.ArrayRecordWriter(str(tmp), "group_size:1")
    for start, batch in _batches(source, lo, hi, batch_size, num_threads):
      images, labels = np.asarray(batch["x"]), batch["y"]
      n = len(images)
      if images.dtype != np.uint8 or images.ndim != 4:
        raise UserError(f"expected uint8 NHWC images, got {images.dtype} {images.shape}")
      pad = batch_size - n
      images = np.concatenate([images, np.repeat(images[-1:], pad, axis=0)])
      keys = per_image(np.arange(start, start + batch_size, dtype=np.uint32))  # (B, 2): plain, flip
      both = np.concatenate([images, images[:, :, ::-1]])
      latents = np.asarray(encode_fn(both, jnp.concatenate([keys[:, 0], keys[:, 1]])), np.float32)
      for pair, label in zip(np.stack([latents[:n], latents[batch_size:batch_size + n]], axis=1), labels):
        writer.write(serialize_record(pair, label))
      bar.update(n)
    writer.close()
    tmp.rename(final)
  bar.close()
  return todo


def write_meta(directory: str | os.PathLike, source, records_per_shard: int, latent_shape: Sequence[int],
               metadata: dict[str, Any] | None = None) -> None:
  """meta.json of a latents folder whose shards are all written: counts, shape, classes, `metadata`."""
  meta = {"num_records": len(source), "num_shards": num_shards(len(source), records_per_shard),
          "latent_shape": list(latent_shape), "num_classes": source.num_classes, "source": repr(source),
          **(metadata or {})}
  (pathlib.Path(directory) / META_FILE).write_text(json.dumps(meta, indent=2))


def _batches(source, lo: int, hi: int, batch_size: int, num_threads: int):
  """Yields (first index, batch) of records [lo, hi) in order, decoded by `num_threads` threads."""
  ds = grain.MapDataset.source(source)[lo:hi].batch(batch_size)
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=2 * num_threads))
  for k, batch in enumerate(it):
    yield lo + k * batch_size, batch


def write_latents(source, encode_fn: EncodeFn, directory: str | os.PathLike, *, key: jax.Array,
                  batch_size: int = 64, records_per_shard: int = 100_000, num_threads: int = 8,
                  metadata: dict[str, Any] | None = None) -> pathlib.Path:
  """Every shard of `write_shards` (one process) and meta.json. Returns the folder."""
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  write_shards(source, encode_fn, directory, range(num_shards(len(source), records_per_shard)), key=key,
               batch_size=batch_size, records_per_shard=records_per_shard, num_threads=num_threads)
  latent_shape = LatentSource.read_record(shard_path(directory, 0), 0)["x"].shape[1:]
  write_meta(directory, source, records_per_shard, latent_shape, metadata)
  return directory
