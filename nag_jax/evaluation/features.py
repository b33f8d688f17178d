"""Batched feature extraction with any feature function, the batch sharded over all devices.

`fn(params, batch)` runs under `jax.jit` with the batch split along a 1-D ("batch",) mesh and the
params replicated; the last batch is zero-padded to the fixed size (one compilation) and trimmed.
"""
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import jax
import numpy as np
import tqdm
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from nag_jax import checks
from nag_jax.errors import UserError


class ImageSource(Protocol):
  """A sized collection of images read in batches (e.g. `sample_io.NpzImages`)."""

  def __len__(self) -> int: ...

  def batches(self, batch_size: int) -> Iterator[np.ndarray]: ...


def _batches(images: np.ndarray | ImageSource, batch_size: int) -> Iterator[np.ndarray]:
  if isinstance(images, np.ndarray):
    return (images[i:i + batch_size] for i in range(0, len(images), batch_size))
  return images.batches(batch_size)


def extract_features(fn: Callable[[Any, jax.Array], Any], params: Any,
                     images: np.ndarray | ImageSource, batch_size: int = 200, *,
                     progress: bool = True, desc: str = "features") -> Any:
  """Applies `fn(params, batch)` to all images; returns its output pytree as numpy, (N, ...) leaves.

  Every output leaf must have a leading batch axis. `batch_size` is rounded up to a multiple of the
  device count. Host reading of the next batch overlaps device compute of the current one. In a
  multi-process run every process reads each batch, computes its devices' rows, and gets every row back.
  """
  checks.check_positive("batch_size", batch_size)
  n = len(images)
  if n == 0:
    raise UserError("no images to extract features from")
  devices = np.asarray(jax.devices())
  batch_size = -(-batch_size // devices.size) * devices.size
  mesh = Mesh(devices, ("batch",))
  sharded, replicated = NamedSharding(mesh, P("batch")), NamedSharding(mesh, P())
  step = jax.jit(fn, in_shardings=(replicated, sharded), out_shardings=sharded)
  params = jax.device_put(params, replicated)

  outputs, pending = [], None
  with tqdm.tqdm(total=n, desc=desc, unit="img", disable=not progress) as bar:

    def collect(item):
      out, count = item
      if jax.process_count() > 1:
        out = multihost_utils.process_allgather(out, tiled=True)
      outputs.append(jax.tree.map(lambda a: np.asarray(a)[:count], out))
      bar.update(count)

    for batch in _batches(images, batch_size):
      count = len(batch)
      if count < batch_size:
        pad = np.zeros((batch_size - count,) + batch.shape[1:], batch.dtype)
        batch = np.concatenate([batch, pad])
      out = step(params, jax.make_array_from_callback(batch.shape, sharded, lambda index, b=batch: b[index]))
      if pending is not None:
        collect(pending)
      pending = (out, count)
    collect(pending)
  return jax.tree.map(lambda *xs: np.concatenate(xs), *outputs)
