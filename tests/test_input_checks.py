"""Library-boundary input checks: class labels, finite guidance, covariance matrices, positive counts."""
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from nag_jax import checks, data, process, sharding
from nag_jax.errors import UserError
from nag_jax.evaluation import fid, noise_shift as ns, precision_recall as pr
from nag_jax.evaluation.features import extract_features
from nag_jax.evaluation.sample_io import open_images, open_reference
from nag_jax.guidance import GuidanceConfig
from nag_jax.models import DiT, ModelConfig
from nag_jax.models.dit import dummy_inputs
from nag_jax.models.vae_io import decode_in_batches
from nag_jax.models.noise_estimator import NoiseEstimator, estimator_inputs
from nag_jax.sampling.pipeline import SamplerConfig, build_sampler

TINY = ModelConfig(input_size=4, patch_size=2, hidden_size=16, depth=1, num_heads=2, num_classes=10)
SAMPLER = SamplerConfig(method="ddim", num_steps=2)


@pytest.fixture(scope="module")
def params():
  return jax.jit(DiT(TINY).init)(jax.random.key(0), *dummy_inputs(TINY))["params"]  # eager init is 3x slower


@pytest.fixture(scope="module")
def sampler():
  return build_sampler(TINY, SAMPLER, GuidanceConfig(cfg_scale=2.0))


BAD_LABELS = [
    (np.array([3, 5000]), "labels must be class ids in [0, 10), got [5000]"),
    (np.array([10, 2]), "got [10]"),  # the null class is internal
    (np.array([-1, 0, -11]), "got [-11, -1]"),
    (np.array([1.0, 2.0], np.float32), "labels must be integer class ids, got dtype float32"),
    (np.array([True, False]), "got dtype bool"),
    (np.zeros((2, 2), np.int32), "non-empty 1-D array of class ids, got shape (2, 2)"),
    (np.zeros(0, np.int32), "got shape (0,)"),
]


@pytest.mark.parametrize("labels,needle", BAD_LABELS)
@pytest.mark.parametrize("as_jax", [False, True])
def test_sampler_refuses_bad_concrete_labels(params, sampler, labels, needle, as_jax):
  """Host arrays and committed device arrays are refused with one sentence, compiled or not."""
  labels = jax.device_put(labels) if as_jax else labels
  unjitted = build_sampler(TINY, SAMPLER, GuidanceConfig(cfg_scale=2.0), jit=False)
  mesh = sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])
  sharded = sharding.shard_sampler(unjitted, mesh, sharding.logical_shardings(params, mesh))
  for fn in (sampler, unjitted, sharded):
    with pytest.raises(UserError) as e:
      fn(params, jax.random.key(0), labels)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_check_labels_agrees_with_numpy():
  """Seeded random label arrays: refused exactly when numpy finds a value outside [0, n), naming them."""
  rng = np.random.default_rng(0)
  for _ in range(200):
    n = int(rng.integers(1, 20))
    y = rng.integers(-3, n + 3, size=int(rng.integers(1, 8)))
    bad = np.unique(y[(y < 0) | (y >= n)])
    if bad.size:
      with pytest.raises(UserError, match=f"in \\[0, {n}\\), got {re_list(bad[:5].tolist())}"):
        checks.check_labels(y, n)
    else:
      checks.check_labels(y, n)


def re_list(values):
  return "\\[" + ", ".join(str(v) for v in values) + "\\]"


def test_traced_labels_give_nan_rows_not_other_classes(params):
  """Under an outer jit the values are unknown: bad rows come out NaN, the good rows as with valid labels."""
  fn = build_sampler(TINY, SAMPLER, GuidanceConfig(cfg_scale=2.0), jit=False, return_trajectory=True)
  outer = jax.jit(lambda p, y: fn(p, jax.random.key(1), y))
  out = outer(params, jnp.asarray([3, -1, 10, 5000, 5]))
  ref = outer(params, jnp.asarray([3, 0, 0, 0, 5]))
  good = np.array([True, False, False, False, True])
  lat, traj = np.asarray(out["latents"]), np.asarray(out["trajectory"])
  assert np.isnan(lat[~good]).all() and np.isnan(traj[:, ~good]).all()
  np.testing.assert_array_equal(lat[good], np.asarray(ref["latents"])[good])
  assert np.isfinite(lat[good]).all()
  with pytest.raises(UserError, match="integer class ids"):  # the dtype is known even when traced
    outer(params, jnp.asarray([1.0, 2.0]))


def test_training_data_and_estimator_labels_are_checked():
  x = np.zeros((3, 4, 4, 1), np.float32)
  with pytest.raises(UserError, match=r"y must be class ids in \[0, 3\), got \[7\]"):
    data.ArraySource(x, np.array([0, 1, 7]), num_classes=3)
  with pytest.raises(UserError, match=r"got \[-1\]"):
    data.ArraySource(x, np.array([0, 1, -1]))
  with pytest.raises(UserError, match="integer class ids, got dtype float64"):
    data.ArraySource(x, np.array([0.0, 1.5, 2.0]))
  assert data.ArraySource(x, np.array([0, 2, 1])).num_classes == 3
  est = NoiseEstimator(TINY.replace(family="sit"), pseudo_level=1.001)
  est_params = jax.jit(est.init)(jax.random.key(0), *estimator_inputs(est))["params"]
  level_fn = ns.make_level_fn(est, process.create("sit"))
  states = jnp.zeros((2, 2, 4, 4, 4))
  assert np.isfinite(np.asarray(level_fn(est_params, states, np.array([0, 9])))).all()
  with pytest.raises(UserError, match=r"estimator labels y must be class ids in \[0, 10\), got \[10\]"):
    level_fn(est_params, states, np.array([0, 10]))


FLOAT_FIELDS = [f.name for f in dataclasses.fields(GuidanceConfig) if "float" in str(f.type)]


@pytest.mark.parametrize("name", FLOAT_FIELDS)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_every_float_guidance_field_must_be_finite(name, bad):
  default = getattr(GuidanceConfig(), name)
  value = (default[0], bad) if isinstance(default, tuple) else bad
  with pytest.raises(UserError) as e:
    GuidanceConfig(**{name: value})
  msg = str(e.value)
  assert msg.startswith(f"invalid guidance: {name} must ") and "finite" in msg and "\n" not in msg


def test_float_fields_cover_scales_levels_and_intervals():
  assert {"cfg_scale", "nag_scale", "dog_scale", "pseudo_level", "nag_interval", "classifier_nag_sigma"} <= set(
      FLOAT_FIELDS)


def scipy_fid(mu1, s1, mu2, s2):
  """The textbook formula (pytorch-fid / ADM): scipy's sqrtm of the product, real part."""
  covmean = scipy.linalg.sqrtm(s1 @ s2)
  return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real)


@pytest.fixture(scope="module")
def stats():
  rng = np.random.default_rng(1)
  a = rng.standard_normal((400, 24)) @ rng.standard_normal((24, 24))
  b = rng.standard_normal((300, 24)) @ rng.standard_normal((24, 24)) + 0.3
  return fid.compute_statistics(a) + fid.compute_statistics(b)


def test_valid_statistics_match_scipy(stats):
  mu1, s1, mu2, s2 = stats
  assert fid.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(scipy_fid(mu1, s1, mu2, s2), rel=1e-8)
  # Singular float32-stored covariances (fewer samples than dimensions) are still covariances.
  few = np.random.default_rng(2).standard_normal((10, 24))
  mu3, s3 = few.mean(0), np.cov(few, rowvar=False).astype(np.float32)
  assert scipy.linalg.eigvalsh(s3.astype(np.float64)).min() < 0  # rounding makes it slightly indefinite
  assert fid.frechet_distance(mu1, s1, mu3, s3) > 0


def test_non_psd_sigma_is_refused_where_scipy_gives_a_negative_fid(stats):
  mu1, s1, mu2, s2 = stats
  w, v = scipy.linalg.eigh(s2)
  w[:6] = -w[-6:]  # flip six eigenvalues negative: symmetric, not a covariance
  bad = (v * w) @ v.T
  assert scipy_fid(mu2, s2, mu2, bad) < 0 or np.iscomplexobj(scipy.linalg.sqrtm(s2 @ bad))
  with pytest.raises(UserError, match="sigma2 is not positive semi-definite"):
    fid.frechet_distance(mu2, s2, mu2, bad)
  skew = s1.copy()
  skew[0, 1] += 0.5 * np.abs(s1).max()
  with pytest.raises(UserError, match="sigma1 is not symmetric"):
    fid.frechet_distance(mu1, skew, mu2, s2)
  nan = s2.copy()
  nan[3, 3] = np.nan
  with pytest.raises(UserError, match="sigma2 holds NaN or inf"):
    fid.frechet_distance(mu1, s1, mu2, nan)
  with pytest.raises(UserError, match="mu1 holds NaN or inf"):
    fid.frechet_distance(np.full_like(mu1, np.inf), s1, mu2, s2)


def test_reference_file_with_non_psd_sigma_names_the_file(stats, tmp_path):
  mu1, s1, _, _ = stats
  np.savez(tmp_path / "ref.npz", mu=mu1, sigma=s1 - 2 * np.eye(len(s1)) * scipy.linalg.eigvalsh(s1).max())
  with pytest.raises(UserError, match=r"ref.npz': 'sigma' is not positive semi-definite"):
    open_reference(tmp_path / "ref.npz")


def test_nonfinite_features_and_bad_counts_are_refused():
  feats = np.random.default_rng(3).standard_normal((20, 4)).astype(np.float32)
  nan_feats = feats.copy()
  nan_feats[7, 1] = np.nan
  with pytest.raises(UserError, match=r"features of 1 of 20 samples hold NaN or inf \(first: row 7\)"):
    fid.compute_statistics(nan_feats)
  with pytest.raises(UserError, match="sample features hold NaN or inf in 1 rows"):
    pr.precision_recall(feats, nan_feats)
  for call, needle in [(lambda: pr.precision_recall(feats, feats, k=0), "k (nearest neighbours) must be"),
                       (lambda: pr.precision_recall(feats, feats, block_size=0), "block_size must be"),
                       (lambda: pr.manifold_radii(feats, block_size=-1), "block_size must be"),
                       (lambda: fid.inception_score(feats, split_size=0), "split_size must be"),
                       (lambda: extract_features(lambda p, b: b, None, np.zeros((4, 2, 2, 3), np.uint8), 0,
                                                 progress=False), "batch_size must be"),
                       (lambda: ns.analyze(np.array([0.5, 0.4]), {"forward": np.ones((2, 3))}, [0.5], kde_points=0),
                        "kde_points must be")]:
    with pytest.raises(UserError, match="whole number >= 1") as e:
      call()
    assert needle in str(e.value)


def test_sampler_floats_and_decode_and_reader_batches_are_checked(tmp_path):
  """NaN settings of the sampler (eta, tolerances, step sizes) and zero batch sizes stop with one sentence."""
  for name in [f.name for f in dataclasses.fields(SamplerConfig) if "float" in str(f.type)]:
    with pytest.raises(UserError, match=f"invalid sampler: {name} must be a finite number, got nan"):
      SamplerConfig(**{name: math.nan}).validate("dit")
  with pytest.raises(UserError, match="batch_size must be a whole number >= 1, got 0"):
    decode_in_batches(None, None, np.zeros((2, 4, 4, 4), np.float32), batch_size=0)
  np.savez(tmp_path / "s.npz", arr_0=np.zeros((3, 2, 2, 3), np.uint8))
  with pytest.raises(UserError, match="batch_size must be a whole number >= 1, got 0"):
    next(open_images(tmp_path / "s.npz").batches(0))
