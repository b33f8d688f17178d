"""DiT Gaussian diffusion against the official fixtures and a float64 numpy re-derivation of the loss."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nag_jax import diffusion as gd
from tests.reference.losses import diffusion_training_losses

FIXTURE = "samplers/dit_ddpm_respace50.npz"
SCHEDULE_KEYS = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_recip_alphas_cumprod",
                 "sqrt_recipm1_alphas_cumprod", "posterior_variance",
                 "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2")


def nhwc(a):
  return np.transpose(np.asarray(a), (0, 2, 3, 1))


def max_err(actual, ref):
  """Max abs error and the tolerance scale max(1, max |ref|)."""
  ref = np.asarray(ref, np.float64)
  return float(np.max(np.abs(np.asarray(actual, np.float64) - ref))), max(1.0, float(np.max(np.abs(ref))))


def assert_close(actual, ref, rel):
  err, scale = max_err(actual, ref)
  assert err <= rel * scale, f"max abs error {err:.3g} > {rel:g} * {scale:.3g}"


@pytest.fixture(scope="module")
def fx(fixtures_dir):
  return dict(np.load(fixtures_dir / FIXTURE))


def test_schedule_matches_official(fx):
  diffusion = gd.create_diffusion("50")
  np.testing.assert_array_equal(diffusion.timestep_map, fx["timestep_map"])
  np.testing.assert_array_equal(sorted(gd.space_timesteps(1000, "50")), fx["use_timesteps"])
  base = gd.get_named_beta_schedule("linear", 1000)
  np.testing.assert_allclose(base, fx["base_betas"], rtol=1e-12, atol=0)
  np.testing.assert_allclose(np.cumprod(1 - base), fx["base_alphas_cumprod"], rtol=1e-12, atol=0)
  for name in SCHEDULE_KEYS:
    np.testing.assert_allclose(getattr(diffusion, name), fx[name], rtol=1e-12, atol=1e-300, err_msg=name)


def test_space_timesteps_variants():
  steps250 = sorted(gd.space_timesteps(1000, "250"))  # official-notes 2.10
  assert len(steps250) == 250 and steps250[:6] == [0, 4, 8, 12, 16, 20] and steps250[-3:] == [991, 995, 999]
  assert gd.space_timesteps(1000, "ddim50") == set(range(0, 1000, 20))
  sections = sorted(gd.space_timesteps(300, "10,15,20"))  # the upstream docstring example
  assert len(sections) == 45
  assert [sections[0], sections[9], sections[10], sections[24], sections[25], sections[44]] == [
      0, 99, 100, 199, 200, 299]
  full = gd.create_diffusion("")
  assert full.num_timesteps == 1000 and np.array_equal(full.timestep_map, np.arange(1000))


def test_squaredcos_schedule_follows_alpha_bar():
  betas = gd.get_named_beta_schedule("squaredcos_cap_v2", 1000)
  f = lambda t: np.cos((t + 0.008) / 1.008 * np.pi / 2) ** 2
  i = np.arange(1, 900)
  np.testing.assert_allclose(np.cumprod(1 - betas)[i - 1], f(i / 1000) / f(0), rtol=1e-9)
  assert betas.max() <= 0.999


@pytest.mark.parametrize("bad", ["abc", "ddim999", "2000", "10,x", "0"])
def test_bad_respacing_raises(bad):
  with pytest.raises(ValueError):
    gd.create_diffusion(bad)


def test_bad_schedule_and_channels_raise():
  with pytest.raises(ValueError, match="noise schedule 'cosine'"):
    gd.create_diffusion("50", noise_schedule="cosine")
  diffusion = gd.create_diffusion("50")
  x = jnp.zeros((1, 2, 2, 4))
  with pytest.raises(ValueError, match="8 output channels"):
    gd.p_mean_variance(diffusion, x, x, jnp.array([3]))


@pytest.mark.parametrize("s", [0, 1, 2])
def test_single_steps_match_official(fx, s):
  diffusion = gd.create_diffusion("50")
  i = jnp.full((2,), int(fx["step_index"][s]))
  x, out, noise = (jnp.asarray(nhwc(fx[k][s])) for k in ("step_x", "step_model_out", "step_noise"))
  np.testing.assert_array_equal(gd.model_timesteps(diffusion, i), fx["step_t_model"][s])
  for clip, suffix in ((False, ""), (True, "_clip")):
    res = gd.p_mean_variance(diffusion, out, x, i, clip_denoised=clip)
    sample, pred = gd.p_sample(diffusion, out, x, i, noise, clip_denoised=clip)
    assert_close(res["mean"], nhwc(fx["step_mean" + suffix][s]), 1e-5)
    assert_close(pred, nhwc(fx["step_pred_xstart" + suffix][s]), 1e-5)
    assert_close(sample, nhwc(fx["step_sample" + suffix][s]), 1e-5)
  assert_close(res["variance"], nhwc(fx["step_variance"][s]), 1e-5)
  assert_close(res["log_variance"], nhwc(fx["step_log_variance"][s]), 1e-5)


def test_ddim_eta1_is_ddpm_with_small_variance():
  """DDIM with eta = 1 is ancestral sampling with the posterior (fixed-small) variance."""
  diffusion = gd.create_diffusion("50", learn_sigma=False, sigma_small=True)
  rng = np.random.default_rng(0)
  x, eps, noise = (jnp.asarray(rng.standard_normal((2, 4, 4, 4)), jnp.float32) for _ in range(3))
  ddim = jax.jit(lambda i: gd.ddim_sample(diffusion, eps, x, i, noise, eta=1.0)[0])
  ddpm = jax.jit(lambda i: gd.p_sample(diffusion, eps, x, i, noise)[0])
  for idx in (49, 25, 1, 0):
    i = jnp.full((2,), idx)
    assert_close(ddim(i), ddpm(i), 1e-5)


# ---- training loss against an independent float64 numpy implementation of the official formulas ----

def _fake(xp, x, t):
  """A deterministic fake DiT output (eps, variance values) written for numpy or jax.numpy."""
  s = t[:, None, None, None] / 1000.0
  return xp.concatenate([0.9 * x + 0.3 * s + 0.05, xp.tanh(0.5 * x - s)], axis=-1)


def _np_cdf(x):
  return 0.5 * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))


def _np_losses(x0, t, noise):
  base = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)
  ac = np.cumprod(1 - base)
  betas = 1 - ac / np.append(1.0, ac[:-1])  # SpacedDiffusion rebuild over all 1000 steps
  ac = np.cumprod(1 - betas)
  ac_prev = np.append(1.0, ac[:-1])
  post_var = betas * (1 - ac_prev) / (1 - ac)
  post_log = np.log(np.append(post_var[1], post_var[1:]))
  c1, c2 = betas * np.sqrt(ac_prev) / (1 - ac), (1 - ac_prev) * np.sqrt(1 - betas) / (1 - ac)
  b = lambda a: a[t][:, None, None, None]
  x_t = b(np.sqrt(ac)) * x0 + b(np.sqrt(1 - ac)) * noise
  out = _fake(np, x_t, t.astype(np.float64))
  eps, v = out[..., :4], out[..., 4:]
  frac = (v + 1) / 2
  log_var = frac * b(np.log(betas)) + (1 - frac) * b(post_log)
  pred_x0 = b(np.sqrt(1 / ac)) * x_t - b(np.sqrt(1 / ac - 1)) * eps
  mean = b(c1) * pred_x0 + b(c2) * x_t
  true_mean, true_log = b(c1) * x0 + b(c2) * x_t, b(post_log)
  kl = 0.5 * (-1 + log_var - true_log + np.exp(true_log - log_var)
              + (true_mean - mean) ** 2 * np.exp(-log_var))
  inv = np.exp(-0.5 * log_var)
  cdf_plus, cdf_min = _np_cdf(inv * (x0 - mean + 1 / 255)), _np_cdf(inv * (x0 - mean - 1 / 255))
  logp = np.where(x0 < -0.999, np.log(np.maximum(cdf_plus, 1e-12)),
                  np.where(x0 > 0.999, np.log(np.maximum(1 - cdf_min, 1e-12)),
                           np.log(np.maximum(cdf_plus - cdf_min, 1e-12))))
  axes = (1, 2, 3)
  vb = np.where(t == 0, -logp.mean(axes), kl.mean(axes)) / np.log(2.0)
  mse = ((noise - eps) ** 2).mean(axes)
  return {"mse": mse, "vb": vb, "loss": mse + vb}


def test_training_losses_match_numpy_float64():
  rng = np.random.default_rng(0)
  x0 = np.clip(rng.uniform(-1.2, 1.2, (5, 4, 4, 4)), -1, 1).astype(np.float32)  # hits both edge bins
  noise = rng.standard_normal((5, 4, 4, 4)).astype(np.float32)
  t = np.array([0, 1, 10, 500, 999])
  diffusion = gd.create_diffusion("")
  losses = jax.jit(lambda *a: diffusion_training_losses(diffusion, lambda x, tm: _fake(jnp, x, tm), *a))
  got = losses(jnp.asarray(x0), jnp.asarray(t), jnp.asarray(noise))
  ref = _np_losses(x0.astype(np.float64), t, noise.astype(np.float64))
  for name in ("mse", "vb", "loss"):
    np.testing.assert_allclose(got[name], ref[name], rtol=2e-4, atol=1e-6, err_msg=name)


def test_vb_term_does_not_train_the_mean():
  diffusion = gd.create_diffusion("")
  rng = np.random.default_rng(1)
  x0 = jnp.asarray(rng.uniform(-1, 1, (2, 2, 2, 4)), jnp.float32)
  noise = jnp.asarray(rng.standard_normal(x0.shape), jnp.float32)
  params = jnp.asarray(0.3 * rng.standard_normal((2, 2, 2, 8)), jnp.float32)

  def terms(p):
    out = diffusion_training_losses(diffusion, lambda x, tm: p, x0, jnp.array([0, 400]), noise)
    return jnp.stack([out["vb"].sum(), out["mse"].sum()])

  g_vb, g_mse = jax.jit(jax.jacrev(terms))(params)
  assert np.all(np.asarray(g_vb[..., :4]) == 0) and np.any(np.asarray(g_vb[..., 4:]) != 0)
  assert np.all(np.asarray(g_mse[..., 4:]) == 0) and np.any(np.asarray(g_mse[..., :4]) != 0)
