"""Improved precision and recall (Kynkäänniemi et al. 2019) on k-NN manifolds, as ADM's evaluator.

Each set's manifold is the union of balls around its points with radius the distance to the k-th
nearest other point (k = 3). Precision: fraction of samples inside the reference manifold; recall:
fraction of reference points inside the sample manifold. Distances are squared Euclidean in float32
with HIGHEST matmul precision (ADM computes them in float16 when finite), in row blocks on device.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from nag_jax import checks
from nag_jax.errors import UserError


def _sq_dists(a: jax.Array, b: jax.Array) -> jax.Array:
  """Squared Euclidean distances between rows of a and rows of b, clamped at 0 like ADM."""
  ab = jnp.dot(a, b.T, precision=jax.lax.Precision.HIGHEST)
  d = jnp.sum(a * a, axis=1)[:, None] - 2.0 * ab + jnp.sum(b * b, axis=1)[None, :]
  return jnp.maximum(d, 0.0)


@functools.partial(jax.jit, static_argnames="k")
def _kth_dist(rows: jax.Array, points: jax.Array, k: int) -> jax.Array:
  # Index k of the sorted distances skips the row itself (distance 0) when rows are in points.
  return -jax.lax.top_k(-_sq_dists(rows, points), k + 1)[0][:, k]


@jax.jit
def _covered(rows: jax.Array, points: jax.Array, radii: jax.Array) -> jax.Array:
  return jnp.any(_sq_dists(rows, points) <= radii[None, :], axis=1)


def _blocked(fn, rows: np.ndarray, block_size: int, *args) -> np.ndarray:
  """Applies fn to fixed-size row blocks (last one zero-padded, so one compilation)."""
  out = []
  for start in range(0, len(rows), block_size):
    block = rows[start:start + block_size]
    n = len(block)
    if n < block_size and len(rows) > block_size:
      block = np.concatenate([block, np.zeros((block_size - n,) + block.shape[1:], block.dtype)])
    out.append(np.asarray(fn(block, *args))[:n])
  return np.concatenate(out)


def _as_features(x: np.ndarray, name: str, k: int) -> np.ndarray:
  checks.check_positive("k (nearest neighbours)", k)
  x = np.asarray(x, dtype=np.float32)
  if x.ndim != 2 or len(x) <= k:
    raise UserError(f"{name} features must be (N, D) with N > k = {k}, got shape {x.shape}")
  bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
  if bad.size:
    raise UserError(f"{name} features hold NaN or inf in {bad.size} rows (first: {bad[0]}); every distance to "
                    "them would be NaN")
  return x


def manifold_radii(features: np.ndarray, k: int = 3, block_size: int = 1000) -> np.ndarray:
  """Squared distance from each point to its k-th nearest other point in the same set."""
  f = _as_features(features, "manifold", k)
  checks.check_positive("block_size", block_size)
  return _blocked(functools.partial(_kth_dist, k=k), f, block_size, jnp.asarray(f))


def precision_recall(reference: np.ndarray, samples: np.ndarray, k: int = 3, block_size: int = 1000,
                     reference_radii: np.ndarray | None = None) -> tuple[float, float]:
  """(precision, recall) of `samples` against `reference`, both (N, D) feature arrays.

  `reference_radii` (`manifold_radii(reference, k)`) saves recomputing them when one reference is reused.
  """
  checks.check_positive("block_size", block_size)
  ref = _as_features(reference, "reference", k)
  smp = _as_features(samples, "sample", k)
  if ref.shape[1] != smp.shape[1]:
    raise UserError(f"feature dimensions differ: reference {ref.shape[1]}, samples {smp.shape[1]}")
  ref_radii = (manifold_radii(ref, k, block_size) if reference_radii is None
               else np.asarray(reference_radii, np.float32))
  smp_radii = manifold_radii(smp, k, block_size)
  precision = _blocked(_covered, smp, block_size, jnp.asarray(ref), jnp.asarray(ref_radii))
  recall = _blocked(_covered, ref, block_size, jnp.asarray(smp), jnp.asarray(smp_radii))
  return float(precision.mean()), float(recall.mean())
