"""Flax DiT/SiT against the official PyTorch code: the shared fixture and a torch reference."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nag_jax.checkpoints.dit_convert import infer_config, torch_to_flax
from nag_jax.checkpoints.torch_io import read_state_dict
from nag_jax.models import DiT, ModelConfig
from tests.reference.cfg_forward import forward_with_cfg
from tests.torch_helpers import nhwc, random_reference, state_dict_numpy, torch

TOL = 1e-4


@pytest.fixture(scope="module")
def fixture(fixtures_dir):
  d = fixtures_dir / "dit_official"
  return d, dict(np.load(d / "io.npz")), json.loads((d / "config.json").read_text())


def _convert(sd, family="dit", num_heads=None):
  config = infer_config(sd, family, num_heads)
  return DiT(config), torch_to_flax(sd, config), config


def test_torch_reference_reproduces_fixture(fixture):
  """The transcribed torch reference used below computes the fixture's outputs exactly."""
  d, io, cfg = fixture
  from tests.reference.official_dit import DiT as TorchDiT  # pylint: disable=import-outside-toplevel
  keys = ["input_size", "patch_size", "in_channels", "hidden_size", "depth", "num_heads", "mlp_ratio",
          "class_dropout_prob", "num_classes", "learn_sigma"]
  model = TorchDiT(**{k: cfg[k] for k in keys}).eval()
  model.load_state_dict(torch.load(d / "model.pt", weights_only=True), strict=True)
  with torch.no_grad():
    out = model(torch.from_numpy(io["x"]), torch.from_numpy(io["t"]), torch.from_numpy(io["y"]))
  assert np.abs(out.numpy() - io["out"]).max() < 1e-5


@pytest.mark.parametrize("ckpt", ["model.pt", "train_ckpt.pt"])
def test_fixture_forward_and_cfg(fixture, ckpt):
  d, io, _ = fixture
  sd, taken = read_state_dict(d / ckpt)
  assert ("ema" in taken) == (ckpt == "train_ckpt.pt")
  model, params, config = _convert(sd, num_heads=4)
  assert config.learn_sigma and config.num_classes == 10 and config.input_size == 8
  out = model.apply({"params": params}, nhwc(io["x"]), io["t"].astype(np.float32), io["y"].astype(np.int32))
  assert np.abs(np.asarray(out) - nhwc(io["out"])).max() < TOL
  cfg_out = forward_with_cfg(model, params, nhwc(io["cfg_x"]), io["cfg_t"].astype(np.float32),
                             io["cfg_y"].astype(np.int32), float(io["cfg_scale"]))
  assert np.abs(np.asarray(cfg_out) - nhwc(io["cfg_out"])).max() < TOL


def test_fixture_intermediates(fixture):
  """Patch embedding, t/y embeddings and block outputs match the recorded activations."""
  d, io, _ = fixture
  model, params, _ = _convert(read_state_dict(d / "model.pt")[0], num_heads=4)
  x, t, y = nhwc(io["x"][:2]), io["t"][:2].astype(np.float32), io["y"][:2].astype(np.int32)
  _, state = model.apply({"params": params}, x, t, y, capture_intermediates=True)
  inter = jax.tree.map(np.asarray, state["intermediates"])
  np.testing.assert_allclose(inter["x_embedder"]["__call__"][0].reshape(2, 16, 64), io["inter_x_embed"], atol=TOL)
  np.testing.assert_allclose(inter["t_embedder"]["__call__"][0], io["inter_t_emb"], atol=TOL)
  np.testing.assert_allclose(inter["y_embedder"]["__call__"][0], io["inter_y_emb"], atol=TOL)
  for i in range(2):
    np.testing.assert_allclose(inter[f"blocks_{i}"]["__call__"][0], io[f"inter_block{i}_out"], atol=TOL)
  np.testing.assert_allclose(inter["final_layer"]["__call__"][0], io["inter_final_tokens"], atol=TOL)


@pytest.mark.parametrize("kw", [
    dict(sit=True, learn_sigma=True, input_size=8, patch_size=2),
    dict(sit=True, learn_sigma=False, input_size=12, patch_size=2),   # grid 6: not a power of two
    dict(sit=False, learn_sigma=False, input_size=20, patch_size=4),  # grid 5
    dict(sit=False, learn_sigma=True, input_size=16, patch_size=8, num_classes=3, mlp_ratio=2.0),
])
def test_random_configs_match_torch(kw):
  kw = dict(kw)
  sit = kw.pop("sit")
  args = {"hidden_size": 48, "depth": 2, "num_heads": 3, "num_classes": 7, **kw}
  ref = random_reference(seed=1, sit=sit, **args)
  model, params, config = _convert(state_dict_numpy(ref), "sit" if sit else "dit", num_heads=3)
  assert config.learn_sigma == kw["learn_sigma"]
  rng = np.random.default_rng(0)
  x = rng.standard_normal((3, config.in_channels, config.input_size, config.input_size)).astype(np.float32)
  t = (rng.uniform(0, 1, 3) if sit else rng.integers(0, 1000, 3)).astype(np.float32)
  y = np.array([0, config.num_classes, 2])
  with torch.no_grad():
    want = ref(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(y))
  got = model.apply({"params": params}, nhwc(x), t, y)
  assert got.shape == nhwc(want).shape
  assert np.abs(np.asarray(got) - nhwc(want)).max() < TOL


@pytest.mark.parametrize("attention", ["folded", "xla", "splash-interpret", "flash-interpret"])
def test_attention_backends_match_torch_forward_and_gradients(attention):
  """Each float32 attention core gives torch's outputs and torch autograd's parameter gradients."""
  ref = random_reference(seed=4, input_size=8, patch_size=2, hidden_size=48, depth=2, num_heads=3, num_classes=5)
  model, params, config = _convert(state_dict_numpy(ref), num_heads=3)
  model = DiT(config.replace(attention=attention))
  rng = np.random.default_rng(3)
  x, w = (rng.standard_normal(s).astype(np.float32) for s in ((3, 4, 8, 8), (3, 8, 8, 8)))
  t, y = np.array([3.0, 400.0, 999.0], np.float32), np.array([0, 5, 2])
  out = ref(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(y))
  (out * torch.from_numpy(w)).sum().backward()
  grads_sd = {k: v.grad.numpy() for k, v in ref.named_parameters() if k != "pos_embed"}  # pos_embed: fixed
  want = torch_to_flax({**state_dict_numpy(ref), **grads_sd}, config)

  def loss(p):
    got = model.apply({"params": p}, nhwc(x), t, y)
    return jnp.sum(got * nhwc(w)), got
  grads, got = jax.grad(loss, has_aux=True)(params)
  assert np.abs(np.asarray(got) - nhwc(out)).max() < TOL
  flat_want, flat_got = jax.tree.leaves(want), jax.tree.leaves(grads)
  scale = max(np.abs(g).max() for g in flat_want)
  assert len(flat_want) == len(flat_got) and scale > 1e-2
  assert max(float(np.abs(np.asarray(g) - h).max()) for g, h in zip(flat_got, flat_want)) < TOL * scale


def test_four_channel_cfg_variant():
  ref = random_reference(seed=2, input_size=8, patch_size=2, hidden_size=32, depth=1, num_heads=2, num_classes=5)
  model, params, _ = _convert(state_dict_numpy(ref), num_heads=2)
  rng = np.random.default_rng(1)
  z = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
  x, t, y = np.concatenate([z, z]), np.array([10, 500, 10, 500], np.float32), np.array([1, 2, 5, 5])
  with torch.no_grad():
    out = ref(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(y)).numpy()
  cond, uncond = out[:2, :4], out[2:, :4]
  guided = uncond + 2.5 * (cond - uncond)
  want = np.concatenate([np.concatenate([guided, out[:2, 4:]], 1), np.concatenate([guided, out[2:, 4:]], 1)])
  got = forward_with_cfg(model, params, nhwc(x), t, y, 2.5, guide_channels=4)
  assert np.abs(np.asarray(got) - nhwc(want)).max() < TOL


def test_bfloat16_compute_close_to_float32():
  ref = random_reference(seed=3, input_size=8, patch_size=2, hidden_size=64, depth=2, num_heads=4, num_classes=5)
  _, params, config = _convert(state_dict_numpy(ref), num_heads=4)
  rng = np.random.default_rng(2)
  x = rng.standard_normal((2, 8, 8, 4)).astype(np.float32)
  t, y = np.array([3.0, 700.0], np.float32), np.array([1, 5])
  f32 = np.asarray(DiT(config).apply({"params": params}, x, t, y))
  bf16 = DiT(config.replace(dtype="bfloat16")).apply({"params": params}, x, t, y)
  assert bf16.dtype == jnp.float32 and all(p.dtype == np.float32 for p in jax.tree.leaves(params))
  rel = np.abs(np.asarray(bf16) - f32).max() / np.abs(f32).max()
  assert 0 < rel < 0.05


def test_bad_input_shape_is_named():
  config = ModelConfig(input_size=8, hidden_size=32, depth=1, num_heads=2, num_classes=3)
  with pytest.raises(ValueError, match=r"expected x of shape \(B, 8, 8, 4\)"):
    jax.eval_shape(DiT(config).init, jax.random.key(0), jnp.zeros((1, 4, 8, 8)), jnp.zeros(1), jnp.zeros(1, int))
