"""Fréchet distance and Inception Score on feature arrays (any feature space), in float64 numpy.

The trace term uses the symmetric form tr sqrt(S1 S2) = tr sqrt(S1^1/2 S2 S1^1/2): two symmetric
eigendecompositions with eigenvalues clipped at 0, so singular or near-singular covariances (fewer
samples than dimensions) need no jitter and give no complex parts, unlike `sqrtm(S1 @ S2)`.
"""
import warnings

import numpy as np

from nag_jax import checks
from nag_jax.errors import UserError

# Relative tolerances of `check_covariance`. `np.cov` of 2048-D features stored as float32 stays exactly
# symmetric, and when singular (N < D) its smallest eigenvalue is -9e-9 of the largest (measured); these
# leave 1000x room for covariances accumulated in float32. Past them a matrix is no covariance and its
# FID can come out negative.
SYMMETRY_TOL = 1e-5
PSD_TOL = 1e-5


def compute_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean and covariance (float64, unbiased as `np.cov`) of (N, D) features; warns when N < D."""
  f = np.asarray(features, dtype=np.float64)
  if f.ndim != 2 or f.shape[0] < 2:
    raise UserError(f"features must be (N, D) with N >= 2, got shape {f.shape}")
  bad_rows = np.flatnonzero(~np.isfinite(f).all(axis=1))
  if bad_rows.size:
    raise UserError(f"features of {bad_rows.size} of {f.shape[0]} samples hold NaN or inf (first: row "
                    f"{bad_rows[0]}); NaN samples cannot enter a FID")
  n, d = f.shape
  if n < d:
    warnings.warn(
        f"FID from {n} samples < feature dimension {d}: the covariance is singular and the "
        f"Fréchet distance is biased upwards; use at least {d} (ADM uses 50,000) for reported "
        "numbers",
        UserWarning, stacklevel=2)
  return f.mean(axis=0), np.cov(f, rowvar=False)


def check_covariance(sigma: np.ndarray, name: str) -> None:
  """Raises UserError unless sigma is a finite, symmetric, positive semi-definite (D, D) matrix.

  Eigenvalues down to -PSD_TOL times the largest are rounding (clipped to 0 by the trace term).
  """
  sigma = np.asarray(sigma, np.float64)
  if sigma.ndim != 2 or sigma.shape[0] != sigma.shape[1]:
    raise UserError(f"{name} must be a square (D, D) covariance matrix, got shape {sigma.shape}")
  if not np.isfinite(sigma).all():
    raise UserError(f"{name} holds NaN or inf, so it is not a covariance matrix")
  scale = float(np.abs(sigma).max()) if sigma.size else 0.0
  asym = float(np.abs(sigma - sigma.T).max()) if sigma.size else 0.0
  if asym > SYMMETRY_TOL * scale:
    raise UserError(f"{name} is not symmetric (|S - S^T| reaches {asym:.3g}, {asym / scale:.2g} of its largest "
                    "entry), so it is not a covariance matrix")
  w = np.linalg.eigvalsh((sigma + sigma.T) / 2) if sigma.size else np.zeros(1)
  if w.min() < -PSD_TOL * max(w.max(), 0.0):
    raise UserError(f"{name} is not positive semi-definite (smallest eigenvalue {w.min():.3g}, largest "
                    f"{w.max():.3g}), so it is not a covariance matrix and its FID would be meaningless")


def _sqrt_psd(s: np.ndarray) -> np.ndarray:
  """Symmetric square root of a symmetric PSD matrix (negative rounding errors clipped to 0)."""
  w, v = np.linalg.eigh(s)
  return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
  """tr sqrt(sigma1 @ sigma2) for covariance matrices, via the symmetric form."""
  root = _sqrt_psd(sigma1)
  m = root @ sigma2 @ root
  ev = np.linalg.eigvalsh((m + m.T) / 2)
  return float(np.sqrt(np.clip(ev, 0.0, None)).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray,
                     mu2: np.ndarray, sigma2: np.ndarray) -> float:
  """||mu1 - mu2||^2 + tr(S1 + S2 - 2 sqrt(S1 S2)) between two Gaussians (FID on Inception)."""
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
  d = mu1.shape[-1] if mu1.ndim else 0
  for name, shape, want in (("mu1", mu1.shape, (d,)), ("mu2", mu2.shape, (d,)),
                            ("sigma1", sigma1.shape, (d, d)), ("sigma2", sigma2.shape, (d, d))):
    if shape != want:
      raise UserError(f"statistics do not match: {name} has shape {shape}, expected {want}")
  for name, mu in (("mu1", mu1), ("mu2", mu2)):
    if not np.isfinite(mu).all():
      raise UserError(f"{name} holds NaN or inf, so it is not a mean of features")
  check_covariance(sigma1, "sigma1")
  check_covariance(sigma2, "sigma2")
  sigma1, sigma2 = (sigma1 + sigma1.T) / 2, (sigma2 + sigma2.T) / 2
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2)
               - 2.0 * trace_sqrt_product(sigma1, sigma2))


def inception_score(logits: np.ndarray, split_size: int = 5000) -> float:
  """exp E_x KL(p(y|x) || p(y)) from (N, K) logits, averaged over consecutive splits (ADM: 5000)."""
  checks.check_positive("split_size", split_size)
  z = np.asarray(logits, dtype=np.float64)
  if z.ndim != 2 or z.shape[0] < 1:
    raise UserError(f"logits must be (N, K) with N >= 1, got shape {z.shape}")
  z = z - z.max(axis=1, keepdims=True)
  log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
  scores = []
  for start in range(0, len(log_p), split_size):
    part = log_p[start:start + split_size]
    top = part.max(axis=0)
    log_py = top + np.log(np.exp(part - top).mean(axis=0))
    kl = np.sum(np.exp(part) * (part - log_py), axis=1).mean()
    scores.append(np.exp(kl))
  return float(np.mean(scores))
