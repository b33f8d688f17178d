"""FID InceptionV3: parity with pytorch-fid's PyTorch network (random weights in its file layout),
the resize paths, and the weight converter's validation.

pytorch-fid and torchvision are test-only dependencies installed with `--no-deps` into a private
folder (`NAG_TORCH_REF`, default ~/.cache/nag_jax/torch_ref) and used in a subprocess: PyPI's
torchvision is CUDA-built, its C ops cannot load beside CPU torch, and a broken torchvision on the
main path breaks diffusers. Only the ops' fake-kernel registrations are stubbed; the models are
torchvision's and pytorch-fid's own code.
"""
import importlib.util
import os
import pathlib
import subprocess
import sys
import textwrap

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nag_jax.evaluation import inception, inception_convert

TORCH_REF = pathlib.Path(os.environ.get("NAG_TORCH_REF",
                                        pathlib.Path.home() / ".cache/nag_jax/torch_ref"))

# Runs in a subprocess: random weights saved as pytorch-fid's weight file, loaded by pytorch-fid's
# own code from the torch hub cache (no download), outputs saved for the comparison.
_REFERENCE_SCRIPT = textwrap.dedent("""
  import os, sys, types
  sys.path.insert(0, sys.argv[2])
  import numpy as np, torch
  try:
    import torchvision
  except RuntimeError as e:  # CUDA-built wheel beside CPU torch: only the C ops fail to register.
    if "torchvision::nms" not in str(e):
      raise
    sys.modules["torchvision._meta_registrations"] = types.ModuleType("stub")
    import torchvision
  from pytorch_fid import inception as pfi

  out = sys.argv[1]
  net = torchvision.models.inception_v3(num_classes=1008, aux_logits=False, weights=None,
                                        init_weights=False)
  g = torch.Generator().manual_seed(0)
  sd = {}
  for k, v in net.state_dict().items():
    if k.endswith("conv.weight"):
      v = torch.randn(v.shape, generator=g) * (2.0 / v[0].numel()) ** 0.5
    elif k.endswith("bn.weight") or k.endswith("running_var"):
      v = torch.rand(v.shape, generator=g) + 0.5
    elif k.endswith("bn.bias") or k.endswith("running_mean") or k == "fc.bias":
      v = 0.1 * torch.randn(v.shape, generator=g)
    elif k == "fc.weight":
      v = torch.randn(v.shape, generator=g) / 2048 ** 0.5
    sd[k] = v
  hub = os.path.join(out, "hub")
  os.makedirs(os.path.join(hub, "checkpoints"))
  path = os.path.join(hub, "checkpoints", os.path.basename(pfi.FID_WEIGHTS_URL))
  torch.save(sd, path)
  torch.hub.set_dir(hub)
  model = pfi.InceptionV3([3], resize_input=True, normalize_input=True).eval()
  fc = pfi.fid_inception_v3().eval().fc
  images = np.random.default_rng(0).integers(0, 256, (2, 64, 80, 3), dtype=np.uint8)
  x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0  # pytorch-fid's ToTensor
  with torch.no_grad():
    pool = model(x)[0].flatten(1)
    logits = fc(pool)
  np.savez(os.path.join(out, "ref.npz"), images=images, pool=pool.numpy(), logits=logits.numpy(),
           weights=path)
""")


@pytest.fixture(scope="module")
def pytorch_fid_reference(tmp_path_factory):
  """Runs the reference script once; returns its outputs (images, pool, logits, weights path)."""
  pytest.importorskip("torch")
  if not ((TORCH_REF / "pytorch_fid").is_dir() or importlib.util.find_spec("pytorch_fid")):
    pytest.skip(f"pytorch-fid not found in {TORCH_REF}: pip install --no-deps --target {TORCH_REF} "
                "torchvision==0.28.0 pytorch-fid==0.3.0")
  out = tmp_path_factory.mktemp("pytorch_fid")
  script = out / "reference.py"
  script.write_text(_REFERENCE_SCRIPT)
  subprocess.run([sys.executable, str(script), str(out), str(TORCH_REF)], check=True, timeout=300)
  with np.load(out / "ref.npz") as f:
    return {k: f[k] for k in f.files}


def test_matches_pytorch_fid(pytorch_fid_reference):
  ref = pytorch_fid_reference
  model, variables = inception_convert.load_inception(str(ref["weights"]))
  pool, logits = jax.jit(model.apply)(variables, ref["images"])
  assert pool.shape == (2, 2048) and logits.shape == (2, 1008)
  assert np.std(ref["pool"]) > 0.5  # Random weights keep activations O(1), so 1e-4 is meaningful.
  np.testing.assert_allclose(pool, ref["pool"], atol=1e-4, rtol=0)
  np.testing.assert_allclose(logits, ref["logits"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("shape", [(2, 64, 80, 3), (1, 512, 333, 3)])
def test_pytorch_fid_resize_matches_torch_interpolate(shape):
  torch = pytest.importorskip("torch")
  images = np.random.default_rng(1).integers(0, 256, shape).astype(np.float32)
  x = torch.from_numpy(images).permute(0, 3, 1, 2) / 255.0
  want = torch.nn.functional.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
  want = (2 * want - 1).permute(0, 2, 3, 1).numpy()
  got = inception.preprocess(jnp.asarray(images), "pytorch_fid")
  np.testing.assert_allclose(got, want, atol=2e-6, rtol=0)


def test_tf1_resize_legacy_alignment():
  # Legacy TF1 (no half-pixel centres): halving picks the even pixels exactly (half-pixel averages).
  x = jnp.arange(2 * 8 * 8, dtype=jnp.float32).reshape(2, 8, 8, 1)
  np.testing.assert_array_equal(inception.resize_bilinear_tf1(x, 4), x[:, ::2, ::2])
  # Doubling: originals at even positions, midpoints between, the last pixel repeated.
  row = jnp.array([0.0, 10.0, 30.0], jnp.float32).reshape(1, 1, 3, 1)
  up = inception.resize_bilinear_tf1(jnp.broadcast_to(row, (1, 3, 3, 1)), 6)[0, 0, :, 0]
  np.testing.assert_array_equal(up, [0.0, 5.0, 10.0, 20.0, 30.0, 30.0])


def test_tf1_preprocess_scaling():
  x = jnp.full((1, 299, 299, 3), 255.0)
  np.testing.assert_allclose(inception.preprocess(x, "tf1"), 127 / 128)
  with pytest.raises(ValueError, match="resize must be one of"):
    inception.preprocess(x, "nearest")


def _random_state_dict(seed=0):
  """Random pytorch-fid-layout arrays for every variable the Flax model declares."""
  rng = np.random.default_rng(seed)
  flat = {k: rng.standard_normal(s).astype(np.float32)
          for k, s in inception_convert.expected_shapes().items()}
  return inception_convert.to_state_dict(flax.traverse_util.unflatten_dict(flat))


def test_converter_round_trip_and_layout():
  sd = _random_state_dict()
  assert sd["Conv2d_1a_3x3.conv.weight"].shape == (32, 3, 3, 3)  # torch OIHW
  assert sd["Mixed_6b.branch7x7_2.conv.weight"].shape == (128, 128, 1, 7)
  assert sd["fc.weight"].shape == (1008, 2048)
  assert sd["Mixed_7c.branch_pool.bn.running_var"].shape == (192,)
  sd["Mixed_5b.branch1x1.bn.num_batches_tracked"] = np.array(5)  # ignored, as torch saves it
  variables = inception_convert.convert_state_dict(sd)
  back = inception_convert.to_state_dict(variables)
  del sd["Mixed_5b.branch1x1.bn.num_batches_tracked"]
  assert back.keys() == sd.keys()
  for k in sd:
    np.testing.assert_array_equal(back[k], sd[k])
  np.testing.assert_array_equal(variables["params"]["Conv2d_1a_3x3"]["conv"]["kernel"],
                                sd["Conv2d_1a_3x3.conv.weight"].transpose(2, 3, 1, 0))


def test_converter_rejects_other_layouts():
  sd = _random_state_dict()
  del sd["Mixed_5b.branch_pool.bn.running_mean"]
  sd["AuxLogits.fc.weight"] = np.zeros((1000, 768), np.float32)
  sd["fc.weight"] = np.zeros((1000, 2048), np.float32)  # torchvision's 1000-class head
  with pytest.raises(ValueError) as e:
    inception_convert.convert_state_dict(sd)
  msg = str(e.value)
  assert "missing (1): batch_stats/Mixed_5b/branch_pool/bn/mean" in msg
  assert "unexpected (1): AuxLogits.fc.weight" in msg
  assert "shape mismatch (1): fc.weight" in msg


def test_missing_weight_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
    inception_convert.load_inception(tmp_path / "pt_inception-2015-12-05-6726825d.pth")
