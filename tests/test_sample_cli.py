"""The sampling CLI on the converted shared tiny checkpoint: every sampler, resumability, pixels, errors."""
import json
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from nag_jax import checkpoints, convert, sample
from nag_jax.sampling.config import default_sample_config


@pytest.fixture(scope="module")
def tiny_dirs(fixtures_dir, tmp_path_factory):
  root = tmp_path_factory.mktemp("ckpt")
  src = fixtures_dir / "dit_official" / "model.pt"
  for family in ("dit", "sit"):  # DiT and SiT share the checkpoint layout
    assert convert.main(["--src", str(src), "--dst", str(root / family), "--family", family,
                         "--num-heads", "4"]) == 0
  return root


def config(tiny_dirs, tmp_path, family, preset="nag_cfg", **sampler):
  c = default_sample_config(family, preset)
  c.checkpoint = str(tiny_dirs / family)
  c.out_dir = str(tmp_path / "out")
  c.num_samples, c.batch_size = 6, 4
  c.sampler.num_steps = 6
  c.sampler.update(sampler)
  return c


@pytest.mark.parametrize("family,sampler", [
    ("dit", dict(method="ddpm")), ("dit", dict(method="ddim", eta=0.5)),
    ("sit", dict(method="sde")), ("sit", dict(method="sde", sde_method="Heun", diffusion_form="linear")),
    ("sit", dict(method="ode", ode_method="euler")), ("sit", dict(method="ode", ode_method="heun2")),
    ("sit", dict(method="ode", ode_method="midpoint")), ("sit", dict(method="ode", ode_method="dopri5")),
])
def test_every_sampler_runs_from_the_cli_config(tiny_dirs, tmp_path, family, sampler):
  out = pathlib.Path(sample.run(config(tiny_dirs, tmp_path, family, **sampler)))
  with np.load(out / "latents.npz") as f:
    latents, labels = f["latents"], f["labels"]
  assert latents.shape == (6, 8, 8, 4) and np.isfinite(latents).all() and latents.std() > 0.05
  assert labels.shape == (6,) and labels.max() < 10
  assert (out / "grid.png").exists() and (out / "run.json").exists()


def test_resume_skips_written_batches_and_gives_the_same_samples(tiny_dirs, tmp_path):
  c = config(tiny_dirs, tmp_path, "dit", preset="nag")
  c.pixel_space, c.num_samples = True, 8
  out = pathlib.Path(sample.run(c))
  first = np.load(out / "samples.npz")["arr_0"]
  assert first.dtype == np.uint8 and first.shape == (8, 8, 8, 4)
  parts = sorted((out / "parts").iterdir())
  kept_mtime = parts[0].stat().st_mtime_ns
  parts[1].unlink()
  sample.run(c)
  assert parts[0].stat().st_mtime_ns == kept_mtime  # not recomputed
  np.testing.assert_array_equal(np.load(out / "samples.npz")["arr_0"], first)


def test_given_labels_and_bad_labels(tiny_dirs, tmp_path):
  c = config(tiny_dirs, tmp_path, "dit", preset="cfg")
  c.labels = "3,7"
  out = pathlib.Path(sample.run(c))
  np.testing.assert_array_equal(np.load(out / "latents.npz")["labels"], [3, 7, 3, 7, 3, 7])
  c.labels, c.out_dir = "3,12", str(tmp_path / "bad")
  with pytest.raises(ValueError, match=r"class ids in \[0, 10\)"):
    sample.run(c)


def test_command_line_errors_are_one_sentence(tiny_dirs, tmp_path):
  base = [sys.executable, "-m", "nag_jax.sample", "--config", "configs/sample_dit.py:nag",
          f"--config.out_dir={tmp_path}"]
  r = subprocess.run(base, capture_output=True, text=True, cwd=str(_repo()))
  assert r.returncode != 0 and "--config.checkpoint is required" in r.stderr
  r = subprocess.run(base + [f"--config.checkpoint={tiny_dirs / 'dit'}", "--config.sampler.method=sde"],
                     capture_output=True, text=True, cwd=str(_repo()))
  assert r.returncode != 0 and "unknown sampling method for dit 'sde'" in r.stderr


def _repo():
  import pathlib  # pylint: disable=import-outside-toplevel
  return pathlib.Path(__file__).resolve().parents[1]


def test_vae_decoding_inside_the_sampler_writes_images(tiny_dirs, tmp_path):
  from nag_jax.checkpoints.vae_convert import save_vae  # pylint: disable=import-outside-toplevel
  from nag_jax.models.vae import AutoencoderKL, VAEConfig, dummy_images  # pylint: disable=import-outside-toplevel
  from nag_jax.models.vae_io import decode_to_uint8  # pylint: disable=import-outside-toplevel
  vae_cfg = VAEConfig(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4, latent_channels=4,
                      down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
  vae = AutoencoderKL(vae_cfg)
  vae_params = jax.jit(vae.init)(jax.random.key(0), dummy_images(vae_cfg))["params"]
  save_vae(tmp_path / "vae", vae_params, vae_cfg)
  c = config(tiny_dirs, tmp_path, "dit", preset="nag")
  c.vae = str(tmp_path / "vae")
  out = pathlib.Path(sample.run(c))
  images = np.load(out / "samples.npz")["arr_0"]
  assert images.dtype == np.uint8 and images.shape == (6, 16, 16, 3)
  c.vae, c.out_dir = "", str(tmp_path / "latents")
  latents = np.load(sample.run(c) / "latents.npz")["latents"]  # same seed: the same latents
  want = np.asarray(jax.jit(lambda z: decode_to_uint8(vae, vae_params, z))(latents))
  assert np.abs(want.astype(int) - images.astype(int)).max() <= 1


def test_the_pseudo_level_stored_with_a_model_is_the_default(tiny_dirs, tmp_path):
  _, params, model_cfg = checkpoints.load(tiny_dirs / "sit")
  checkpoints.save(tmp_path / "sit-1.5", params, model_cfg, pseudo_level=1.5)
  c = config(tiny_dirs, tmp_path, "sit", preset="nag")
  runs = {}
  for name, ckpt, level in (("stored", tmp_path / "sit-1.5", None), ("given", tiny_dirs / "sit", 1.5),
                            ("default", tiny_dirs / "sit", None)):
    c.checkpoint, c.out_dir, c.guidance.pseudo_level = str(ckpt), str(tmp_path / name), level
    out = pathlib.Path(sample.run(c))
    runs[name] = np.load(out / "latents.npz")["latents"]
    assert json.loads((out / "run.json").read_text())["guidance"]["pseudo_level"] == (
        None if name == "default" else 1.5)
  np.testing.assert_array_equal(runs["stored"], runs["given"])
  assert np.abs(runs["stored"] - runs["default"]).max() > 1e-3  # the pseudo level changes the NAG branch


def test_domain_guidance_takes_the_parent_model_from_the_cli(tiny_dirs, tmp_path):
  """--config.parent feeds Domain Guidance's pre-trained model: with the model itself as its parent, DoG's
  (w + 1) s(x|c) - w s_parent(x) is CFG with the same weight (the same network's unconditional branch)."""
  c = config(tiny_dirs, tmp_path, "dit", preset="none")
  c.guidance.update(dict(dog_scale=1.5, cfg_channels=None))
  with pytest.raises(ValueError, match="needs --config.parent"):
    sample.run(c)
  c.parent = c.checkpoint
  dog = np.load(pathlib.Path(sample.run(c)) / "latents.npz")["latents"]
  c = config(tiny_dirs, tmp_path / "cfg", "dit", preset="none")
  c.guidance.update(dict(cfg_scale=1.5, cfg_channels=None))
  cfg = np.load(pathlib.Path(sample.run(c)) / "latents.npz")["latents"]
  assert dog.std() > 0.05
  np.testing.assert_allclose(dog, cfg, atol=2e-5)
