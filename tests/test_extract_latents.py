"""extract_latents end to end: image folder -> tiny VAE -> array_record -> LatentSource, both flips."""
import jax
import numpy as np
from PIL import Image

from nag_jax import data, extract_latents
from nag_jax.checkpoints.vae_convert import save_vae
from nag_jax.models.vae import AutoencoderKL, VAEConfig, dummy_images
from nag_jax.models.vae_io import encode


def test_folder_to_latents_matches_direct_encoding(tmp_path):
  config = VAEConfig(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4, latent_channels=4,
                     down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
  module = AutoencoderKL(config)
  params = jax.jit(module.init)(jax.random.key(0), dummy_images(config))["params"]
  save_vae(tmp_path / "vae", params, config)
  rng = np.random.default_rng(0)
  for cls in ("cat", "dog"):
    (tmp_path / "imgs" / cls).mkdir(parents=True)
    for i in range(3):
      Image.fromarray(rng.integers(0, 256, (20, 24, 3), np.uint8)).save(tmp_path / "imgs" / cls / f"{i}.png")
  assert extract_latents.main(["--src", str(tmp_path / "imgs"), "--vae", str(tmp_path / "vae"), "--dst",
                               str(tmp_path / "lat"), "--image-size", "16", "--mode", "--batch-size", "4"]) == 0
  assert sorted(p.name for p in tmp_path.iterdir()) == ["imgs", "lat", "vae"]  # the staging folder renamed
  source = data.LatentSource(tmp_path / "lat")
  folder = data.FolderSource(tmp_path / "imgs", image_size=16)
  assert len(source) == 6 and source.num_classes == 2
  images = np.stack([folder[i]["x"] for i in range(6)])
  want = np.asarray(encode(module, params, images, None, mode=True))
  want_flip = np.asarray(encode(module, params, images[:, :, ::-1], None, mode=True))
  for i in range(6):
    rec = source[i]
    assert rec["y"] == folder[i]["y"] and rec["x"].shape == (2, 8, 8, 4)
    np.testing.assert_allclose(rec["x"][0], want[i], atol=1e-5)
    np.testing.assert_allclose(rec["x"][1], want_flip[i], atol=1e-5)
