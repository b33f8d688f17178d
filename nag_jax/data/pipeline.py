"""The training input pipeline: a grain DataLoader with seeded order, per-process rows and flips.

Batches are `{"x": float32 NHWC, "y": int32}`. Global batch b is a function of the seed and b alone: the
records at positions [b·G, (b+1)·G) of one seeded stream (epochs reshuffled, flips drawn per position), and
each process reads only its rows of it (`ProcessRows`). So the training data do not depend on the number of
processes or devices, and a run resumes at any step by starting the stream there: the iterator needs no
checkpoint of its own. Workers (`worker_count > 0`) are separate processes, which grain starts only after
absl flags are parsed (`absl.app.run`, or `flags.FLAGS(argv)`).
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


class ProcessRows:
  """A grain sampler: one process's rows of every global batch of an unsharded seeded stream.

  `base[k]` is the k-th record of the stream (key, and the random generator of its flip). Global batch b is
  base[b·G : (b+1)·G]; a process holding rows [r0, r1) of it reads base[b·G + r0 + i] as its i-th row, from
  batch `start_batch` on. Records and flips are therefore the same whatever the rows are split into.
  """

  def __init__(self, base: grain.samplers.IndexSampler, global_batch: int, rows: slice, start_batch: int = 0):
    self._base, self._global, self._rows, self._start = base, global_batch, rows, start_batch
    self._per = rows.stop - rows.start
    self._batches = len(base) // global_batch - start_batch

  def __len__(self) -> int:
    return max(0, self._batches) * self._per

  def __getitem__(self, index: int):
    batch, row = divmod(index, self._per)
    if index < 0 or batch >= self._batches:
      raise IndexError(f"index {index} is past the {self._batches} remaining global batches")
    return self._base[(self._start + batch) * self._global + self._rows.start + row]

  def __repr__(self) -> str:
    return (f"ProcessRows({self._base!r}, global_batch={self._global}, rows={self._rows.start}:{self._rows.stop}, "
            f"start_batch={self._start})")


def make_train_iterator(source, *, global_batch_size: int, seed: int, shuffle: bool = True,
                        num_epochs: int | None = None, flip: bool = True, worker_count: int = 0,
                        rows: slice | None = None, start_batch: int = 0,
                        read_options: grain.ReadOptions | None = None
                        ) -> grain.DataLoaderIterator:
  """Returns an iterator of this process's `rows` (default: all) of each global batch, from `start_batch` on.

  The records, their order and the flips are a function of `seed` and the position in the stream only
  (`ProcessRows`): one seeded shuffle of all records per epoch, so the global batch is the same for any
  number of processes. `num_epochs=None` repeats forever; a finite run stops after the last complete
  global batch. `read_options` sets the threads that read (and decode) records in this process; by
  default an ArraySource is read in-thread (IN_THREAD) and other sources by grain's default (16 threads,
  500 records ahead). Threads change the speed only, never the batches.
  """
  rows = slice(0, global_batch_size) if rows is None else rows
  if not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
    raise UserError(f"seed must be an integer in [0, 2**32), got {seed!r}")
  if num_epochs is not None and num_epochs <= 0:
    raise UserError(f"num_epochs must be positive or None, got {num_epochs}")
  if worker_count < 0:
    raise UserError(f"worker_count must be >= 0, got {worker_count}")
  if not isinstance(global_batch_size, (int, np.integer)) or global_batch_size <= 0:
    raise UserError(f"global_batch_size must be a positive integer, got {global_batch_size!r}")
  if not 0 <= rows.start < rows.stop <= global_batch_size:
    raise UserError(f"rows {rows.start}:{rows.stop} are not rows of a global batch of {global_batch_size}")
  if start_batch < 0:
    raise UserError(f"start_batch must be >= 0, got {start_batch}")
  if len(source) < global_batch_size:
    raise UserError(f"the data hold {len(source)} records, fewer than one global batch of {global_batch_size}")
  # One unsharded stream (shard 0 of 1, as a single process has always read it): see ProcessRows.
  base = grain.samplers.IndexSampler(
      num_records=len(source), shard_options=grain.sharding.ShardOptions(0, 1, drop_remainder=True),
      shuffle=shuffle, num_epochs=num_epochs, seed=int(seed))
  sampler = ProcessRows(base, int(global_batch_size), rows, int(start_batch))
  if read_options is None and isinstance(source, ArraySource):
    read_options = IN_THREAD
  operations = record_transforms(getattr(source, "kind", "image"), flip)
  operations.append(grain.transforms.Batch(batch_size=rows.stop - rows.start, drop_remainder=True))
  loader = grain.DataLoader(data_source=source, sampler=sampler, operations=operations,
                            worker_count=worker_count, shard_options=grain.sharding.NoSharding(),
                            read_options=read_options)
  return iter(loader)


def steps_per_epoch(num_records: int, global_batch_size: int) -> int:
  """Number of global batches in one pass over the records (whatever the number of processes)."""
  return num_records // global_batch_size
