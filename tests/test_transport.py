"""SiT transport: paths, score from velocity, diffusion forms, intervals and the velocity loss."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nag_jax import flow
from tests.reference.losses import flow_training_losses

T = np.array([0.1, 0.3, 0.5, 0.8, 0.95], np.float32)


def _np_coeffs(kind, t):
  """(alpha, d_alpha, sigma, d_sigma) in float64 from the closed forms of official-notes 3.2."""
  t = t.astype(np.float64)
  if kind == "Linear":
    return t, np.ones_like(t), 1 - t, -np.ones_like(t)
  if kind == "GVP":
    h = np.pi / 2
    return np.sin(h * t), h * np.cos(h * t), np.cos(h * t), -h * np.sin(h * t)
  lmc = -0.25 * (1 - t) ** 2 * 19.9 - 0.5 * (1 - t) * 0.1
  dlmc = 0.5 * (1 - t) * 19.9 + 0.05
  a = np.exp(lmc)
  s = np.sqrt(1 - a ** 2)
  return a, a * dlmc, s, -a ** 2 * dlmc / s


@pytest.mark.parametrize("kind", flow.PATH_TYPES)
def test_plan_and_score_on_a_point_mass(kind):
  """For data = a point x1, p_t = N(alpha x1, sigma^2): score and velocity are known in closed form."""
  rng = np.random.default_rng(0)
  x0, x1 = rng.standard_normal((2, 5, 2, 2, 3)).astype(np.float32)
  path = flow.Path(kind)
  a, da, s, ds = (c[:, None, None, None] for c in _np_coeffs(kind, T))
  x_t, u_t = path.plan(jnp.asarray(T), jnp.asarray(x0), jnp.asarray(x1))
  np.testing.assert_allclose(x_t, a * x1 + s * x0, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(u_t, da * x1 + ds * x0, rtol=1e-5, atol=1e-5)
  x = np.asarray(x_t, np.float64)
  velocity = da * x1 + ds * (x - a * x1) / s  # E[u_t | x_t] for a point mass
  score = path.score_from_velocity(jnp.asarray(velocity, jnp.float32), x_t, jnp.asarray(T))
  ref = -(x - a * x1) / s ** 2
  np.testing.assert_allclose(score, ref, rtol=1e-5, atol=1e-6 * np.abs(ref).max())


def test_linear_score_is_official_simplified_form():
  rng = np.random.default_rng(1)
  v, x = rng.standard_normal((2, 5, 2, 2, 3)).astype(np.float32)
  t = T[:, None, None, None]
  score = flow.Path("Linear").score_from_velocity(jnp.asarray(v), jnp.asarray(x), jnp.asarray(T))
  np.testing.assert_allclose(score, (t * v - x) / (1 - t), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("form,expected", [
    ("constant", lambda t, n: n * np.ones_like(t)),
    ("SBDM", lambda t, n: n * (1 - t) / t),  # (1/t)(1-t)^2 + (1-t) for Linear
    ("sigma", lambda t, n: n * (1 - t)),
    ("linear", lambda t, n: n * (1 - t)),
    ("decreasing", lambda t, n: 0.25 * (n * np.cos(np.pi * t) + 1) ** 2),
    ("increasing-decreasing", lambda t, n: n * np.sin(np.pi * t) ** 2),
])
def test_diffusion_forms_linear(form, expected):
  x = jnp.zeros((len(T), 2, 2, 3))
  got = flow.Path("Linear").diffusion(x, jnp.asarray(T), form, 0.7)
  np.testing.assert_allclose(np.asarray(got).reshape(-1), expected(T.astype(np.float64), 0.7), rtol=1e-5)


def test_vp_drift_and_sde_drift():
  x = jnp.ones((len(T), 1, 1, 1))
  mean, var = flow.Path("VP").drift(x, jnp.asarray(T))
  beta = 0.1 + (1 - T.astype(np.float64)) * 19.9
  np.testing.assert_allclose(np.asarray(mean).ravel(), -0.5 * beta, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(var).ravel(), beta / 2, rtol=1e-5)
  v = jnp.full_like(x, 0.5)
  drift, w = flow.sde_drift(flow.Path("Linear"), v, x, jnp.asarray(T))
  t = T.astype(np.float64)
  np.testing.assert_allclose(np.asarray(w).ravel(), 1 - t, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(drift).ravel(), 0.5 + (1 - t) * (t * 0.5 - 1) / (1 - t), rtol=1e-5)


def test_check_interval_rules(fixtures_dir):
  fx = np.load(fixtures_dir / "samplers/sit_transport_linear_velocity.npz")
  linear = flow.create_transport("Linear")
  assert (linear.train_eps, linear.sample_eps) == (float(fx["train_eps"]), float(fx["sample_eps"]))
  sde = dict(sde=True, sampling=True, diffusion_form="sigma", last_step_size=0.04)
  np.testing.assert_allclose(flow.check_interval(linear, **sde), fx["sde250_t0_t1"], rtol=0, atol=1e-15)
  assert flow.check_interval(linear) == (0.0, 1.0)
  assert flow.check_interval(linear, sampling=True) == (0.0, 1.0)
  vp = flow.create_transport("VP")
  assert (vp.train_eps, vp.sample_eps) == (1e-5, 1e-3)
  assert flow.check_interval(vp) == (0.0, 1 - 1e-5)
  assert flow.check_interval(vp, sampling=True) == (0.0, 1 - 1e-3)
  assert flow.check_interval(vp, **sde) == (0.0, 1 - 0.04)
  gvp_eps = flow.Transport(flow.Path("GVP"), 1e-3, 2e-3)
  assert flow.check_interval(gvp_eps, sde=True, sampling=True, diffusion_form="SBDM") == (2e-3, 1 - 2e-3)
  assert flow.check_interval(gvp_eps, sde=True, sampling=True, diffusion_form="sigma",
                             last_step_size=0.04) == (0.0, 0.96)


@pytest.mark.parametrize("kind", flow.PATH_TYPES)
def test_training_loss_is_unweighted_velocity_mse(kind):
  rng = np.random.default_rng(2)
  x1, noise = rng.standard_normal((2, 5, 2, 2, 3)).astype(np.float32)
  model = lambda x, t: 0.5 * x + t[:, None, None, None]
  out = jax.jit(lambda *a: flow_training_losses(flow.Path(kind), model, *a))(
      jnp.asarray(x1), jnp.asarray(T), jnp.asarray(noise))
  a, da, s, ds = (c[:, None, None, None] for c in _np_coeffs(kind, T))
  x_t = a * x1 + s * noise
  ref = ((0.5 * x_t + T[:, None, None, None] - (da * x1 + ds * noise)) ** 2).mean(axis=(1, 2, 3))
  np.testing.assert_allclose(out["loss"], ref, rtol=1e-4, atol=1e-5)
  assert out["loss"].shape == (5,)


def test_bad_inputs_raise():
  with pytest.raises(ValueError, match="path type 'Cosine'"):
    flow.create_transport("Cosine")
  x = jnp.zeros((1, 1, 1, 1))
  with pytest.raises(ValueError, match="diffusion form 'inccreasing-decreasing'"):
    flow.Path().diffusion(x, jnp.ones(1) * 0.5, "inccreasing-decreasing")
