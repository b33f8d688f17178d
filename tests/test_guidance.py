"""Guidance: one batched call equals separate calls, off terms cost nothing, official CFG, intervals, errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nag_jax.checkpoints.dit_convert import infer_config, torch_to_flax
from nag_jax.checkpoints.torch_io import read_state_dict
from nag_jax.guidance import Branched, GuidanceConfig, make_denoise, make_segments
from nag_jax.models import DiT, ModelConfig, init_params
from nag_jax.sampling.pipeline import SamplerConfig, build_sampler

CFG = ModelConfig(input_size=8, hidden_size=32, depth=2, num_heads=2, num_classes=5)


@pytest.fixture(scope="module")
def params():
  def make(key):
    leaves, tree = jax.tree.flatten(init_params(CFG, key))
    keys = jax.random.split(jax.random.key(1), len(leaves))
    return jax.tree.unflatten(tree, [0.1 * jax.random.normal(k, l.shape) for k, l in zip(keys, leaves)])
  return jax.jit(make)(jax.random.key(0))


class Recorder:
  """Wraps model.apply and records the batch size of every call made while tracing."""

  def __init__(self, config=CFG):
    self.model, self.batches = DiT(config), []

  def __call__(self, p, x, t, y):
    self.batches.append(x.shape[0])
    return self.model.apply({"params": p}, x, t, y)


def inputs(b=3):
  rng = np.random.default_rng(0)
  return (jnp.asarray(rng.standard_normal((b, 8, 8, 4)), jnp.float32), jnp.full((b,), 400.0),
          jnp.asarray([0, 3, 4]))


def test_batched_call_equals_separate_calls(params):
  x, t, y = inputs()
  rec = Recorder()
  g = GuidanceConfig(cfg_scale=1.5, nag_scale=2.0, pseudo_level=1001.0)
  active = g.active_terms(0.5)
  out = jax.jit(make_denoise(Branched(rec, params, 5, 4), y, g, active))(x, t)
  assert rec.batches == [9]  # three branches, one call
  f = jax.jit(lambda tt, yy: rec.model.apply({"params": params}, x, tt, yy))
  c, u, n = f(t, y), f(t, jnp.full_like(y, 5)), f(jnp.full_like(t, 1001.0), y)
  want = c[..., :4] + 0.5 * (c[..., :4] - u[..., :4]) + 2.0 * (c[..., :4] - n[..., :4])
  np.testing.assert_allclose(out[..., :4], want, atol=1e-5)
  np.testing.assert_allclose(out[..., 4:], c[..., 4:], atol=1e-5)  # variance from the conditional branch


def test_nag_alone_is_paper_eq11_and_nested_form(params):
  x, t, y = inputs()
  f = jax.jit(lambda tt, yy: DiT(CFG).apply({"params": params}, x, tt, yy)[..., :4])
  c, n = f(t, y), f(jnp.full_like(t, 1001.0), y)
  g = GuidanceConfig(nag_scale=3.0, pseudo_level=1001.0)
  out = jax.jit(make_denoise(Branched(Recorder(), params, 5, 4), y, g, g.active_terms(0.5)))(x, t)
  np.testing.assert_allclose(out[..., :4], 4.0 * c - 3.0 * n, atol=1e-5)
  g = GuidanceConfig(cfg_scale=1.2, nag_scale=2.0, nag_form="nested", pseudo_level=1001.0)
  rec = Recorder()
  out = jax.jit(make_denoise(Branched(rec, params, 5, 4), y, g, g.active_terms(0.5)))(x, t)
  assert rec.batches == [12]
  null = jnp.full_like(y, 5)
  u, un = f(t, null), f(jnp.full_like(t, 1001.0), null)
  cn, uu = 3 * c - 2 * n, 3 * u - 2 * un
  np.testing.assert_allclose(out[..., :4], uu + 1.2 * (cn - uu), atol=1e-5)


def test_official_three_channel_cfg_matches_fixture(fixtures_dir):
  d = fixtures_dir / "dit_official"
  sd, _ = read_state_dict(d / "model.pt")
  config = infer_config(sd, "dit", num_heads=4)
  params = torch_to_flax(sd, config)
  io = np.load(d / "io.npz")
  nhwc = lambda a: np.transpose(a, (0, 2, 3, 1))
  g = GuidanceConfig(cfg_scale=float(io["cfg_scale"]), cfg_channels=3)
  model = DiT(config)
  apply = lambda p, x, t, y: model.apply({"params": p}, x, t, y)
  denoise = make_denoise(Branched(apply, params, 10, 4), jnp.asarray(io["cfg_y"][:4]), g, g.active_terms(0.5))
  out = jax.jit(denoise)(nhwc(io["cfg_x"][:4]), io["cfg_t"][:4].astype(np.float32))
  assert np.abs(np.asarray(out) - nhwc(io["cfg_out"][:4])).max() < 1e-4


@pytest.mark.parametrize("method", ["ddpm", "sde"])
def test_off_terms_add_no_branch_and_match_unguided(params, method):
  config = CFG if method == "ddpm" else CFG.replace(family="sit")
  key, y = jax.random.key(3), jnp.asarray([1, 2])
  jaxprs = {}
  for name, g in [("plain", GuidanceConfig()), ("zero", GuidanceConfig(cfg_scale=1.0, nag_scale=0.0)),
                  ("empty", GuidanceConfig(nag_scale=2.0, nag_interval=(0.3, 0.3))),
                  ("nag", GuidanceConfig(nag_scale=2.0))]:
    fn = build_sampler(config, SamplerConfig(method=method, num_steps=8), g, jit=False)
    jaxprs[name] = str(jax.make_jaxpr(lambda p, fn=fn: fn(p, key, y)["latents"])(params))
  assert jaxprs["plain"] == jaxprs["zero"] == jaxprs["empty"]  # the same program: same samples, no branch
  assert jaxprs["nag"] != jaxprs["plain"] and "f32[4,8,8,4]" in jaxprs["nag"] and "f32[4,8,8,4]" not in jaxprs["plain"]


def test_interval_limits_the_branch_to_its_steps(params):
  g = GuidanceConfig(nag_scale=1.0, nag_interval=(0.0, 0.5), pseudo_level=1001.0)
  rec = Recorder()
  nu = np.linspace(1, 0, 10)
  segs = make_segments(Branched(rec, params, 5, 4), jnp.asarray([1, 2, 3]), g, nu)
  assert [(a, b) for a, b, _ in segs] == [(0, 5), (5, 10)]
  x, t, _ = inputs()
  for _, _, fn in segs:
    jax.eval_shape(fn, x, t)
  assert rec.batches == [3, 6]


@pytest.mark.parametrize("kwargs,needle", [
    (dict(nag_scale=-1.0), "nag_scale must be >= 0"),
    (dict(cfg_scale=0.5), "cfg_scale must be >= 1"),
    (dict(nag_interval=(0.2, 1.5)), "nag_interval must satisfy"),
    (dict(nag_form="five"), "nag_form must be one of"),
])
def test_bad_guidance_is_refused(kwargs, needle):
  with pytest.raises(ValueError, match=needle):
    GuidanceConfig(**kwargs)


def test_bad_sampler_and_pseudo_level_are_refused():
  with pytest.raises(ValueError, match="inside the trained range"):
    build_sampler(CFG, SamplerConfig(num_steps=5), GuidanceConfig(nag_scale=1.0, pseudo_level=500.0))
  with pytest.raises(ValueError, match="inside the trained range"):
    build_sampler(CFG.replace(family="sit"), SamplerConfig(method="sde"), GuidanceConfig(pseudo_level=0.5))
  with pytest.raises(ValueError, match="unknown sampling method for dit 'sde'"):
    build_sampler(CFG, SamplerConfig(method="sde"), GuidanceConfig())
  with pytest.raises(ValueError, match="num_steps must be >= 1"):
    build_sampler(CFG, SamplerConfig(num_steps=0), GuidanceConfig())
  with pytest.raises(ValueError, match="unknown diffusion form"):
    build_sampler(CFG.replace(family="sit"), SamplerConfig(method="sde", diffusion_form="cubic"), GuidanceConfig())
  with pytest.raises(ValueError, match="needs parent_config"):
    build_sampler(CFG, SamplerConfig(num_steps=5), GuidanceConfig(dog_scale=1.5))
