"""Conversion CLIs: official checkpoints -> Orbax -> PyTorch, and every error path."""
import argparse
import collections
import pathlib

import numpy as np
import pytest

from nag_jax import checkpoints, convert, export
from tests.torch_helpers import nhwc, random_reference, state_dict_numpy, torch


class Opaque:
  """A class that no allow-list knows: unpickling it means running foreign code."""


def run_convert(src, dst, *extra, family="dit"):
  return convert.main(["--src", str(src), "--dst", str(dst), "--family", family, *extra])


@pytest.fixture(scope="module")
def tiny_sd():
  ref = random_reference(seed=4, input_size=8, patch_size=2, hidden_size=32, depth=2, num_heads=2, num_classes=5)
  return ref, state_dict_numpy(ref)


def save_pt(sd, path):
  torch.save(collections.OrderedDict((k, torch.from_numpy(v)) for k, v in sd.items()), path)
  return path


@pytest.mark.parametrize("ckpt", ["model.pt", "train_ckpt.pt"])
def test_cli_converts_fixture_and_loader_matches(fixtures_dir, tmp_path, capsys, ckpt):
  d = fixtures_dir / "dit_official"
  assert run_convert(d / ckpt, tmp_path / "out", "--num-heads", "4") == 0
  if ckpt == "train_ckpt.pt":
    assert 'took "ema"' in capsys.readouterr().out
  model, params, config = checkpoints.load(tmp_path / "out")
  io = np.load(d / "io.npz")
  out = model.apply({"params": params}, nhwc(io["x"]), io["t"].astype(np.float32), io["y"].astype(np.int32))
  assert np.abs(np.asarray(out) - nhwc(io["out"])).max() < 1e-4
  assert config.family == "dit" and config.num_heads == 4


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_round_trip_is_exact_and_loads_strict(tiny_sd, tmp_path, suffix):
  ref, sd = tiny_sd
  src = tmp_path / f"src{suffix}"
  if suffix == ".pt":
    save_pt(sd, src)
  else:
    from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
    save_file(sd, str(src))
  assert run_convert(src, tmp_path / "dir", "--num-heads", "2", family="sit") == 0
  assert export.main(["--src", str(tmp_path / "dir"), "--dst", str(tmp_path / f"back{suffix}")]) == 0
  back, _ = checkpoints.torch_io.read_state_dict(tmp_path / f"back{suffix}")
  assert sorted(back) == sorted(sd) and (suffix == ".safetensors" or list(back) == list(sd))  # same order in .pt
  assert all(np.array_equal(back[k], sd[k]) for k in sd)
  from tests.reference.official_dit import DiT as TorchDiT  # pylint: disable=import-outside-toplevel
  fresh = TorchDiT(input_size=8, patch_size=2, hidden_size=32, depth=2, num_heads=2, num_classes=5)
  fresh.load_state_dict({k: torch.from_numpy(v) for k, v in back.items()}, strict=True)


def test_training_checkpoint_with_namespace_args_loads_safely(tiny_sd, tmp_path, capsys):
  _, sd = tiny_sd
  tensors = collections.OrderedDict((k, torch.from_numpy(v)) for k, v in sd.items())
  torch.save({"model": tensors, "ema": tensors, "opt": {}, "args": argparse.Namespace(model="DiT-S/2")},
             tmp_path / "train.pt")
  assert run_convert(tmp_path / "train.pt", tmp_path / "out", "--num-heads", "2") == 0
  assert 'took "ema"' in capsys.readouterr().out


def expect_error(capsys, code, *needles):
  assert code == 2
  err = capsys.readouterr().err
  for n in needles:
    assert n in err, err
  return err


def test_missing_and_unexpected_keys_are_listed(tiny_sd, tmp_path, capsys):
  _, sd = tiny_sd
  bad = dict(sd)
  del bad["blocks.1.attn.proj.bias"]
  bad["t_embedder.null_t"] = np.zeros(3, np.float32)
  code = run_convert(save_pt(bad, tmp_path / "bad.pt"), tmp_path / "out", "--num-heads", "2")
  expect_error(capsys, code, "missing keys: ['blocks.1.attn.proj.bias']", "unexpected keys: ['t_embedder.null_t']")
  assert not (tmp_path / "out").exists()


def test_unexpected_keys_can_be_ignored(tiny_sd, tmp_path):
  _, sd = tiny_sd
  extra = {**sd, "t_embedder.null_t": np.zeros(3, np.float32)}
  with pytest.warns(UserWarning, match="ignored unexpected keys"):
    code = run_convert(save_pt(extra, tmp_path / "x.pt"), tmp_path / "out", "--num-heads", "2",
                       "--ignore-unexpected")
  assert code == 0


def test_shape_mismatch_names_key_expected_and_got(tiny_sd, tmp_path, capsys):
  _, sd = tiny_sd
  bad = {**sd, "blocks.1.mlp.fc2.weight": np.zeros((32, 100), np.float32)}
  code = run_convert(save_pt(bad, tmp_path / "bad.pt"), tmp_path / "out", "--num-heads", "2")
  expect_error(capsys, code, "shape mismatch for blocks.1.mlp.fc2.weight: expected (32, 128), got (32, 100)")


def test_truncated_and_foreign_files(tiny_sd, tmp_path, capsys):
  _, sd = tiny_sd
  data = save_pt(sd, tmp_path / "ok.pt").read_bytes()
  (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
  expect_error(capsys, run_convert(tmp_path / "trunc.pt", tmp_path / "o1"), "not a readable PyTorch checkpoint")
  (tmp_path / "notes.pt").write_text("hello")
  expect_error(capsys, run_convert(tmp_path / "notes.pt", tmp_path / "o2"), "not a readable PyTorch checkpoint")
  torch.save({"conv.weight": torch.zeros(3, 3)}, tmp_path / "other.pt")
  expect_error(capsys, run_convert(tmp_path / "other.pt", tmp_path / "o3"), "not a DiT/SiT state_dict")
  expect_error(capsys, run_convert(tmp_path / "nope.pt", tmp_path / "o4"), "does not exist")
  assert not any((tmp_path / f"o{i}").exists() for i in range(1, 5))


def test_arbitrary_pickles_need_trust(tiny_sd, tmp_path, capsys):
  _, sd = tiny_sd
  tensors = {k: torch.from_numpy(v) for k, v in sd.items()}
  torch.save({"ema": tensors, "extra": Opaque()}, tmp_path / "odd.pt")
  expect_error(capsys, run_convert(tmp_path / "odd.pt", tmp_path / "o", "--num-heads", "2"), "--trust-pickle")
  assert run_convert(tmp_path / "odd.pt", tmp_path / "o", "--num-heads", "2", "--trust-pickle") == 0


def test_final_layer_that_cannot_fit(tiny_sd, tmp_path, capsys):
  _, sd = tiny_sd
  bad = {**sd, "final_layer.linear.weight": np.zeros((20, 32), np.float32),
         "final_layer.linear.bias": np.zeros(20, np.float32)}
  code = run_convert(save_pt(bad, tmp_path / "bad.pt"), tmp_path / "out", "--num-heads", "2", family="sit")
  expect_error(capsys, code, "final_layer.linear.weight has 20 rows", "needs 16 or 32")


def test_nonstandard_width_needs_heads_and_dst_is_protected(tiny_sd, tmp_path, capsys):
  _, sd = tiny_sd
  src = save_pt(sd, tmp_path / "m.pt")
  expect_error(capsys, run_convert(src, tmp_path / "out"), "pass --num-heads")
  assert run_convert(src, tmp_path / "out", "--num-heads", "2") == 0
  expect_error(capsys, run_convert(src, tmp_path / "out", "--num-heads", "2"), "already holds a converted model",
               "--overwrite")
  assert run_convert(src, tmp_path / "out", "--num-heads", "2", "--overwrite") == 0
  expect_error(capsys, export.main(["--src", str(tmp_path / "missing"), "--dst", str(tmp_path / "x.pt")]),
               "config.json is missing")
  assert not pathlib.Path(tmp_path / "x.pt").exists()


def test_sha256_is_checked_before_anything_is_read(fixtures_dir, tmp_path, capsys):
  import hashlib  # pylint: disable=import-outside-toplevel
  src = fixtures_dir / "dit_official" / "model.pt"
  digest = hashlib.sha256(src.read_bytes()).hexdigest()  # the independent reference: hashlib over the bytes
  base = ["--src", str(src), "--family", "dit", "--num-heads", "4"]
  assert convert.main(base + ["--dst", str(tmp_path / "full"), "--sha256", digest]) == 0
  assert convert.main(base + ["--dst", str(tmp_path / "prefix"), "--sha256", digest[:8].upper()]) == 0
  capsys.readouterr()
  wrong = ("0" if digest[0] != "0" else "1") + digest[1:]
  assert convert.main(base + ["--dst", str(tmp_path / "bad"), "--sha256", wrong]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and f"has SHA-256 {digest}, not the expected {wrong}" in err[0]
  assert convert.main(base + ["--dst", str(tmp_path / "bad"), "--sha256", "abc"]) == 2
  assert "8 to 64 hexadecimal digits" in capsys.readouterr().err
  assert not (tmp_path / "bad").exists()
