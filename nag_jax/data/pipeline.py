"""The training input pipeline: a grain DataLoader with seeded order, per-process shards and flips.

Batches are `{"x": float32 NHWC, "y": int32}`. The iterator is a `grain.DataLoaderIterator`; its
state (`get_state()`/`set_state()`) is saved with the model through Orbax:
`ocp.args.Composite(..., data=grain.checkpoint.CheckpointSave(it))` and restored with
`grain.checkpoint.CheckpointRestore(it)`. Workers (`worker_count > 0`) are separate processes, which
grain starts only after absl flags are parsed (`absl.app.run`, or `flags.FLAGS(argv)`).
"""
from __future__ import annotations

import grain
import numpy as np

from nag_jax.data.sources import ArraySource
from nag_jax.models import vae_io
from nag_jax.errors import UserError

# In-memory records (ArraySource) are read in the calling thread by default. grain's default reader (16
# threads, 500 records ahead) checks its whole buffer on every record: on 2 cores a 64-record batch of the
# 16x16 digits took 106-138 ms with it against 12-15 ms in-thread (`python -m benchmarks.input_pipeline`).
IN_THREAD = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)


class RandomFlip(grain.transforms.RandomMap):
  """Flips an (H, W, C) image left-right with probability 1/2, as torchvision's RandomHorizontalFlip."""

  def random_map(self, element: dict, rng: np.random.Generator) -> dict:
    if rng.random() < 0.5:
      element = {**element, "x": np.ascontiguousarray(element["x"][:, ::-1])}
    return element


class PickStoredFlip(grain.transforms.RandomMap):
  """Picks one of the two stored latents (2, h, w, c) [no flip, flip] with probability 1/2 each."""

  def random_map(self, element: dict, rng: np.random.Generator) -> dict:
    return {**element, "x": element["x"][rng.integers(2)]}


class TakeUnflipped(grain.transforms.Map):
  """Keeps the unflipped latent of a stored pair (training without flips)."""

  def map(self, element: dict) -> dict:
    return {**element, "x": element["x"][0]}


class ToFloat(grain.transforms.Map):
  """Maps uint8 images to float32 in [-1, 1] (ToTensor + Normalize(0.5, 0.5)); floats pass through."""

  def map(self, element: dict) -> dict:
    x = element["x"]
    x = vae_io.uint8_to_pixels(x) if x.dtype == np.uint8 else x.astype(np.float32)
    return {"x": x, "y": np.int32(element["y"])}


def record_transforms(kind: str, flip: bool) -> list[grain.transforms.Transformation]:
  """The per-record transforms for a source `kind` ("image" or "latent")."""
  if kind == "image":
    return [RandomFlip(), ToFloat()] if flip else [ToFloat()]
  if kind == "latent":
    return [PickStoredFlip() if flip else TakeUnflipped(), ToFloat()]
  raise UserError(f"source kind must be 'image' or 'latent', got {kind!r}")


def read_options(threads: int) -> grain.ReadOptions | None:
  """The reader of config `data.read_threads`: -1 automatic (None: see make_train_iterator), 0 in-thread,
  n > 0 n threads reading grain's default number of records ahead."""
  if not isinstance(threads, int) or threads < -1:
    raise UserError(f"read_threads must be an integer >= -1, got {threads!r}")
  if threads < 0:
    return None
  return IN_THREAD if threads == 0 else grain.ReadOptions(num_threads=threads)


def make_train_iterator(source, *, global_batch_size: int, seed: int, shuffle: bool = True,
                        num_epochs: int | None = None, flip: bool = True, worker_count: int = 0,
                        shard_options: grain.sharding.ShardOptions | None = None,
                        read_options: grain.ReadOptions | None = None
                        ) -> grain.DataLoaderIterator:
  """Returns a checkpointable iterator of this process's batches of `global_batch_size / processes`.

  The order and the flips are a function of `seed` (and the position in the stream) only. Each
  process reads a disjoint shard of the records (`shard_options`, default `ShardByJaxProcess`; the
  remainder that would make shards unequal is dropped). As grain's IndexSampler does, a shard is a
  contiguous block of records shuffled within itself, so with class-sorted records each process sees
  a subset of classes and the global batch mixes them. `num_epochs=None` repeats forever; the last
  incomplete batch of a finite run is dropped. `read_options` sets the threads that read (and decode)
  records in this process; by default an ArraySource is read in-thread (IN_THREAD) and other sources by
  grain's default (16 threads, 500 records ahead). Threads change the speed only, never the batches.
  """
  if shard_options is None:
    shard_options = grain.sharding.ShardByJaxProcess(drop_remainder=True)
  if not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
    raise UserError(f"seed must be an integer in [0, 2**32), got {seed!r}")
  if num_epochs is not None and num_epochs <= 0:
    raise UserError(f"num_epochs must be positive or None, got {num_epochs}")
  if worker_count < 0:
    raise UserError(f"worker_count must be >= 0, got {worker_count}")
  processes = shard_options.shard_count
  if global_batch_size <= 0 or global_batch_size % processes:
    raise UserError(f"global_batch_size {global_batch_size} must be a positive multiple of the "
                     f"number of processes ({processes})")
  batch_size = global_batch_size // processes
  if len(source) // processes < batch_size:
    raise UserError(f"each of the {processes} processes gets {len(source) // processes} records, "
                     f"fewer than its batch of {batch_size}")
  sampler = grain.samplers.IndexSampler(
      num_records=len(source), shard_options=shard_options, shuffle=shuffle,
      num_epochs=num_epochs, seed=int(seed))
  if read_options is None and isinstance(source, ArraySource):
    read_options = IN_THREAD
  operations = record_transforms(getattr(source, "kind", "image"), flip)
  operations.append(grain.transforms.Batch(batch_size=batch_size, drop_remainder=True))
  loader = grain.DataLoader(data_source=source, sampler=sampler, operations=operations,
                            worker_count=worker_count, shard_options=shard_options,
                            read_options=read_options)
  return iter(loader)


def steps_per_epoch(num_records: int, global_batch_size: int, process_count: int = 1) -> int:
  """Number of global batches in one pass over the records, as `make_train_iterator` shards them."""
  return (num_records // process_count) // (global_batch_size // process_count)
