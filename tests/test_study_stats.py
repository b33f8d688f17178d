"""The study's intervals and pairing against scipy's own t / Welch intervals and a plain loop."""
import numpy as np
import scipy.stats

from nag_jax.demo.study_cells import best, rows_per_step
from nag_jax.demo.study_stats import t_interval, welch_interval
from nag_jax.demo.study_report import paired
from nag_jax.guidance import GuidanceConfig


def test_t_and_welch_intervals_match_scipy():
  rng = np.random.default_rng(0)
  a, b = rng.normal(1.0, 2.0, 12), rng.normal(0.0, 0.5, 30)
  m, h = t_interval(a)
  lo, hi = scipy.stats.t.interval(0.95, a.size - 1, loc=a.mean(), scale=scipy.stats.sem(a))
  np.testing.assert_allclose([m - h, m + h], [lo, hi], rtol=1e-12)
  d, h = welch_interval(a, b)
  res = scipy.stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
  np.testing.assert_allclose([d - h, d + h], [res.low, res.high], rtol=1e-10)
  assert t_interval([3.0]) == (3.0, 0.0)


def test_paired_matches_runs_not_positions():
  a = {"runs": [[0, 0], [0, 1], [1, 0]], "fd": [5.0, 6.0, 7.0]}
  b = {"runs": [[1, 0], [0, 0]], "fd": [1.0, 2.0]}
  np.testing.assert_array_equal(paired(a, b), [3.0, 6.0])
  np.testing.assert_array_equal(paired(a, b, runs={(1, 0)}), [6.0])


def test_best_picks_on_its_training_seed_only():
  """Another training seed's runs, added later (held-out re-tests), must not move the pick."""
  cells = {"cfg1.25": {"runs": [[0, 0], [0, 1], [1, 0], [1, 1]], "fd": [10.0, 12.0, 30.0, 30.0]},
           "cfg1.5": {"runs": [[0, 0], [0, 1]], "fd": [11.5, 11.0]}}
  assert best(cells, ["cfg1.25", "cfg1.5", "cfg2"], 0) == "cfg1.25"  # 11.0 < 11.25 on seed 0
  assert min(cells, key=lambda n: np.mean(cells[n]["fd"])) == "cfg1.5"  # what every run would pick


def test_rows_per_step_counts_the_batched_branches():
  assert rows_per_step(GuidanceConfig(), False) == 1
  assert rows_per_step(GuidanceConfig(cfg_scale=1.5, nag_scale=1.0), False) == 3
  assert rows_per_step(GuidanceConfig(cfg_scale=1.5, nag_scale=1.0, nag_form="nested"), False) == 4
  assert rows_per_step(GuidanceConfig(cfg_scale=1.5, apg_scale=1.5, cfg_zero_scale=1.5), False) == 2
  assert rows_per_step(GuidanceConfig(autoguidance_scale=2.0), True) == 2
  assert rows_per_step(GuidanceConfig(nag_scale=1.0, nag_interval=(0.0, 0.5)), False) == 2
