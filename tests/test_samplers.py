"""Scan samplers against the official fixtures (injected noises), plus segments, keys and compile size."""
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nag_jax import diffusion as gd
from nag_jax import flow
from nag_jax import sampling
from nag_jax.guidance import segments as seg

DIT = "samplers/dit_ddpm_respace50.npz"
SIT = "samplers/sit_transport_linear_velocity.npz"


def nhwc(a):
  """NCHW (or steps x NCHW) fixture array -> NHWC."""
  a = np.asarray(a)
  return np.moveaxis(a, -3, -1)


def max_err(actual, ref):
  ref = np.asarray(ref, np.float64)
  return float(np.max(np.abs(np.asarray(actual, np.float64) - ref))), max(1.0, float(np.max(np.abs(ref))))


def assert_close(actual, ref, rel):
  err, scale = max_err(actual, ref)
  assert err <= rel * scale, f"max abs error {err:.3g} > {rel:g} * {scale:.3g}"


@pytest.fixture(scope="module")
def dit(fixtures_dir):
  return dict(np.load(fixtures_dir / DIT))


@pytest.fixture(scope="module")
def sit(fixtures_dir):
  return dict(np.load(fixtures_dir / SIT))


def dit_fake(fx):
  """The README's deterministic DiT fake model, t = original timestep."""
  a, b, c, d, e, f = (jnp.asarray(fx["fake_" + k]) for k in "ABCDEF")

  def model(x, t):
    s = (t / 1000.0)[:, None, None, None]
    return jnp.concatenate([a * x + b * s + c, d * x + e * s + f], axis=-1)
  return model


def sit_fake(fx, xp=jnp):
  """The README's fake velocity model v = A x + B t + C (channels last)."""
  a, b, c = (xp.asarray(fx["fake_" + k]) for k in "ABC")
  return lambda x, t: a * x + b * t[:, None, None, None] + c


@pytest.mark.parametrize("clip,prefix", [(False, "loop_"), (True, "loop_clip_")])
def test_ddpm50_loop_matches_official(dit, clip, prefix):
  diffusion = gd.create_diffusion("50")
  nu = sampling.diffusion_noise_levels(diffusion)
  np.testing.assert_allclose(nu * 999, dit[prefix + "model_t"][:, 0], rtol=1e-12)
  out = sampling.sample_diffusion(diffusion, dit_fake(dit), jnp.asarray(nhwc(dit["loop_init_noise"])),
                                  noises=jnp.asarray(nhwc(dit["loop_step_noises"])), clip_denoised=clip,
                                  return_trajectory=True)
  assert_close(out.x, nhwc(dit[prefix + "final"]), 1e-5)
  assert_close(out.trajectory, nhwc(dit[prefix + "trajectory"]), 1e-5)
  assert out.nfe == 50


def test_ddim_loop_eta1_equals_ddpm_loop_with_small_variance(dit):
  """DDIM with eta = 1 is ancestral sampling with the posterior variance, step for step."""
  diffusion = gd.create_diffusion("ddim25", learn_sigma=False, sigma_small=True)
  eps_model = lambda x, t: dit_fake(dit)(x, t)[..., :4]
  x, z = jnp.asarray(nhwc(dit["loop_init_noise"])), jnp.asarray(nhwc(dit["loop_step_noises"][:25]))
  run = lambda **kw: jax.jit(lambda x, z: sampling.sample_diffusion(diffusion, eps_model, x, noises=z, **kw).x)
  assert_close(run(method="ddim", eta=1.0)(x, z), run(method="ddpm")(x, z), 1e-5)
  deterministic = sampling.sample_diffusion(diffusion, eps_model, x, method="ddim")  # eta 0: no key
  assert np.all(np.isfinite(deterministic.x))


@pytest.mark.parametrize("n", [50, 250])
def test_sde_euler_matches_official(sit, n):
  transport = flow.create_transport("Linear")
  grid, t1 = sampling.sde_time_grid(transport, n)
  np.testing.assert_array_equal(grid, sit[f"sde{n}_time_grid"])
  assert grid[1] - grid[0] == sit[f"sde{n}_dt"]
  called = sit[f"sde{n}_model_call_t"][::2, 0]  # upstream calls the model twice per step
  np.testing.assert_array_equal(np.float32(1 - sampling.sde_noise_levels(transport, n)), called)
  out = sampling.sample_sde(transport, sit_fake(sit), jnp.asarray(nhwc(sit[f"sde{n}_init"])), num_steps=n,
                            noises=jnp.asarray(nhwc(sit[f"sde{n}_noises"])), return_trajectory=True)
  assert_close(out.x, nhwc(sit[f"sde{n}_final"]), 1e-5)
  assert_close(out.trajectory, nhwc(sit[f"sde{n}_samples"]), 1e-5)
  assert out.nfe == n  # one model evaluation per step


def _np_sde(fx, x, noises, grid, method):
  """Upstream EM / `__Heun_step` loop (sigma diffusion, Linear path) in float64 numpy, no last step."""
  v = sit_fake(fx, np)
  dt = float(grid[1] - grid[0])

  def drift(x, t):
    vel = v(x, np.full(2, t))
    return vel + (1 - t) * (t * vel - x) / ((1 - t) ** 2 + t * (1 - t))

  for k, t in enumerate(grid[:-1].astype(np.float64)):
    dw = noises[k] * np.sqrt(dt)
    if method == "Euler":
      x = x + drift(x, t) * dt + np.sqrt(2 * (1 - t)) * dw
    else:
      x_hat = x + np.sqrt(2 * (1 - t)) * dw
      k1 = drift(x_hat, t)
      x = x_hat + 0.5 * dt * (k1 + drift(x_hat + dt * k1, t + dt))
  return x


@pytest.mark.parametrize("method,last_step", [("Heun", "Mean"), ("Euler", "Euler"), ("Euler", "Tweedie"),
                                              ("Euler", None)])
def test_sde_variants_match_numpy(sit, method, last_step):
  transport, n = flow.create_transport("Linear"), 50
  x0, noises = nhwc(sit["sde50_init"]), nhwc(sit["sde50_noises"])
  out = sampling.sample_sde(transport, sit_fake(sit), jnp.asarray(x0), num_steps=n, method=method,
                            noises=jnp.asarray(noises), last_step=last_step)
  grid, t1 = sampling.sde_time_grid(transport, n, last_step=last_step)
  assert t1 == (1.0 if last_step is None else 0.96)
  x = _np_sde(sit, x0.astype(np.float64), noises.astype(np.float64), grid, method)
  t = 0.96
  v = sit_fake(sit, np)(x, np.full(2, t))
  if last_step == "Mean":
    x = x + (v + (1 - t) * (t * v - x) / (1 - t)) * 0.04
  elif last_step == "Euler":
    x = x + v * 0.04
  elif last_step == "Tweedie":  # x / alpha + sigma^2 / alpha * score
    x = x / t + (1 - t) ** 2 / t * (t * v - x) / (1 - t)
  assert_close(out.x, x, 1e-5)
  assert out.nfe == (n - 1) * (2 if method == "Heun" else 1) + (last_step is not None)


@pytest.mark.parametrize("method,n", [("euler", 50), ("euler", 250), ("heun2", 50), ("midpoint", 50)])
def test_ode_fixed_grids_match_official(sit, method, n):
  transport = flow.create_transport("Linear")
  np.testing.assert_array_equal(sampling.ode_time_grid(transport, n), sit[f"ode_{method}_{n}_time_grid"])
  out = sampling.sample_ode(transport, sit_fake(sit), jnp.asarray(nhwc(sit["ode_init"])), num_steps=n,
                            method=method, return_trajectory=True)
  assert_close(out.x, nhwc(sit[f"ode_{method}_{n}_final"]), 1e-5)
  assert_close(out.trajectory, nhwc(sit[f"ode_{method}_{n}_samples"][1:]), 1e-5)


def test_ode_dopri5_reaches_exact_solution(sit):
  calls = []

  def counted(x, t):
    jax.debug.callback(lambda: calls.append(1))
    return sit_fake(sit)(x, t)

  out = sampling.sample_ode(flow.create_transport("Linear"), counted, jnp.asarray(nhwc(sit["ode_init"])))
  jax.block_until_ready(out.x)
  err, _ = max_err(out.x, nhwc(sit["ode_exact_t1_float64"]))
  torch_err, _ = max_err(sit["ode_dopri5_50_final"], sit["ode_exact_t1_float64"])
  assert err <= 1e-3 and torch_err <= 1e-3  # the stored dopri5 error order (torch: 2.4e-4)
  assert int(out.nfe) == len(calls)


def test_segments_equal_a_switching_denoiser(dit):
  """Segments from `group_steps` give what one callable switching on t gives, with one scan each."""
  diffusion, fake = gd.create_diffusion("50"), dit_fake(dit)
  other = lambda x, t: 0.5 * fake(x, t)
  nu = sampling.diffusion_noise_levels(diffusion)
  runs = seg.group_steps(nu, lambda level: level > 0.5)
  assert [r[2] for r in runs] == [True, False] and runs[0][0] == 0 and runs[-1][1] == 50
  segments = [(a, b, fake if on else other) for a, b, on in runs]
  switching = lambda x, t: jnp.where((t / 999 > 0.5)[:, None, None, None], fake(x, t), other(x, t))
  x, z = jnp.asarray(nhwc(dit["loop_init_noise"])), jnp.asarray(nhwc(dit["loop_step_noises"]))
  run = lambda fn: (lambda x, z: sampling.sample_diffusion(diffusion, fn, x, noises=z).x)
  assert_close(jax.jit(run(segments))(x, z), jax.jit(run(switching))(x, z), 1e-6)
  jaxpr = jax.make_jaxpr(run(segments))(x, z)
  assert sum(e.primitive.name == "scan" for e in jaxpr.jaxpr.eqns) == 2


def test_key_noise_is_fold_in_of_the_step(sit):
  transport, n, fake = flow.create_transport("Linear"), 10, sit_fake(sit)
  x, key = jnp.asarray(nhwc(sit["sde50_init"])), jax.random.key(7)
  drawn = jax.jit(lambda x: sampling.sample_sde(transport, fake, x, key, num_steps=n).x)(x)
  draw = lambda k: jax.random.normal(jax.random.fold_in(key, k), x.shape, x.dtype)
  noises = jax.jit(jax.vmap(draw))(jnp.arange(n - 1))
  injected = jax.jit(lambda x, z: sampling.sample_sde(transport, fake, x, num_steps=n, noises=z).x)
  injected = injected(x, noises)
  assert_close(drawn, injected, 1e-6)  # same draws; only the fusion (rounding) differs


def _num_eqns(jaxpr):
  """Equations of a jaxpr, counting inside sub-jaxprs (scan bodies, pjit)."""
  total = 0
  for eqn in jaxpr.eqns:
    total += 1
    for p in eqn.params.values():
      sub = getattr(p, "jaxpr", None)
      if sub is not None:
        total += _num_eqns(getattr(sub, "jaxpr", sub))
  return total


def test_program_size_does_not_grow_with_steps(dit, sit):
  x, key = jnp.asarray(nhwc(sit["sde50_init"])), jax.random.key(0)
  transport, fake, dit_model = flow.create_transport("Linear"), sit_fake(sit), dit_fake(dit)
  runs = {
      "ddpm": lambda n: lambda x: sampling.sample_diffusion(gd.create_diffusion(str(n)), dit_model, x, key).x,
      "sde": lambda n: lambda x: sampling.sample_sde(transport, fake, x, key, num_steps=n).x,
      "ode": lambda n: lambda x: sampling.sample_ode(transport, fake, x, num_steps=n, method="heun2").x,
  }
  for name, make in runs.items():
    sizes = [_num_eqns(jax.make_jaxpr(make(n))(x).jaxpr) for n in (10, 250)]
    assert sizes[0] == sizes[1], name
  seconds = []
  for n in (10, 250):
    sde = jax.jit(lambda x, z, n=n: sampling.sample_sde(transport, fake, x, num_steps=n, noises=z).x)
    start = time.perf_counter()
    sde.lower(x, jnp.zeros((n - 1,) + x.shape)).compile()
    seconds.append(time.perf_counter() - start)
  print(f"SDE compile 250 vs 10 steps: {seconds[1]:.2f}s / {seconds[0]:.2f}s = {seconds[1] / seconds[0]:.2f}")
  assert seconds[1] < 3 * seconds[0] + 0.5  # loose: timing only; the equation counts above are the check


def test_bad_inputs_raise(sit):
  transport, fake = flow.create_transport("Linear"), sit_fake(sit)
  x, key = jnp.zeros((2, 4, 4, 4)), jax.random.key(0)
  diffusion = gd.create_diffusion("10")
  ddpm = lambda **kw: sampling.sample_diffusion(diffusion, fake, x, **kw)
  sde = lambda **kw: sampling.sample_sde(transport, fake, x, key, **kw)
  ode = lambda denoise, **kw: sampling.sample_ode(transport, denoise, x, **kw)
  cases = [
      (lambda: ddpm(key=key, method="plms"), "diffusion sampler 'plms'"),
      (lambda: ddpm(), "PRNG key"),
      (lambda: ddpm(noises=jnp.zeros((9, 2, 4, 4, 4))), "shape"),
      (lambda: sde(method="RK4"), "SDE sampler 'RK4'"),
      (lambda: sde(diffusion_form="cubic"), "diffusion form 'cubic'"),
      (lambda: sde(last_step="Median"), "last step 'Median'"),
      (lambda: sde(num_steps=1), "num_steps"),
      (lambda: ode(fake, method="rk45"), "ODE sampler 'rk45'"),
      (lambda: ode([(0, 10, fake), (10, 49, fake)]), "one denoise"),
      (lambda: ode([(0, 10, fake), (12, 49, fake)], method="euler"), "in order"),
      (lambda: ode([(0, 10, fake)], method="euler"), "cover"),
  ]
  for run, message in cases:
    with pytest.raises(ValueError, match=message):
      run()
