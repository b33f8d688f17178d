"""The training loop's sample grid: the same seed and labels without and with NAG, decoded by an SD-VAE."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nag_jax.checkpoints.vae_convert import save_vae
from nag_jax.guidance import GuidanceConfig
from nag_jax.models import ModelConfig, init_params
from nag_jax.models.vae import AutoencoderKL, VAEConfig, dummy_images
from nag_jax.models.vae_io import decode_to_uint8
from nag_jax.sampling import images
from nag_jax.sampling.pipeline import SamplerConfig, build_sampler
from nag_jax.sharding import make_mesh
from nag_jax.training import ConfigError, get_base_config, samples, validate

SIT = ModelConfig(family="sit", input_size=4, patch_size=2, in_channels=4, hidden_size=32, depth=1, num_heads=2,
                  num_classes=10)
VAE = VAEConfig(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4, latent_channels=4,
                down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)


@pytest.fixture(scope="module")
def vae():
  module = AutoencoderKL(VAE)
  return module, jax.jit(module.init)(jax.random.key(0), dummy_images(VAE))["params"]


def test_grid_rows_are_the_decoded_samples_without_and_with_nag(vae):
  params = jax.tree.map(lambda a: a + 0.05 * jax.random.normal(jax.random.key(1), a.shape),
                        init_params(SIT, jax.random.key(0)))
  mesh = make_mesh({"data": 1}, devices=jax.devices()[:1])
  shardings = jax.tree.map(lambda a: a.sharding, jax.device_put(params, jax.devices()[0]))
  sc = get_base_config().sample
  sc.update(dict(num_images=3, num_steps=4, nag_scale=2.0))
  grid = samples.make_sample_grid_fn(SIT, sc, mesh, shardings, seed=5, vae=vae)(params)
  rows = []
  for w in (0.0, 2.0):  # the reference: the plain sampler, then the VAE, outside the grid's compiled call
    latents = build_sampler(SIT, SamplerConfig(method="sde", num_steps=4), GuidanceConfig(nag_scale=w))(
        params, jax.random.key(5), jnp.arange(3) % 10)["latents"]
    rows.append(np.asarray(decode_to_uint8(vae[0], vae[1], latents)))
  want = images.grid(rows)
  assert grid.shape == want.shape == (2 * 10, 3 * 10, 3) and grid.dtype == np.uint8
  assert np.abs(grid.astype(int) - want).max() <= 1 and (grid == want).mean() > 0.99
  assert np.abs(rows[0].astype(int) - rows[1]).max() > 0  # NAG changed the samples


def latent_config(**sample):
  c = get_base_config()
  c.data.path = "/data/latents"
  c.sample.update(sample)
  return c


def test_sample_vae_must_be_a_converted_vae_of_the_model_latents(vae, tmp_path):
  save_vae(tmp_path / "vae", vae[1], VAE)
  validate(latent_config(vae=str(tmp_path / "vae")))  # 4 latent channels, as DiT-XL/2 takes
  c = latent_config(vae=str(tmp_path / "vae"))
  c.model.in_channels = 3
  with pytest.raises(ConfigError, match="sample.vae has 4 latent channels but model.in_channels is 3"):
    validate(c)
  with pytest.raises(ConfigError, match="is not a usable AutoencoderKL config"):
    validate(latent_config(vae=str(tmp_path)))
  (tmp_path / "diffusers").mkdir()
  (tmp_path / "diffusers" / "config.json").write_text((tmp_path / "vae" / "config.json").read_text())
  with pytest.raises(ConfigError, match="is not a converted VAE"):
    validate(latent_config(vae=str(tmp_path / "diffusers")))
  c = latent_config(vae=str(tmp_path / "vae"))
  c.data.kind, c.data.image_size, c.model.input_size = "digits", 8, 8
  with pytest.raises(ConfigError, match="sample.vae decodes latents, but data.kind is 'digits'"):
    validate(c)
