"""SD-VAE: parity with diffusers' PyTorch AutoencoderKL (random weights, nothing downloaded) and conversion."""
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

# pylint: disable=wrong-import-position
from nag_jax.checkpoints import vae_convert
from nag_jax.convert_vae import main as convert_main
from nag_jax.models import vae_io
from nag_jax.models.vae import AutoencoderKL, VAEConfig, abstract_params

TOL = 1e-4


def _layout(channels, **kw):
  n = len(channels)
  return dict(block_out_channels=list(channels), down_block_types=["DownEncoderBlock2D"] * n,
              up_block_types=["UpDecoderBlock2D"] * n, **kw)


CONFIGS = {
    "tiny": _layout((8, 16), layers_per_block=1, norm_num_groups=4),
    # The SD-VAE block layout (4 blocks, 2 layers, mid attention), fewer channels.
    "sd_layout": _layout((16, 32, 64, 64), layers_per_block=2, norm_num_groups=8),
    "variant": _layout((8, 16), layers_per_block=1, norm_num_groups=4, act_fn="gelu", latent_channels=3,
                       use_quant_conv=False, use_post_quant_conv=False, mid_block_add_attention=False,
                       scaling_factor=0.5, shift_factor=0.1),
}
# stabilityai/sd-vae-ft-ema config.json (-mse is the same architecture).
SD_VAE_FT_EMA = {
    "_class_name": "AutoencoderKL", "_diffusers_version": "0.4.2", "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 3,
    "sample_size": 256, "scaling_factor": 0.18215, "up_block_types": ["UpDecoderBlock2D"] * 4,
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  """name -> (torch model, diffusers folder); GroupNorm and bias params randomised too."""
  cache = {}

  def get(name):
    if name not in cache:
      torch.manual_seed(len(cache))
      model = diffusers.AutoencoderKL(**CONFIGS[name]).eval()
      with torch.no_grad():
        for p in model.parameters():
          if p.ndim == 1:
            p.add_(0.1 * torch.randn_like(p))
      folder = tmp_path_factory.mktemp(name)
      model.save_pretrained(folder)
      cache[name] = model, folder
    return cache[name]

  return get


def _nchw(a):
  return np.asarray(a).transpose(0, 3, 1, 2)


def _nhwc(t):
  return jnp.asarray(t.detach().numpy().transpose(0, 2, 3, 1))


def _images(config, batch=2):
  """Non-square images in [-1, 1] (catches H/W mix-ups), NCHW torch."""
  f = 2 ** (len(config["block_out_channels"]) - 1)
  return torch.rand(batch, 3, 4 * f, 6 * f, generator=torch.Generator().manual_seed(0)) * 2 - 1


def _jitted(module, method):
  return jax.jit(lambda p, x: module.apply({"params": p}, x, method=method))


def _converted(saved, name):
  model, folder = saved(name)
  config, sd = vae_convert.read_diffusers(folder)
  return model, AutoencoderKL(config), vae_convert.torch_to_flax(sd, config)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_encoder_moments_and_decoder_match_diffusers(saved, name):
  model, module, params = _converted(saved, name)
  x = _images(CONFIGS[name])
  with torch.no_grad():
    post = model.encode(x).latent_dist
    out = model.decode(post.mean).sample
  enc = _jitted(module, AutoencoderKL.encode)(params, _nhwc(x))
  dec = _jitted(module, AutoencoderKL.decode)(params, _nhwc(post.mean))
  errs = {"mean": np.abs(_nchw(enc.mean) - post.mean.numpy()).max(),
          "logvar": np.abs(_nchw(enc.logvar) - post.logvar.numpy()).max(),
          "decoded": np.abs(_nchw(dec) - out.numpy()).max()}
  print(f"\n{name}: max abs error " + ", ".join(f"{k} {v:.2e}" for k, v in errs.items()))
  assert max(errs.values()) <= TOL, errs


def test_encode_and_decode_to_uint8_follow_the_official_scripts(saved):
  model, module, params = _converted(saved, "variant")
  cfg = CONFIGS["variant"]
  images = np.asarray((_images(cfg) + 1) * 127.5, np.uint8).transpose(0, 2, 3, 1)
  with torch.no_grad():
    post = model.encode(torch.from_numpy(images.transpose(0, 3, 1, 2)).float() / 127.5 - 1).latent_dist
  mean, std = _nhwc(post.mean), _nhwc(post.std)
  z = jax.jit(lambda p, x: vae_io.encode(module, p, x, None, mode=True))(params, jnp.asarray(images))
  np.testing.assert_allclose(z, (mean - cfg["shift_factor"]) * cfg["scaling_factor"], atol=TOL)
  key = jax.random.key(3)
  z = jax.jit(lambda p, x, k: vae_io.encode(module, p, x, k))(params, jnp.asarray(images), key)
  noise = (z / cfg["scaling_factor"] + cfg["shift_factor"] - mean) / std
  np.testing.assert_allclose(noise, jax.random.normal(key, mean.shape), atol=1e-3)
  with pytest.raises(ValueError, match="key"):
    vae_io.encode(module, params, jnp.asarray(images), None)

  latents = (mean - cfg["shift_factor"]) * cfg["scaling_factor"]
  with torch.no_grad():
    ref = torch.clamp(127.5 * model.decode(post.mean).sample + 128.0, 0, 255).to(torch.uint8).numpy()
  images = np.asarray(jax.jit(lambda p, z: vae_io.decode_to_uint8(module, p, z))(params, latents))
  got = _nchw(images)
  diff = np.abs(got.astype(int) - ref.astype(int))
  assert got.dtype == np.uint8 and diff.max() <= 1 and (diff == 0).mean() > 0.99

  many = np.concatenate([latents, latents[:1]])  # two batches of 2, the last one padded
  batched = vae_io.decode_in_batches(module, params, many, batch_size=2, progress=True)
  np.testing.assert_array_equal(batched, np.concatenate([images, images[:1]]))
  assert vae_io.decode_in_batches(module, params, many[:0], batch_size=2).shape == (0,) + batched.shape[1:]


def test_bin_file_and_deprecated_attention_names_convert_identically(saved, tmp_path):
  model, folder = saved("tiny")
  ref = _converted(saved, "tiny")[2]
  model.save_pretrained(tmp_path / "bin", safe_serialization=False)
  assert (tmp_path / "bin" / "diffusion_pytorch_model.bin").is_file()
  old = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
  sd = {}
  for k, v in model.state_dict().items():
    for new, dep in old.items():
      k = k.replace(f".{new}.", f".{dep}.")
    sd[k] = v.contiguous()
  assert any(".proj_attn." in k for k in sd)
  (tmp_path / "old").mkdir()
  (tmp_path / "old" / "config.json").write_text((folder / "config.json").read_text())
  from safetensors.torch import save_file  # pylint: disable=import-outside-toplevel
  save_file(sd, tmp_path / "old" / "weights.safetensors")
  for src in (tmp_path / "bin", tmp_path / "old" / "weights.safetensors"):
    config, sd = vae_convert.read_diffusers(src)
    jax.tree.map(np.testing.assert_array_equal, vae_convert.torch_to_flax(sd, config), ref)


def test_flax_to_torch_round_trip_loads_strictly(saved):
  model, _, params = _converted(saved, "sd_layout")
  sd = vae_convert.flax_to_torch(params)
  fresh = diffusers.AutoencoderKL(**CONFIGS["sd_layout"])
  fresh.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)
  for k, v in model.state_dict().items():
    np.testing.assert_array_equal(fresh.state_dict()[k].numpy(), v.numpy(), err_msg=k)


def test_cli_writes_orbax_that_load_vae_restores(saved, tmp_path, capsys):
  model, folder = saved("tiny")
  dst = tmp_path / "vae"
  convert_main(["--src", str(folder), "--dst", str(dst)])
  module, params, config = vae_convert.load_vae(dst)
  assert config == VAEConfig.from_dict(json.loads((folder / "config.json").read_text()))
  z = torch.randn(2, 4, 3, 5)
  with torch.no_grad():
    ref = model.decode(z).sample.numpy()
  got = _jitted(module, AutoencoderKL.decode)(params, _nhwc(z))
  assert np.abs(_nchw(got) - ref).max() <= TOL

  before = {p: p.stat().st_mtime_ns for p in dst.rglob("*")}
  assert convert_main(["--src", str(folder), "--dst", str(dst)]) == 2
  assert "--overwrite" in capsys.readouterr().err
  assert {p: p.stat().st_mtime_ns for p in dst.rglob("*")} == before
  convert_main(["--src", str(folder), "--dst", str(dst), "--overwrite"])
  assert vae_convert.load_vae(dst)[2] == config


def test_bad_inputs_exit_with_a_message_and_write_nothing(saved, tmp_path, capsys):
  _, tiny = saved("tiny")
  _, sd_layout = saved("sd_layout")
  (tmp_path / "no_weights").mkdir()
  (tmp_path / "no_weights" / "config.json").write_text((tiny / "config.json").read_text())
  (tmp_path / "no_config").mkdir()
  (tmp_path / "no_config" / "diffusion_pytorch_model.safetensors").write_bytes(
      (tiny / "diffusion_pytorch_model.safetensors").read_bytes())
  (tmp_path / "mismatch").mkdir()
  (tmp_path / "mismatch" / "config.json").write_text((tiny / "config.json").read_text())
  (tmp_path / "mismatch" / "diffusion_pytorch_model.safetensors").write_bytes(
      (sd_layout / "diffusion_pytorch_model.safetensors").read_bytes())
  cfg = json.loads((tiny / "config.json").read_text())
  (tmp_path / "latent8").mkdir()
  (tmp_path / "latent8" / "config.json").write_text(json.dumps({**cfg, "latent_channels": 8}))
  (tmp_path / "latent8" / "diffusion_pytorch_model.safetensors").write_bytes(
      (tiny / "diffusion_pytorch_model.safetensors").read_bytes())
  (tmp_path / "unknown_field").mkdir()
  (tmp_path / "unknown_field" / "config.json").write_text(json.dumps({**cfg, "norm_type": "spatial"}))
  (tmp_path / "unknown_field" / "diffusion_pytorch_model.safetensors").write_bytes(
      (tiny / "diffusion_pytorch_model.safetensors").read_bytes())
  cases = {
      "missing": (tmp_path / "missing", "does not exist"),
      "no_weights": (tmp_path / "no_weights", "holds none of"),
      "no_config": (tmp_path / "no_config", "no config.json"),
      "no_config_file": (tmp_path / "no_config" / "diffusion_pytorch_model.safetensors", "no config.json"),
      "mismatch": (tmp_path / "mismatch",
                   r"2 missing keys: .*; 126 unexpected keys: .*; 116 shape mismatches: "),
      "latent8": (tmp_path / "latent8", r"described by config.json: 7 shape mismatches: "
                                        r"decoder\.conv_in\.weight \(16, 4, 3, 3\) \(model: \(16, 8, 3, 3\)\)"),
      "unknown_field": (tmp_path / "unknown_field", r"unknown AutoencoderKL config fields \['norm_type'\]"),
  }
  for name, (src, message) in cases.items():
    dst = tmp_path / f"out_{name}"
    assert convert_main(["--src", str(src), "--dst", str(dst)]) == 2, name
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and re.match(f"error: .*{message}", err), (name, err)
    assert not dst.exists(), name
  assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no staging left


def test_full_sd_vae_config_matches_diffusers_shapes_and_parameter_count(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps(SD_VAE_FT_EMA))
  config = vae_convert.read_config(tmp_path)
  with torch.device("meta"):  # shapes only: nothing allocated or run
    model = diffusers.AutoencoderKL.from_config(SD_VAE_FT_EMA)
    post = model.encode(torch.empty(2, 3, 256, 256)).latent_dist
    decoded = model.decode(post.mean).sample
  shapes = vae_convert.expected_torch_shapes(config)
  assert shapes == {k: tuple(v.shape) for k, v in model.state_dict().items()}
  n_torch = sum(p.numel() for p in model.parameters())
  assert sum(s.size for s in jax.tree.leaves(abstract_params(config))) == n_torch == 83_653_863
  module = AutoencoderKL(config)
  params = abstract_params(config)
  enc = jax.eval_shape(lambda p, x: module.apply({"params": p}, x, method=AutoencoderKL.encode),
                       params, jax.ShapeDtypeStruct((2, 256, 256, 3), jnp.float32))
  dec = jax.eval_shape(lambda p, z: vae_io.decode_to_uint8(module, p, z), params, enc.mean)
  assert _nchw(np.empty(enc.mean.shape)).shape == tuple(post.mean.shape)
  assert _nchw(np.empty(dec.shape)).shape == tuple(decoded.shape) and dec.dtype == jnp.uint8


def test_bfloat16_compute_keeps_float32_params_and_stays_close(saved):
  _, module, params = _converted(saved, "tiny")
  bf16 = AutoencoderKL(module.config, dtype=jnp.bfloat16)
  assert {s.dtype for s in jax.tree.leaves(jax.eval_shape(bf16.init, jax.random.key(0),
                                                          jnp.zeros((1, 8, 8, 3))))} == {np.dtype("float32")}
  z = jax.random.normal(jax.random.key(0), (2, 8, 12, 4))
  ref, low = (_jitted(m, AutoencoderKL.decode)(params, z) for m in (module, bf16))
  assert low.dtype == jnp.bfloat16
  err = np.abs(np.asarray(low, np.float32) - np.asarray(ref))
  print(f"\nbfloat16 decode vs float32: max abs {err.max():.3f}, mean abs {err.mean():.4f} "
        f"(output mean abs {np.abs(ref).mean():.3f})")
  assert err.mean() < 0.1 * np.abs(ref).mean(), err.mean()
