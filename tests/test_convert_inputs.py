"""The converter's inputs: half-precision exports load, and every bad input ends in one true sentence."""
import collections
import json

import numpy as np
import pytest

from nag_jax import checkpoints, convert
from nag_jax.checkpoints.dit_convert import stored_precision
from nag_jax.models.embeddings import sincos_2d
from tests.torch_helpers import nhwc, torch

FIXTURE_KEYS = ["input_size", "patch_size", "in_channels", "hidden_size", "depth", "num_heads", "mlp_ratio",
                "class_dropout_prob", "num_classes", "learn_sigma"]


class Foreign:
  """A class no allow-list knows: unpickling it means running code from the file."""


def run_convert(src, dst, *extra):
  return convert.main(["--src", str(src), "--dst", str(dst), "--family", "dit", *extra])


def one_error_line(capsys, code, *needles, absent=()):
  """Asserts exit code 2 and exactly one stderr line, `error: ...`, holding every needle and no absent text."""
  assert code == 2
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), lines
  for n in needles:
    assert n in lines[0], lines[0]
  for n in absent:
    assert n not in lines[0], lines[0]
  return lines[0]


@pytest.fixture(scope="module")
def fixture(fixtures_dir):
  d = fixtures_dir / "dit_official"
  cfg = json.loads((d / "config.json").read_text())
  return d, dict(np.load(d / "io.npz")), cfg, torch.load(d / "model.pt", weights_only=True)


def torch_output(cfg, sd, io):
  """The official torch model on io.npz's batch with these weights (its own fixed pos_embed)."""
  from tests.reference.official_dit import DiT as TorchDiT  # pylint: disable=import-outside-toplevel
  model = TorchDiT(**{k: cfg[k] for k in FIXTURE_KEYS}).eval()
  weights = {k: v.float() for k, v in sd.items() if k != "pos_embed"}
  model.load_state_dict({**weights, "pos_embed": model.pos_embed.detach()}, strict=True)
  with torch.no_grad():
    return model(torch.from_numpy(io["x"]), torch.from_numpy(io["t"]), torch.from_numpy(io["y"])).numpy()


@pytest.mark.parametrize("dtype,suffix,table_err", [("float16", ".pt", 4.9e-4), ("bfloat16", ".safetensors", 3.9e-3)])
def test_half_precision_exports_convert(fixture, tmp_path, capsys, dtype, suffix, table_err):
  """fp16 .pt / bf16 .safetensors of the fixture: float32 params equal to the stored values, and the output
  matches the torch model with the same rounded weights to 1e-4 and the float32 fixture to rounding error."""
  d, io, cfg, sd = fixture
  half = collections.OrderedDict((k, v.to(getattr(torch, dtype))) for k, v in sd.items())
  src = tmp_path / f"half{suffix}"
  if suffix == ".pt":
    torch.save(half, src)
  else:
    from safetensors.torch import save_file  # pylint: disable=import-outside-toplevel
    save_file(half, str(src))
  # The stored table really is off by more than float32's 1e-5, within half a unit in the last place.
  table = sincos_2d(cfg["hidden_size"], cfg["input_size"] // cfg["patch_size"])[None]
  err = np.abs(half["pos_embed"].float().numpy() - table).max()
  assert 1e-5 < err <= table_err
  assert stored_precision(half["pos_embed"].float().numpy())[0] == dtype
  assert run_convert(src, tmp_path / "out", "--num-heads", "4") == 0, capsys.readouterr().err
  model, params, _ = checkpoints.load(tmp_path / "out")
  leaves = {k: np.asarray(v) for k, v in _flat(params).items()}
  assert all(v.dtype == np.float32 for v in leaves.values())
  np.testing.assert_array_equal(leaves["y_embedder/embedding_table"],
                                half["y_embedder.embedding_table.weight"].float().numpy())
  out = np.asarray(model.apply({"params": params}, nhwc(io["x"]), io["t"].astype(np.float32), io["y"].astype(np.int32)))
  assert np.abs(out - nhwc(torch_output(cfg, half, io))).max() < 1e-4
  # Weights rounded to 11 (fp16) / 8 (bf16) significant bits move the output by less than one unit in the
  # last place of the stored type, relative to its scale (measured: 2.9e-4 and 2.4e-3).
  rel = np.abs(out - nhwc(io["out"])).max() / np.abs(io["out"]).max()
  assert rel < stored_precision(half["pos_embed"].float().numpy())[1], rel


def _flat(tree, prefix=""):
  out = {}
  for k, v in tree.items():
    out.update(_flat(v, f"{prefix}{k}/") if isinstance(v, dict) else {f"{prefix}{k}": v})
  return {k.removesuffix("/"): v for k, v in out.items()}


def test_float32_table_keeps_tight_tolerance(fixture, tmp_path, capsys):
  """A float32 file whose pos_embed is off by 1e-3 is still refused, with the size of the difference."""
  _, _, _, sd = fixture
  bad = collections.OrderedDict(sd)
  bad["pos_embed"] = sd["pos_embed"] + 1e-3 * torch.sin(torch.arange(sd["pos_embed"].numel()).float()).reshape(1, 16, 64)
  torch.save(bad, tmp_path / "bad.pt")
  one_error_line(capsys, run_convert(tmp_path / "bad.pt", tmp_path / "out", "--num-heads", "4"),
                 "pos_embed differs from the fixed 2-D sin-cos table", "float32 rounding allows")
  assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nonfinite_weights_are_refused_naming_the_key(fixture, tmp_path, capsys, value):
  _, _, _, sd = fixture
  bad = collections.OrderedDict(sd)
  bad["blocks.1.attn.qkv.weight"] = sd["blocks.1.attn.qkv.weight"].clone()
  bad["blocks.1.attn.qkv.weight"][3, 5] = value
  torch.save(bad, tmp_path / "bad.pt")
  one_error_line(capsys, run_convert(tmp_path / "bad.pt", tmp_path / "out", "--num-heads", "4"),
                 "NaN or inf values in ['blocks.1.attn.qkv.weight']")
  assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("dtype,suffix", [("int64", ".pt"), ("uint8", ".safetensors"), ("bool", ".pt")])
def test_integer_weights_of_the_right_shape_are_refused(fixture, tmp_path, capsys, dtype, suffix):
  """Casting integer entries would convert silently wrong weights: refused, naming the entry, nothing written."""
  _, _, _, sd = fixture
  bad = collections.OrderedDict((k, v.contiguous()) for k, v in sd.items())
  bad["blocks.0.mlp.fc1.weight"] = (sd["blocks.0.mlp.fc1.weight"] * 100).to(getattr(torch, dtype))
  src = tmp_path / f"bad{suffix}"
  if suffix == ".pt":
    torch.save(bad, src)
  else:
    from safetensors.torch import save_file  # pylint: disable=import-outside-toplevel
    save_file(dict(bad), str(src))
  one_error_line(capsys, run_convert(src, tmp_path / "out", "--num-heads", "4"),
                 f"entry 'blocks.0.mlp.fc1.weight' has dtype {dtype}", "floating point")
  assert not (tmp_path / "out").exists()


def test_refused_global_is_named_and_trust_pickle_said_to_run_code(fixture, tmp_path, capsys):
  _, _, _, sd = fixture
  torch.save({"ema": sd, "extra": Foreign()}, tmp_path / "odd.pt")
  line = one_error_line(capsys, run_convert(tmp_path / "odd.pt", tmp_path / "out", "--num-heads", "4"),
                        f"{__name__}.Foreign", "--trust-pickle) would RUN code from the file", "you trust")
  assert "pass --trust-pickle." not in line
  assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("damage", ["truncate", "garbage", "zero_tail"])
def test_corrupt_files_do_not_advise_trust_pickle(fixture, tmp_path, capsys, damage):
  d = fixture[0]
  data = (d / "model.pt").read_bytes()
  bad = {"truncate": data[: len(data) // 3], "garbage": b"\x80\x02hello" * 100,
         "zero_tail": data[:-4096] + bytes(4096)}[damage]
  (tmp_path / "bad.pt").write_bytes(bad)
  one_error_line(capsys, run_convert(tmp_path / "bad.pt", tmp_path / "out", "--num-heads", "4"),
                 "not a readable PyTorch checkpoint", "truncated, corrupt", absent=("trust-pickle",))
  assert not (tmp_path / "out").exists()


def test_truncated_safetensors_is_one_line(fixture, tmp_path, capsys):
  _, _, _, sd = fixture
  from safetensors.torch import save_file  # pylint: disable=import-outside-toplevel
  save_file(dict(sd), str(tmp_path / "m.safetensors"))
  data = (tmp_path / "m.safetensors").read_bytes()
  (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
  one_error_line(capsys, run_convert(tmp_path / "cut.safetensors", tmp_path / "out", "--num-heads", "4"),
                 "not a readable .safetensors file", absent=("trust-pickle",))


@pytest.mark.parametrize("heads,needle", [("0", "--num-heads must be >= 1, got 0"),
                                          ("-2", "--num-heads must be >= 1, got -2"),
                                          ("5", "--num-heads 5 does not divide the width (hidden size) 64")])
def test_bad_num_heads_says_what_is_wrong(fixture, tmp_path, capsys, heads, needle):
  d = fixture[0]
  one_error_line(capsys, run_convert(d / "model.pt", tmp_path / "out", "--num-heads", heads), needle,
                 absent=("pass --num-heads",))
  assert not (tmp_path / "out").exists()


def test_stored_precision_matches_numpy_rounding():
  """Exactly representable values name their coarsest type; anything else keeps the float32 tolerance."""
  import ml_dtypes  # pylint: disable=import-outside-toplevel
  x = np.random.default_rng(0).uniform(-1, 1, 1000).astype(np.float32)
  assert stored_precision(x.astype(ml_dtypes.bfloat16).astype(np.float32)) == ("bfloat16", 2.0 ** -7)
  assert stored_precision(x.astype(np.float16).astype(np.float32)) == ("float16", 2.0 ** -10)
  assert stored_precision(x) == ("float32", 1e-5)
