"""FID, Inception Score, precision/recall and batched extraction against independent references:
scipy float64 `sqrtm`, closed forms, a direct numpy k-NN and direct numpy formulas."""
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import scipy.linalg

from nag_jax.evaluation import fid, precision_recall
from nag_jax.evaluation.features import extract_features


def _scipy_fid(mu1, sigma1, mu2, sigma2):
  """The usual float64 formula (pytorch-fid/ADM): real part of scipy's general sqrtm."""
  covmean = scipy.linalg.sqrtm(sigma1 @ sigma2).real
  diff = mu1 - mu2
  return diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean)


def _stats(features):
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)
    return fid.compute_statistics(features)


# (dimension, samples per set): well-conditioned, and rank-deficient (near-singular) covariances.
@pytest.mark.parametrize("d,n", [(64, 500), (64, 20), (256, 40), (64, 63)])
def test_frechet_distance_matches_scipy(d, n):
  rng = np.random.default_rng(d + n)
  f1 = rng.standard_normal((n, d))
  f2 = 0.3 * rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) + 0.5
  mu1, s1 = _stats(f1)
  mu2, s2 = _stats(f2)
  want = _scipy_fid(mu1, s1, mu2, s2)
  got = fid.frechet_distance(mu1, s1, mu2, s2)
  assert abs(got - want) <= 1e-6 * abs(want)


def test_frechet_distance_singular_closed_form():
  # Commuting covariances Q diag(a) Q^T, Q diag(b) Q^T: tr sqrt(S1 S2) = sum sqrt(a b) exactly.
  rng = np.random.default_rng(0)
  d = 64
  q, _ = np.linalg.qr(rng.standard_normal((d, d)))
  a, b = rng.uniform(0, 2, d), rng.uniform(0, 2, d)
  a[:20], b[10:30] = 0.0, 1e-14
  mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
  want = (mu1 - mu2) @ (mu1 - mu2) + a.sum() + b.sum() - 2 * np.sqrt(a * b).sum()
  got = fid.frechet_distance(mu1, (q * a) @ q.T, mu2, (q * b) @ q.T)
  assert abs(got - want) <= 1e-6 * want
  assert fid.frechet_distance(mu1, (q * a) @ q.T, mu1, (q * a) @ q.T) == pytest.approx(0, abs=1e-6)


def test_statistics_and_bad_input():
  f = np.random.default_rng(0).standard_normal((10, 4)).astype(np.float32)
  mu, sigma = fid.compute_statistics(f)
  np.testing.assert_allclose(mu, f.astype(np.float64).mean(0), rtol=1e-12)
  np.testing.assert_allclose(sigma, np.cov(f.astype(np.float64).T), rtol=1e-12)
  with pytest.warns(UserWarning, match="FID from 3 samples < feature dimension 4"):
    fid.compute_statistics(f[:3])
  with pytest.raises(ValueError, match="N >= 2"):
    fid.compute_statistics(f[:1])
  with pytest.raises(ValueError, match="sigma2 has shape"):
    fid.frechet_distance(mu, sigma, mu, sigma[:3, :3])


def test_inception_score_matches_direct_formula():
  logits = 3 * np.random.default_rng(0).standard_normal((25, 10))
  p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  scores = []
  for i in range(0, 25, 10):  # ADM's loop: splits of split_size, mean of exp(mean KL)
    part = p[i:i + 10]
    kl = part * (np.log(part) - np.log(part.mean(0, keepdims=True)))
    scores.append(np.exp(kl.sum(1).mean()))
  assert fid.inception_score(logits, split_size=10) == pytest.approx(np.mean(scores), rel=1e-12)
  assert fid.inception_score(np.zeros((7, 5))) == pytest.approx(1.0)  # uniform predictions


def _knn_radii(x):
  d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
  np.fill_diagonal(d, np.inf)
  return np.sort(d, axis=1)[:, 2]  # 3rd nearest other point


def _numpy_precision_recall(ref, smp):
  ref, smp = ref.astype(np.float64), smp.astype(np.float64)
  d = ((smp[:, None, :] - ref[None, :, :]) ** 2).sum(-1)  # (samples, reference)
  precision = (d <= _knn_radii(ref)[None, :]).any(1).mean()
  recall = (d.T <= _knn_radii(smp)[None, :]).any(1).mean()
  return precision, recall


@pytest.mark.parametrize("block_size", [1000, 16])
def test_precision_recall_matches_numpy_knn(block_size):
  rng = np.random.default_rng(0)
  ref = rng.standard_normal((60, 8)).astype(np.float32)
  smp = (1.3 * rng.standard_normal((45, 8)) + 0.4).astype(np.float32)
  np.testing.assert_allclose(precision_recall.manifold_radii(ref, block_size=block_size),
                             _knn_radii(ref.astype(np.float64)), rtol=1e-5)
  got = precision_recall.precision_recall(ref, smp, k=3, block_size=block_size)
  want = _numpy_precision_recall(ref, smp)
  assert 0 < want[0] < 1 and 0 < want[1] < 1
  assert got == pytest.approx(want, abs=1e-12)
  with pytest.raises(ValueError, match="N > k = 3"):
    precision_recall.precision_recall(ref[:3], smp)


def _features_fn(params, images):
  x = images.astype(np.float32).reshape(images.shape[0], -1)
  return {"proj": x @ params, "sum": x.sum(axis=1)}


def test_extract_features_pads_last_batch():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (11, 4, 4, 3), dtype=np.uint8)
  params = rng.standard_normal((48, 5)).astype(np.float32)
  got = extract_features(_features_fn, params, images, batch_size=4, progress=False)
  x = images.reshape(11, -1).astype(np.float64)
  np.testing.assert_allclose(got["proj"], x @ params, rtol=1e-5)
  np.testing.assert_allclose(got["sum"], x.sum(1), rtol=1e-6)


def test_extract_features_sharded_over_four_devices():
  # A fresh process with 4 host devices: the batch really is split along the mesh.
  script = textwrap.dedent("""
    import numpy as np, jax
    from nag_jax.evaluation.features import extract_features
    assert jax.device_count() == 4
    seen = []
    def fn(params, images):
      seen.append(images.shape)
      jax.debug.inspect_array_sharding(images, callback=seen.append)
      return images.astype(np.float32).sum(axis=(1, 2, 3)) * params
    images = np.arange(10 * 2 * 2 * 3, dtype=np.uint8).reshape(10, 2, 2, 3)
    out = extract_features(fn, np.float32(2.0), images, batch_size=6, progress=False)
    np.testing.assert_allclose(out, 2.0 * images.reshape(10, -1).sum(1).astype(np.float32))
    print("ok", seen)
  """)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  assert "ok [(8, 2, 2, 3), NamedSharding(" in result.stdout  # 6 rounded up to 4 devices
  assert "spec=P('batch',)" in result.stdout
