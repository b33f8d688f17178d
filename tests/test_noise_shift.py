"""Noise-shift statistics: forward states, Statement 1 with an oracle estimator, KDE, report, plots."""
import jax.numpy as jnp
import numpy as np
import pytest

from nag_jax import process
from nag_jax.evaluation import noise_shift as ns
from nag_jax.evaluation.noise_shift_plots import plot_all

ABAR = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
RNG = np.random.default_rng(0)


class StdOracle:
  """A g_phi stand-in for zero data on the Linear path: x = (1 - t) eps, so g = t = 1 - std(x)."""

  def apply(self, variables, x, y):
    del variables, y
    return 1 - jnp.std(x.reshape(x.shape[0], -1), axis=1)


def test_forward_states_are_the_models_forward_process():
  x0 = jnp.asarray(RNG.uniform(-1, 1, (3, 4, 4, 2)), jnp.float32)
  noise = jnp.asarray(RNG.standard_normal(x0.shape), jnp.float32)
  t = np.array([0.0, 250.0, 999.0])
  got = np.asarray(ns.forward_states(process.create("dit"), x0, noise, t))
  for k, tk in enumerate(t.astype(int)):
    want = np.sqrt(ABAR[tk]) * np.asarray(x0) + np.sqrt(1 - ABAR[tk]) * np.asarray(noise)
    np.testing.assert_allclose(got[k], want, rtol=1e-5, atol=1e-6)
  t = np.array([0.0, 0.3, 1.0])
  got = np.asarray(ns.forward_states(process.create("sit"), x0, noise, t))
  for k, tk in enumerate(t):  # SiT Linear: t data + (1 - t) noise
    np.testing.assert_allclose(got[k], tk * np.asarray(x0) + (1 - tk) * np.asarray(noise), rtol=1e-6, atol=1e-6)


def test_statement_1_shift_from_additive_error_with_an_oracle_estimator():
  """Paper eq. 8: extra error of std sigma_e makes sigma_{t+delta}^2 = sigma_t^2 + sigma_e^2 (sigma_nu = nu)."""
  schedule, sigma_e = process.create("sit"), 0.2
  levels = np.array([0.9, 0.7, 0.5, 0.3, 0.1])
  x0 = jnp.zeros((64, 32, 32, 1))
  noise = jnp.asarray(RNG.standard_normal(x0.shape), jnp.float32)
  states = ns.forward_states(schedule, x0, noise, schedule.level_to_time(levels))
  level_fn = ns.make_level_fn(StdOracle(), schedule, num_classes=1)
  y = jnp.zeros(64, jnp.int32)
  clean = np.asarray(level_fn(None, states, y))
  error = sigma_e * jnp.asarray(RNG.standard_normal(states.shape), jnp.float32)
  shifted = np.asarray(level_fn(None, states + error, y))
  np.testing.assert_allclose(ns.shift_stats(levels, clean)["shift"], 0, atol=3e-3)
  delta = np.sqrt(levels ** 2 + sigma_e ** 2) - levels  # Statement 1 for sigma_t = t (paper convention)
  np.testing.assert_allclose(ns.shift_stats(levels, shifted)["shift"], delta, atol=3e-3)
  assert (delta > 0).all()


def test_shift_stats_nearest_steps_and_errors():
  levels = np.array([0.9, 0.6, 0.3])
  est = RNG.uniform(0, 1, (3, 50))
  s = ns.shift_stats(levels, est)
  np.testing.assert_allclose(s["mean"], est.mean(1))
  np.testing.assert_allclose(s["std"], est.std(1))
  np.testing.assert_allclose(s["shift"], est.mean(1) - levels)
  np.testing.assert_array_equal(ns.nearest_steps(levels, [0.3, 0.55, 0.9]), [2, 1, 0])
  with pytest.raises(ValueError, match="outside the measured noise fractions"):
    ns.nearest_steps(levels, [0.95])
  with pytest.raises(ValueError, match="must be \\(levels, samples\\)"):
    ns.shift_stats(levels, est[:2])


def test_kde_is_scotts_gaussian_kernel_sum():
  samples = RNG.normal(0.5, 0.05, 200)
  grid = np.linspace(0.2, 0.8, 31)
  bw = samples.std(ddof=1) * len(samples) ** (-1 / 5)  # Scott's rule in 1-D
  want = np.exp(-0.5 * ((grid[:, None] - samples[None]) / bw) ** 2).sum(1) / (len(samples) * bw * np.sqrt(2 * np.pi))
  np.testing.assert_allclose(ns.kde_density(samples, grid), want, rtol=1e-10)
  with pytest.raises(ValueError, match="at least 2 distinct"):
    ns.kde_density(np.full(10, 0.5), grid)


def test_report_csv_table_and_plots(tmp_path):
  levels = np.array([0.8, 0.5, 0.2])
  fwd = levels[:, None] + RNG.normal(0, 0.01, (3, 40))
  est = {ns.FORWARD: fwd, "none": fwd + 0.05, "nag": fwd + 0.01}
  report = ns.analyze(levels, est, [0.5, 0.2], kde_points=50)
  assert report["settings"] == [ns.FORWARD, "none", "nag"] and report["num_samples"] == 40
  np.testing.assert_allclose(report["per_step"]["none"]["shift_vs_forward"], 0.05, atol=1e-12)
  np.testing.assert_allclose(report["mean_shift"]["nag"], np.mean(fwd.mean(1) + 0.01 - levels))
  row = report["selected"][0]
  assert row["level"] == 0.5 and row["index"] == 1 and len(row["none"]["density"]) == 50
  assert min(row["grid"]) < 0.5 < max(row["grid"])  # the grid covers the prior and every estimate
  assert abs(np.trapezoid(row["none"]["density"], row["grid"]) - 1) < 0.02
  rows = ns.csv_rows(report)
  assert len(rows) == 9 and rows[0]["setting"] == ns.FORWARD and rows[0]["prior"] == 0.8
  text = ns.table_text(report)
  assert f"{row['none']['mean']:.3f}" in text and "mean shift" in text
  for path in plot_all(report, tmp_path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
  with pytest.raises(ValueError, match="need the 'forward' reference"):
    ns.analyze(levels, {"none": fwd}, [0.5])
