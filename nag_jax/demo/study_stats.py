"""The study's statistics: 95% Student-t and Welch intervals, and the noise-shift summary per level."""
from __future__ import annotations

import numpy as np
import scipy.stats

from nag_jax.evaluation import noise_shift as ns


def t_interval(values) -> tuple[float, float]:
  """(mean, half-width of the two-sided 95% Student-t interval); half-width 0 for a single value."""
  v = np.asarray(values, np.float64)
  if v.size < 2:
    return float(v.mean()), 0.0
  return float(v.mean()), float(scipy.stats.t.ppf(0.975, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size))


def welch_interval(a, b) -> tuple[float, float]:
  """(mean(a) - mean(b), half-width of its 95% Welch interval) for independent samples."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
  dof = (va + vb) ** 2 / (va ** 2 / (a.size - 1) + vb ** 2 / (b.size - 1))
  return float(a.mean() - b.mean()), float(scipy.stats.t.ppf(0.975, dof) * np.sqrt(va + vb))


def shift_summary(levels: np.ndarray, est: dict[str, np.ndarray], t_values, n_boot: int, w: float,
                  losses: list) -> dict:
  """Per level: g_phi's forward bias, each setting's shift vs forward (Welch) and NAG's paired reduction."""
  fwd, none, nag = (np.asarray(est[k], np.float64) for k in (ns.FORWARD, "none", "nag"))
  per = {"level": levels.tolist(), "bias": [], "none": [], "nag": [], "reduction": []}
  for k, level in enumerate(levels):
    per["bias"].append(t_interval(fwd[k] - level))
    per["none"].append(welch_interval(none[k], fwd[k]))
    per["nag"].append(welch_interval(nag[k], fwd[k]))
    # same noise for both samplers: NAG's reduction of the shift is a paired difference per sample
    per["reduction"].append(t_interval(none[k] - nag[k]))
  rng = np.random.default_rng(0)
  kde = []
  for t, k in zip(t_values, ns.nearest_steps(levels, t_values)):
    here = np.concatenate([fwd[k], none[k], nag[k]])
    pad = 0.1 * max(np.ptp(here), 1e-3)
    grid = np.linspace(here.min() - pad, here.max() + pad, 160)
    row = {"t": float(t), "level": float(levels[k]), "grid": grid.tolist()}
    for name, v in ((ns.FORWARD, fwd[k]), ("none", none[k]), ("nag", nag[k])):
      boots = np.stack([ns.kde_density(v[rng.integers(0, v.size, v.size)], grid) for _ in range(n_boot)])
      row[name] = {"density": ns.kde_density(v, grid).tolist(), "lo": np.percentile(boots, 2.5, 0).tolist(),
                   "hi": np.percentile(boots, 97.5, 0).tolist()}
    kde.append(row)
  return {"num_samples": int(fwd.shape[1]), "nag_scale": w, "per_level": per, "kde": kde, "gphi_losses": losses}
