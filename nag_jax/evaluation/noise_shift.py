"""Noise-shift measurement (paper sec. 3, 5.3, app. B.2, D): g_phi's estimated level per prior level.

Every level here is a noise fraction nu in [0, 1], 1 = pure noise (the paper's t, and the samplers'
grids); the model's process maps model times and g_phi's outputs to it (`Process.level_to_time`,
`Process.estimate_to_level`). The shift of a state is estimate - prior;
positive means the state looks noisier than its schedule says (the paper's finding).
Estimates are arrays (S, N): S prior levels (the sampler's steps 1..n-1) by N samples.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats

from nag_jax import checks
from nag_jax.flow.paths import expand_t_like_x
from nag_jax.process import Process
from nag_jax.models.noise_estimator import NoiseEstimator
from nag_jax.errors import UserError

FORWARD = "forward"


def forward_states(process: Process, x0: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
  """(S, B, ...) states a_t x0 + s_t noise of the model's forward process at each of the S times t.

  Every level reuses the same data and noise, so each sample's states form one forward trajectory.
  """
  def one(ti):
    a, s = process.coefficients(jnp.full(x0.shape[:1], ti, jnp.float32))
    return expand_t_like_x(a, x0) * x0 + expand_t_like_x(s, x0) * noise
  return jax.vmap(one)(jnp.asarray(t, jnp.float32))


def make_level_fn(estimator: NoiseEstimator, process: Process,
                  num_classes: int | None = None) -> Callable[[Any, jax.Array, jax.Array], jax.Array]:
  """Jitted fn(params, states (S, B, H, W, C), y (B,)) -> (S, B) estimated noise fractions.

  y must be class ids in [0, num_classes) (default: g_phi's config), checked before the call: JAX would
  clamp them to other classes.
  """
  num_classes = estimator.config.num_classes if num_classes is None else num_classes
  def levels(params, states, y):
    g = jax.lax.map(lambda x: estimator.apply({"params": params}, x, y), states)
    return process.estimate_to_level(g)
  compiled = jax.jit(levels)

  def checked(params, states, y):
    checks.check_labels(y, num_classes, "estimator labels y")
    return compiled(params, states, y)
  return checked


def shift_stats(levels: np.ndarray, estimates: np.ndarray) -> dict[str, np.ndarray]:
  """Per-level mean, std, median of the estimates and the mean shift (mean - prior)."""
  levels, estimates = np.asarray(levels, np.float64), np.asarray(estimates, np.float64)
  if estimates.ndim != 2 or estimates.shape[0] != levels.shape[0]:
    raise UserError(f"estimates must be (levels, samples) = ({levels.shape[0]}, N), got {estimates.shape}")
  mean = estimates.mean(axis=1)
  return {"mean": mean, "std": estimates.std(axis=1), "median": np.median(estimates, axis=1),
          "shift": mean - levels}


def nearest_steps(levels: np.ndarray, t_values: Sequence[float]) -> np.ndarray:
  """Index of the measured level nearest each requested t; t outside [0, 1] or the levels' span is an error."""
  levels = np.asarray(levels, np.float64)
  bad = [t for t in t_values if not (0 <= t <= 1 and levels.min() - 1e-9 <= t <= levels.max() + 1e-9)]
  if bad:
    raise UserError(f"t values {bad} lie outside the measured noise fractions [{levels.min():.4g}, "
                    f"{levels.max():.4g}] (the sampler's steps after the first; 1 = noise)")
  return np.array([int(np.argmin(np.abs(levels - t))) for t in t_values])


def kde_density(samples: np.ndarray, grid: np.ndarray) -> np.ndarray:
  """Gaussian KDE (scipy, Scott's bandwidth) of 1-D `samples` evaluated on `grid`."""
  samples = np.asarray(samples, np.float64)
  if samples.size < 2 or np.ptp(samples) == 0:
    raise UserError(f"a kernel density needs at least 2 distinct estimates, got {samples.size} with "
                    f"range {np.ptp(samples) if samples.size else 0}")
  return scipy.stats.gaussian_kde(samples)(grid)


def analyze(levels: np.ndarray, estimates: dict[str, np.ndarray], t_values: Sequence[float], *,
            kde_points: int = 200) -> dict:
  """The JSON-able report: per-step stats of every setting, the chosen t's and their KDE curves (own grids).

  `estimates` maps a setting name to its (S, N) estimates; FORWARD (real data through the forward
  process) is required and is the reference of `shift_vs_forward` (the paper's Figure 4(b)).
  """
  if FORWARD not in estimates:
    raise UserError(f"estimates need the {FORWARD!r} reference, got {sorted(estimates)}")
  checks.check_positive("kde_points", kde_points)
  levels = np.asarray(levels, np.float64)
  stats = {name: shift_stats(levels, est) for name, est in estimates.items()}
  for s in stats.values():
    s["shift_vs_forward"] = s["mean"] - stats[FORWARD]["mean"]
  selected = []
  for t, k in zip(t_values, nearest_steps(levels, t_values)):
    here = np.concatenate([np.asarray(e)[k] for e in estimates.values()] + [levels[k:k + 1]])
    pad = 0.1 * max(np.ptp(here), 1e-3)
    grid = np.linspace(here.min() - pad, here.max() + pad, kde_points)
    row = {"t": float(t), "level": float(levels[k]), "index": int(k), "grid": grid.tolist()}
    for name, s in stats.items():
      row[name] = {key: float(s[key][k]) for key in ("mean", "std", "median", "shift", "shift_vs_forward")}
      row[name]["density"] = kde_density(np.asarray(estimates[name])[k], grid).tolist()
    selected.append(row)
  per_step = {name: {key: v.tolist() for key, v in s.items()} for name, s in stats.items()}
  mean_shift = {name: float(np.mean(s["shift"])) for name, s in stats.items()}
  return {"levels": levels.tolist(), "settings": list(estimates), "num_samples": int(np.shape(estimates[FORWARD])[1]),
          "per_step": per_step, "mean_shift": mean_shift, "selected": selected}


def csv_rows(report: dict) -> list[dict]:
  """One row per (setting, level): prior, mean, std, median, shift and shift vs the forward estimate."""
  rows = []
  for name in report["settings"]:
    s = report["per_step"][name]
    for k, level in enumerate(report["levels"]):
      rows.append({"setting": name, "step": k + 1, "prior": level,
                   **{key: s[key][k] for key in ("mean", "std", "median", "shift", "shift_vs_forward")}})
  return rows


def table_text(report: dict) -> str:
  """A short fixed-width table: estimate mean +- std (shift) per chosen t and setting, then mean shifts."""
  names = report["settings"]
  head = f"{'t':>6} | " + " | ".join(f"{n:>23}" for n in names)
  lines = [f"estimated noise fraction (1 = noise), mean +- std (shift vs prior); {report['num_samples']} samples",
           head, "-" * len(head)]
  for row in report["selected"]:
    cells = [f"{row[n]['mean']:.3f} +- {row[n]['std']:.3f} ({row[n]['shift']:+.3f})" for n in names]
    lines.append(f"{row['level']:>6.3f} | " + " | ".join(f"{c:>23}" for c in cells))
  lines.append("mean shift over all measured steps: "
               + ", ".join(f"{n} {report['mean_shift'][n]:+.4f}" for n in names))
  return "\n".join(lines) + "\n"
