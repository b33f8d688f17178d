"""The sampler's model rows per forward pass (SamplerConfig.row_chunk): same samples, the auto rule, bad values."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nag_jax.checkpoints.dit_convert import infer_config, torch_to_flax
from nag_jax.checkpoints.torch_io import read_state_dict
from nag_jax.guidance import GuidanceConfig
from nag_jax.models import get_model_config
from nag_jax import platform
from nag_jax.sampling import pipeline
from nag_jax.sampling.pipeline import SamplerConfig, build_sampler


@pytest.fixture(scope="module")
def fixture_model(fixtures_dir):
  sd = read_state_dict(fixtures_dir / "dit_official" / "model.pt")[0]
  config = infer_config(sd, "dit", 4)
  return config, torch_to_flax(sd, config)


@pytest.mark.parametrize("row_chunk", [3, 4, 7])
def test_passes_give_the_samples_of_one_pass(fixture_model, row_chunk):
  """NAG+CFG on 5 images = 15 rows a step: passes of 3 (5 full), 4 and 7 (a remainder) match one pass of 15."""
  config, params = fixture_model
  labels = jnp.arange(5) % config.num_classes
  out = {}
  for chunk in (15, row_chunk):
    sample = build_sampler(config, SamplerConfig(method="ddpm", num_steps=5, row_chunk=chunk),
                           GuidanceConfig(cfg_scale=1.5, nag_scale=2.0))
    out[chunk] = np.asarray(sample(params, jax.random.key(0), labels)["latents"])
  assert np.abs(out[row_chunk] - out[15]).max() <= 1e-6 * np.abs(out[15]).max()


def test_in_passes_calls_the_model_with_at_most_the_rows():
  seen = []

  def apply(p, x, t, y):
    seen.append(x.shape[0])
    return x * p + t[:, None] + y[:, None]
  x, t, y = jnp.arange(10.0).reshape(5, 2), jnp.arange(5.0), jnp.arange(5.0) * 10
  got = jax.jit(pipeline.in_passes(apply, 2))(3.0, x, t, y)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(apply(3.0, x, t, y)))
  assert seen[:2] == [2, 1]  # lax.map traces one pass of 2 rows, then the remaining row


def test_auto_rows_per_pass():
  """Auto: 8 DiT-S/2 rows at 256 px (the measured optimum), fewer for wider or longer models; all rows in one
  pass for several devices or for TPU devices (keyed on the devices compiled for, not jax.default_backend())."""
  assert platform.rows_per_pass(get_model_config("DiT-S/2", image_size=256), 0) == 8
  assert platform.rows_per_pass(get_model_config("DiT-XL/2", image_size=256), 0) == 2
  assert platform.rows_per_pass(get_model_config("DiT-S/2", image_size=512), 0) == 2
  assert platform.rows_per_pass(get_model_config("DiT-S/2", image_size=256), 5) == 5
  assert platform.rows_per_pass(get_model_config("DiT-S/2", image_size=256), 0, jax.devices()[:1] * 2) is None
  tpu = type("Device", (), {"platform": "tpu"})()
  assert platform.rows_per_pass(get_model_config("DiT-S/2", image_size=256), 0, [tpu]) is None


def test_bad_row_chunk_is_refused(monkeypatch):
  with pytest.raises(ValueError, match=r"row_chunk must be an integer >= 0, got -1"):
    SamplerConfig(row_chunk=-1).validate("dit")
  monkeypatch.setattr(jax, "device_count", lambda: 8)
  with pytest.raises(ValueError, match=r"row_chunk 4 needs a single device \(here 8\)"):
    SamplerConfig(row_chunk=4).validate("dit")
  SamplerConfig(row_chunk=0).validate("dit")
