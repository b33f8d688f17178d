"""NAG's peers (autoguidance, TSG, CFG-Zero*, APG) against numpy transcriptions of their published formulas.

Branch outputs come from separate plain model calls; the guidance algebra, APG's momentum buffer and the
Euler loop are written out in float64 numpy after the papers' pseudo-code. Off = the unguided program.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nag_jax import process
from nag_jax.flow.transport import create_transport
from nag_jax.guidance import Branched, GuidanceConfig, make_denoise, make_segments
from nag_jax.models import DiT, ModelConfig, init_params
from nag_jax.sampling.ode_sampler import ode_noise_levels, ode_time_grid, sample_ode
from nag_jax.sampling.pipeline import SamplerConfig, build_sampler

CFG = ModelConfig(family="sit", input_size=8, patch_size=4, in_channels=1, hidden_size=16, depth=1, num_heads=2, num_classes=5,
                  learn_sigma=False, time_scale=1000.0)
WEAK = CFG.replace(hidden_size=8, num_heads=1)


def random_params(config, seed):
  """Random weights everywhere (the official init zeroes the output layer, which hides every term)."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda l: jnp.asarray(0.3 * rng.standard_normal(l.shape), jnp.float32),
                      jax.eval_shape(lambda: init_params(config, jax.random.key(0))))


@pytest.fixture(scope="module")
def models():
  """(main Branched, weak Branched, plain f(x, t, y) of the main and the weak model in float64 numpy)."""
  p, q = random_params(CFG, 0), random_params(WEAK, 1)
  main, weak = DiT(CFG), DiT(WEAK)
  apply = lambda m: (lambda params, x, t, y: m.apply({"params": params}, x, t, y))
  f = jax.jit(lambda x, t, y: main.apply({"params": p}, x, t, y))
  fw = jax.jit(lambda x, t, y: weak.apply({"params": q}, x, t, y))
  to64 = lambda fn: (lambda x, t, y: np.asarray(fn(jnp.asarray(x, jnp.float32), jnp.asarray(t, jnp.float32),
                                                   jnp.asarray(y)), np.float64))
  return Branched(apply(main), p, 5, 1), Branched(apply(weak), q, 5, 1), to64(f), to64(fw)


def inputs(b=3):
  rng = np.random.default_rng(2)
  return rng.standard_normal((b, 8, 8, 1)).astype(np.float32), np.full((b,), 0.4, np.float32), np.array([0, 3, 4])


def np_dot(a, b):
  return (a * b).reshape(len(a), -1).sum(1).reshape((-1,) + (1,) * (a.ndim - 1))


def run(main, g, x, t, y, weak=None):
  denoise = make_denoise(main, jnp.asarray(y), g, g.active_terms(0.6), weak, process=process.create("sit"))
  return np.asarray(jax.jit(denoise)(jnp.asarray(x), jnp.asarray(t)), np.float64)


def test_autoguidance_is_karras_bad_plus_w_good_minus_bad(models):
  main, weak, f, fw = models
  x, t, y = inputs()
  good, bad = f(x, t, y), fw(x, t, y)  # the weak model sees the same class and time
  out = run(main, GuidanceConfig(autoguidance_scale=2.5), x, t, y, weak)
  np.testing.assert_allclose(out, bad + 2.5 * (good - bad), atol=1e-4)
  assert np.abs(good - bad).max() > 0.1  # the weak model really differs


def test_tsg_guides_away_from_a_noisier_time(models):
  main, _, f, _ = models
  x, t, y = inputs()
  cond, perturbed = f(x, t, y), f(x, t - 0.1, y)  # SiT time 1 = data: 0.1 noisier is t - 0.1
  out = run(main, GuidanceConfig(tsg_scale=1.5, tsg_shift=0.1), x, t, y)
  np.testing.assert_allclose(out, cond + 1.5 * (cond - perturbed), atol=1e-4)
  out = run(main, GuidanceConfig(tsg_scale=1.0, tsg_shift=0.9), x, np.full(3, 0.3, np.float32), y)
  c0, p0 = f(x, np.full(3, 0.3), y), f(x, np.zeros(3), y)  # clipped at pure noise
  np.testing.assert_allclose(out, 2 * c0 - p0, atol=1e-4)


def test_cfg_zero_star_uses_the_projected_unconditional_scale(models):
  main, _, f, _ = models
  x, t, y = inputs()
  vc, vu = f(x, t, y), f(x, t, np.full(3, 5))
  out = run(main, GuidanceConfig(cfg_zero_scale=3.0), x, t, y)
  # Fan et al. 2025, Alg. 1: st_star = dot(v_cond, v_uncond) / ||v_uncond||^2; v = v_u st + w (v_c - v_u st)
  st = np.array([np.dot(vc[i].ravel(), vu[i].ravel()) / np.dot(vu[i].ravel(), vu[i].ravel()) for i in range(3)])
  st = st[:, None, None, None]
  np.testing.assert_allclose(out, vu * st + 3.0 * (vc - vu * st), atol=1e-4)
  assert np.abs(st - 1).max() > 1e-3  # a* is not trivially 1 here


class MomentumBuffer:
  """APG's official momentum buffer: running = update + momentum * running."""

  def __init__(self, momentum):
    self.momentum, self.running_average = momentum, 0.0

  def update(self, value):
    self.running_average = value + self.momentum * self.running_average


def normalized_guidance(pred_cond, pred_uncond, scale, buffer, eta, norm_threshold):
  """Sadat et al. 2024 (APG), Algorithm 1, per sample over (H, W, C)."""
  diff = pred_cond - pred_uncond
  buffer.update(diff)
  diff = buffer.running_average
  if norm_threshold > 0:
    norm = np.sqrt(np_dot(diff, diff))
    diff = diff * np.minimum(1.0, norm_threshold / norm)
  v1 = pred_cond / np.sqrt(np_dot(pred_cond, pred_cond))
  parallel = np_dot(diff, v1) * v1
  orthogonal = diff - parallel
  return pred_cond + (scale - 1) * (orthogonal + eta * parallel)


@pytest.mark.parametrize("momentum,threshold", [(0.0, 0.0), (-0.5, 2.0)])
def test_apg_with_momentum_over_an_euler_ode_matches_the_reference_loop(models, momentum, threshold):
  main, _, f, _ = models
  x0, _, y = inputs()
  g = GuidanceConfig(apg_scale=4.0, apg_eta=0.3, apg_momentum=momentum, apg_norm_threshold=threshold)
  transport, steps = create_transport("Linear"), 6
  segs = make_segments(main, jnp.asarray(y), g, ode_noise_levels(transport, steps),
                       process=process.create("sit"))
  got = np.asarray(jax.jit(lambda x: sample_ode(transport, segs, x, num_steps=steps, method="euler").x)(x0))
  grid, buffer, x = ode_time_grid(transport, steps).astype(np.float64), MomentumBuffer(momentum), x0.astype(np.float64)
  for k in range(steps - 1):
    t = np.full(3, grid[k])
    v = normalized_guidance(f(x, t, y), f(x, t, np.full(3, 5)), 4.0, buffer, 0.3, threshold)
    x = x + (grid[k + 1] - grid[k]) * v
  np.testing.assert_allclose(got, x, atol=2e-4)


def test_cfg_zero_init_freezes_the_first_steps(models):
  main, _, _, _ = models
  x0, _, y = inputs()
  transport, steps = create_transport("Linear"), 8
  g = GuidanceConfig(cfg_zero_scale=2.0, cfg_zero_init_steps=2)
  segs = make_segments(main, jnp.asarray(y), g, ode_noise_levels(transport, steps),
                       process=process.create("sit"))
  assert [(a, b) for a, b, _ in segs] == [(0, 2), (2, 7)]
  traj = np.asarray(sample_ode(transport, segs, jnp.asarray(x0), num_steps=steps, method="euler",
                               return_trajectory=True).trajectory)
  np.testing.assert_array_equal(traj[1], x0)  # two zero-velocity steps
  assert np.abs(traj[2] - x0).max() > 1e-3


@pytest.mark.parametrize("method", ["ddpm", "sde"])
def test_peers_off_are_the_unguided_program_and_on_add_their_rows(method):
  config = CFG.replace(family="dit", learn_sigma=True, in_channels=4, time_scale=1.0) if method == "ddpm" else CFG
  params = random_params(config, 0)
  key, y = jax.random.key(3), jnp.asarray([1, 2])
  sampler = SamplerConfig(method=method, num_steps=6)
  def jaxpr(g, **kw):
    fn = build_sampler(config, sampler, g, jit=False, **kw)
    return str(jax.make_jaxpr(lambda p, q: fn(p, key, y, parent_params=q)["latents"])(params, params))
  plain = jaxpr(GuidanceConfig())
  off = GuidanceConfig(autoguidance_scale=1.0, tsg_scale=0.0, cfg_zero_scale=1.0, cfg_zero_init_steps=0,
                       apg_scale=1.0, apg_momentum=-0.5, apg_norm_threshold=1.0)
  assert jaxpr(off) == plain == jaxpr(GuidanceConfig(apg_scale=2.0, apg_interval=(0.4, 0.4)))
  c = config.in_channels
  for g, kw, stacked in [(GuidanceConfig(tsg_scale=1.0), {}, True), (GuidanceConfig(cfg_zero_scale=2.0), {}, True),
                         (GuidanceConfig(apg_scale=2.0, apg_momentum=-0.5), {}, True),
                         (GuidanceConfig(autoguidance_scale=2.0), {"parent_config": config}, False)]:
    on = jaxpr(g, **kw)
    assert on != plain
    assert (f"f32[4,8,8,{c}]" in on) == stacked, g  # a second row in the one call; the weak model: its own call


@pytest.mark.parametrize("kwargs,needle", [
    (dict(autoguidance_scale=0.5), "autoguidance_scale must be >= 1"),
    (dict(tsg_scale=-1.0), "tsg_scale must be >= 0"),
    (dict(tsg_shift=0.0), "tsg_shift must be in"),
    (dict(apg_momentum=1.0), "apg_momentum must be in"),
    (dict(cfg_zero_init_steps=-1), "cfg_zero_init_steps must be >= 0"),
    (dict(dog_scale=1.5, autoguidance_scale=1.5), "both use the second model"),
    (dict(apg_interval=(0.5, 0.2)), "apg_interval must satisfy"),
])
def test_bad_peer_settings_are_refused(kwargs, needle):
  with pytest.raises(ValueError, match=needle):
    GuidanceConfig(**kwargs)


def test_missing_weak_model_and_stateful_dopri5_are_refused():
  with pytest.raises(ValueError, match="needs parent_config"):
    build_sampler(CFG, SamplerConfig(method="sde", num_steps=4), GuidanceConfig(autoguidance_scale=2.0))
  fn = build_sampler(CFG, SamplerConfig(method="ode", num_steps=4), GuidanceConfig(apg_scale=2.0, apg_momentum=0.5))
  with pytest.raises(ValueError, match="carries a state across steps"):
    fn(random_params(CFG, 0), jax.random.key(0), jnp.asarray([1]))
