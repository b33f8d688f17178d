"""Table 5 baselines: Epsilon Scaling and Time Shift against direct numpy computations, off = plain sampler."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nag_jax import process
from nag_jax.guidance import Branched, GuidanceConfig, make_denoise
from nag_jax.guidance.baselines import eps_scale, time_shift
from nag_jax.models import ModelConfig, init_params
from nag_jax.sampling.pipeline import SamplerConfig, build_sampler
from nag_jax.training.base_config import get_base_config
from nag_jax.training.objectives import create_objective

CFG = ModelConfig(input_size=8, patch_size=4, hidden_size=16, depth=1, num_heads=2, num_classes=5)
ABAR = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))  # DDPM linear schedule, 1000 steps


@pytest.fixture(scope="module")
def params():
  """Random weights everywhere (the official init zeroes the output layers, which hides every term)."""
  rng = np.random.default_rng(0)
  return jax.tree.map(lambda l: jnp.asarray(0.3 * rng.standard_normal(l.shape), jnp.float32),
                      jax.eval_shape(lambda: init_params(CFG, jax.random.key(0))))


def scaled_states(stds, shape=(8, 8, 4)):
  """States whose per-sample variance is exactly std^2 (zero-mean +-1 patterns)."""
  signs = np.where(np.indices(shape).sum(0) % 2 == 0, 1.0, -1.0)
  return jnp.asarray(np.stack([s * signs for s in stds]), jnp.float32)


def brute_force_shift(var, t, window_steps, step, lo, hi, coeffs, data_var):
  """Candidate nearest t (ties) whose a^2 d + s^2 is closest to var, by a plain loop."""
  best, best_err = None, np.inf
  for k in sorted(range(-window_steps, window_steps + 1), key=lambda k: (abs(k), k)):
    cand = min(max(t + k * step, lo), hi)
    a, s = coeffs(cand)
    err = abs(var - (a * a * data_var + s * s))
    if err < best_err - 1e-12:
      best, best_err = cand, err
  return best


def test_eps_scale_divides_only_the_latent_channels():
  out = jnp.asarray(np.random.default_rng(0).standard_normal((2, 4, 4, 8)), jnp.float32)
  got = np.asarray(eps_scale(out, 0.25, 4))
  np.testing.assert_allclose(got[..., :4], np.asarray(out[..., :4]) / 1.25, rtol=1e-6)
  np.testing.assert_array_equal(got[..., 4:], np.asarray(out[..., 4:]))


def test_time_shift_dit_matches_brute_force_search():
  schedule = process.create("dit")
  np.testing.assert_allclose(schedule.diffusion.alphas_cumprod, ABAR, rtol=1e-12)
  stds = [0.9, 0.97, 1.2, 0.5, 1.2]
  t = np.array([400.0, 600.0, 990.0, 3.0, 500.0])
  got = np.asarray(time_shift(scaled_states(stds), jnp.asarray(t, jnp.float32), 0.02, schedule))
  coeffs = lambda c: (np.sqrt(ABAR[int(c)]), np.sqrt(1 - ABAR[int(c)]))
  want = [brute_force_shift(s * s, ti, 20, 1, 0, 999, coeffs, 0.0) for s, ti in zip(stds, t)]
  np.testing.assert_array_equal(got, want)
  assert got[2] == 999 and got[4] == 520  # clipped at the end; pushed to the window's edge


def test_time_shift_sit_matches_brute_force_search_with_data_variance():
  schedule = process.create("sit")
  stds = [0.6, 0.8, 0.3]
  t = np.array([0.5, 0.3, 0.99])
  got = np.asarray(time_shift(scaled_states(stds), jnp.asarray(t, jnp.float32), 0.05, schedule, data_var=0.25))
  coeffs = lambda c: (c, 1 - c)  # Linear path: x_t = t x1 + (1 - t) x0
  want = [brute_force_shift(s * s, ti, 50, -1e-3, 0.0, 1.0, coeffs, 0.25) for s, ti in zip(stds, t)]
  np.testing.assert_allclose(got, want, atol=2e-6)


def test_time_shift_feeds_the_shifted_time_to_every_t_branch(params):
  def fake(p, x, t, y):  # outputs its time input, so the guided output shows every branch's t
    return jnp.broadcast_to(t[:, None, None, None], x.shape[:3] + (8,))

  g = GuidanceConfig(cfg_scale=2.0, nag_scale=1.0, time_shift_window=0.01, pseudo_level=1001.0)
  x, t = scaled_states([0.9, 0.95]), jnp.asarray([400.0, 700.0])
  out = jax.jit(make_denoise(Branched(fake, params, 5, 4), jnp.asarray([0, 1]), g, g.active_terms(0.5),
                             process=process.create("dit")))(x, t)
  shifted = np.asarray(time_shift(x, t, 0.01, process.create("dit")))
  assert (shifted != np.asarray(t)).all()
  # cond + (s - 1)(cond - uncond) + w (cond - pseudo): cond and uncond saw t', the NAG branch 1001
  np.testing.assert_allclose(np.asarray(out)[:, 0, 0, 0], shifted + 1.0 * (shifted - 1001.0), rtol=1e-6)


@pytest.mark.parametrize("family,method", [("dit", "ddpm"), ("sit", "sde")])
def test_each_baseline_changes_the_sampler_and_is_exactly_plain_at_zero(params, family, method):
  config = CFG.replace(family=family)
  sampler = SamplerConfig(method=method, num_steps=4)
  key, y = jax.random.key(3), jnp.asarray([1, 2])
  configs = {"plain": GuidanceConfig(), "zero": GuidanceConfig(eps_scaling=0.0, time_shift_window=0.0),
             "es": GuidanceConfig(eps_scaling=0.05), "ts": GuidanceConfig(time_shift_window=0.05)}
  jaxpr = lambda g: str(jax.make_jaxpr(lambda p: build_sampler(config, sampler, g, jit=False)(p, key, y)["latents"])(
      params))
  assert jaxpr(configs["zero"]) == jaxpr(configs["plain"])  # the very same program
  out = {k: np.asarray(build_sampler(config, sampler, configs[k])(params, key, y)["latents"])
         for k in ("plain", "es", "ts")}
  for k in ("es", "ts"):
    assert np.isfinite(out[k]).all() and np.abs(out[k] - out["plain"]).max() > 1e-3, k


def test_input_perturbation_is_a_training_switch():
  oc = get_base_config().objective
  assert oc.input_perturbation == 0.0  # off by default
  oc.input_perturbation = 0.1
  objective = create_objective(CFG, oc)
  x0 = jnp.zeros((64, 8, 8, 4))
  d = jax.jit(objective.draw)(jax.random.key(0), x0, jnp.zeros(64, jnp.int32))
  xi = np.asarray(d.input_noise - d.noise) / 0.1
  assert abs(xi.std() - 1) < 0.02 and abs(np.corrcoef(xi.ravel(), np.asarray(d.noise).ravel())[0, 1]) < 0.02
  x_t, _ = jax.jit(objective.noisy_input)(x0, d)  # built from the perturbed noise; the target stays d.noise
  np.testing.assert_allclose(np.asarray(x_t), np.sqrt(1 - ABAR[np.asarray(d.t)])[:, None, None, None]
                             * np.asarray(d.input_noise), atol=1e-5)


@pytest.mark.parametrize("kwargs,needle", [
    (dict(eps_scaling=-0.1), "eps_scaling must be >= 0"),
    (dict(time_shift_window=1.5), "time_shift_window must be in"),
    (dict(time_shift_data_var=-1.0), "time_shift_data_var must be >= 0"),
    (dict(time_shift_interval=(0.5, 0.2)), "time_shift_interval must satisfy"),
])
def test_bad_baseline_settings_are_refused(kwargs, needle):
  with pytest.raises(ValueError, match=needle):
    GuidanceConfig(**kwargs)


def test_time_shift_without_process_is_refused(params):
  g = GuidanceConfig(time_shift_window=0.01)
  with pytest.raises(ValueError, match="needs the model's forward process"):
    make_denoise(Branched(lambda *a: None, params, 5, 4), jnp.asarray([0]), g, g.active_terms(0.5))
