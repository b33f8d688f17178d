"""Classifier-based NAG: its gradient against closed forms and finite differences, score bookkeeping, off = plain."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nag_jax import process
from nag_jax.flow.paths import Path
from nag_jax.guidance import Branched, GuidanceConfig, make_denoise
from nag_jax.guidance.classifier_nag import Estimator, log_likelihood, log_likelihood_grad
from nag_jax.models import DiT, ModelConfig, init_params
from nag_jax.models.noise_estimator import NoiseEstimator, estimator_inputs
from nag_jax.sampling.pipeline import SamplerConfig, build_sampler

CFG = ModelConfig(input_size=8, patch_size=4, hidden_size=16, depth=1, num_heads=2, num_classes=5)
ABAR = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
RNG = np.random.default_rng(0)


def random_like(tree, scale=0.3):
  """Random weights of the shapes of `tree` (the official init zeroes output layers)."""
  return jax.tree.map(lambda l: jnp.asarray(scale * RNG.standard_normal(l.shape), jnp.float32), tree)


@pytest.fixture(scope="module")
def params():
  return random_like(jax.eval_shape(lambda: init_params(CFG, jax.random.key(0))))


def mean_square(p, x, y):
  """A g_phi stand-in with a closed-form gradient: g(x) = p * mean(x^2) (+ 0 * y)."""
  return p * jnp.mean(jnp.square(x), axis=(1, 2, 3)) + 0 * y


def closed_form_grad(x, p, target, sigma):
  """d/dx of -(g - target)^2 / (2 sigma^2) for g = p mean(x^2): -(g - target) / sigma^2 * 2 p x / D."""
  x = np.asarray(x, np.float64)
  d = np.prod(x.shape[1:])
  g = p * np.mean(x ** 2, axis=(1, 2, 3))
  return (-(g - target) / sigma ** 2)[:, None, None, None] * 2 * p * x / d


def test_log_likelihood_gradient_matches_closed_form():
  x = jnp.asarray(RNG.standard_normal((3, 4, 4, 2)), jnp.float32)
  target = jnp.asarray([0.2, 0.9, 1.4])
  got = log_likelihood_grad(Estimator(mean_square, 1.3), x, jnp.zeros(3, jnp.int32), target, 0.05)
  np.testing.assert_allclose(np.asarray(got), closed_form_grad(x, 1.3, np.asarray(target), 0.05), rtol=1e-4)


def test_gradient_of_a_real_estimator_matches_finite_differences():
  cfg = CFG.replace(family="sit", in_channels=2)
  module = NoiseEstimator(cfg, pseudo_level=1.001)
  shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), *estimator_inputs(module)))["params"]
  est = Estimator(lambda p, x, y: module.apply({"params": p}, x, y), random_like(shapes, scale=0.1))
  x = jnp.asarray(RNG.standard_normal((2, 8, 8, 2)), jnp.float32)
  y, target, sigma = jnp.asarray([1, 3]), jnp.asarray([0.3, 0.7]), 0.5
  grad = np.asarray(jax.jit(lambda x: log_likelihood_grad(est, x, y, target, sigma))(x))
  logp = jax.jit(lambda x: log_likelihood(est.apply(est.params, x, y), target, sigma))
  for k in range(3):
    v = jnp.asarray(RNG.standard_normal(x.shape), jnp.float32)
    fd = (np.asarray(logp(x + 3e-3 * v)) - np.asarray(logp(x - 3e-3 * v))) / 6e-3
    np.testing.assert_allclose(fd, (grad * np.asarray(v)).sum(axis=(1, 2, 3)), rtol=5e-3, atol=1e-5)


def test_dit_eps_moves_the_score_by_the_gradient():
  x = jnp.asarray(RNG.standard_normal((3, 4, 4, 2)), jnp.float32)
  out = jnp.asarray(RNG.standard_normal((3, 4, 4, 4)), jnp.float32)  # eps, then variance values
  grad = jnp.asarray(RNG.standard_normal(x.shape), jnp.float32)
  t = np.array([0.0, 250.0, 999.0])
  new = np.asarray(process.create("dit").add_score(out, x, jnp.asarray(t, jnp.float32), grad))
  s = np.sqrt(1 - ABAR[t.astype(int)])[:, None, None, None]
  score = lambda eps: -eps / s  # score = -eps / sqrt(1 - abar)
  np.testing.assert_allclose(score(new[..., :2]) - score(np.asarray(out[..., :2])), grad, rtol=1e-4, atol=1e-4)
  np.testing.assert_array_equal(new[..., 2:], np.asarray(out[..., 2:]))


@pytest.mark.parametrize("kind", ["Linear", "GVP"])
def test_sit_velocity_moves_the_score_by_the_gradient(kind):
  path = Path(kind)
  x = jnp.asarray(RNG.standard_normal((4, 4, 4, 2)), jnp.float32)
  v = jnp.asarray(RNG.standard_normal(x.shape), jnp.float32)
  grad = jnp.asarray(RNG.standard_normal(x.shape), jnp.float32)
  t = jnp.asarray([0.0, 0.1, 0.5, 0.9])
  new = process.create("sit", path_type=kind).add_score(v, x, t, grad)
  diff = np.asarray(path.score_from_velocity(new, x, t) - path.score_from_velocity(v, x, t))
  np.testing.assert_allclose(diff[1:], np.asarray(grad)[1:], rtol=1e-3, atol=1e-3)
  np.testing.assert_array_equal(np.asarray(new)[0], np.asarray(v)[0])  # alpha = 0: no term at pure noise
  if kind == "Linear":  # closed form: score = (t v - x) / (1 - t)
    tt = np.asarray(t)[1:, None, None, None]
    closed = lambda u: (tt * u - np.asarray(x)[1:]) / (1 - tt)
    np.testing.assert_allclose(closed(np.asarray(new)[1:]) - closed(np.asarray(v)[1:]), np.asarray(grad)[1:],
                               rtol=1e-3, atol=1e-3)


def test_denoiser_adds_the_scaled_term_at_the_scheduled_level(params):
  model = DiT(CFG)
  apply = lambda p, xx, tt, yy: model.apply({"params": p}, xx, tt, yy)
  x = jnp.asarray(RNG.standard_normal((2, 8, 8, 4)), jnp.float32)
  t, y = jnp.asarray([300.0, 800.0]), jnp.asarray([0, 4])
  g = GuidanceConfig(classifier_nag_scale=2.5, classifier_nag_sigma=0.2)
  denoise = make_denoise(Branched(apply, params, 5, 4), y, g, g.active_terms(0.5),
                         process=process.create("dit"), estimator=Estimator(mean_square, 0.7))
  got = np.asarray(jax.jit(denoise)(x, t))
  plain = np.asarray(jax.jit(apply)(params, x, t, y))
  grad = 2.5 * closed_form_grad(x, 0.7, np.asarray(t) / 1000, 0.2)  # DiT target: t / T
  want = plain[..., :4] - np.sqrt(1 - ABAR[np.asarray(t).astype(int)])[:, None, None, None] * grad
  np.testing.assert_allclose(got[..., :4], want, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(got[..., 4:], plain[..., 4:], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family,method", [("dit", "ddpm"), ("sit", "sde")])
def test_classifier_nag_changes_the_sampler_and_is_exactly_plain_at_zero(params, family, method):
  config = CFG.replace(family=family)
  estimator = NoiseEstimator(config, pseudo_level={"dit": 1001.0, "sit": 1.001}[family])
  est_params = random_like(jax.eval_shape(lambda: estimator.init(jax.random.key(0),
                                                                 *estimator_inputs(estimator)))["params"])
  sampler = SamplerConfig(method=method, num_steps=4)
  key, y = jax.random.key(3), jnp.asarray([1, 2])
  on = GuidanceConfig(classifier_nag_scale=1.0)
  zero = GuidanceConfig(classifier_nag_scale=0.0, classifier_nag_sigma=0.3)
  jaxpr = lambda g: str(jax.make_jaxpr(lambda p: build_sampler(config, sampler, g, estimator=estimator, jit=False)(
      p, key, y, estimator_params=est_params)["latents"])(params))
  assert jaxpr(zero) == jaxpr(GuidanceConfig())  # the very same program
  out = {name: np.asarray(build_sampler(config, sampler, g, estimator=estimator)(
      params, key, y, estimator_params=est_params)["latents"]) for name, g in (("plain", GuidanceConfig()), ("on", on))}
  assert np.isfinite(out["on"]).all() and np.abs(out["on"] - out["plain"]).max() > 1e-3


def test_bad_classifier_nag_settings_are_refused(params):
  with pytest.raises(ValueError, match="classifier_nag_scale must be >= 0"):
    GuidanceConfig(classifier_nag_scale=-1.0)
  with pytest.raises(ValueError, match="classifier_nag_sigma must be > 0"):
    GuidanceConfig(classifier_nag_sigma=0.0)
  g = GuidanceConfig(classifier_nag_scale=1.0)
  with pytest.raises(ValueError, match="needs estimator"):
    build_sampler(CFG, SamplerConfig(num_steps=4), g)
  with pytest.raises(ValueError, match="needs the noise-level estimator"):
    make_denoise(Branched(lambda *a: None, params, 5, 4), jnp.asarray([0]), g, g.active_terms(0.5),
                 process=process.create("dit"))
