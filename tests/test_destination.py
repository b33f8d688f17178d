"""Destinations are never lost: a foreign non-empty folder is refused by every model writer, with or without --overwrite."""
import hashlib
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from nag_jax import checkpoints, convert
from nag_jax.checkpoints import model_dir
from nag_jax.destination import DestinationError
from nag_jax.models.config import ModelConfig
from tests.test_convert import save_pt, tiny_sd  # noqa: F401  (fixture)

REPO = pathlib.Path(__file__).resolve().parents[1]


def listing(root: pathlib.Path) -> dict:
  """Every file below root with its sha256, and every folder: what a user would miss."""
  out = {}
  for p in sorted(root.rglob("*")):
    out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
  return out


def foreign_folder(root: pathlib.Path) -> pathlib.Path:
  (root / "other_model").mkdir(parents=True)
  (root / "other_model" / "weights.bin").write_bytes(os.urandom(64))
  (root / "notes.txt").write_text("do not lose me")
  return root


@pytest.mark.parametrize("extra", [[], ["--overwrite"]])
def test_convert_refuses_foreign_folder_and_keeps_every_file(tiny_sd, tmp_path, extra):  # noqa: F811
  _, sd = tiny_sd
  src = save_pt(sd, tmp_path / "m.pt")
  dst = foreign_folder(tmp_path / "models")
  before = listing(tmp_path)
  proc = subprocess.run([sys.executable, "-m", "nag_jax.convert", "--src", str(src), "--dst", str(dst),
                         "--family", "dit", "--num-heads", "2", *extra],
                        capture_output=True, text=True, cwd=REPO, timeout=600, check=False)
  assert proc.returncode == 2, proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and "not a converted model" in lines[0], proc.stderr
  assert listing(tmp_path) == before  # nothing lost, no staging folder left behind


def test_convert_into_current_directory_is_refused(tiny_sd, tmp_path, monkeypatch, capsys):  # noqa: F811
  _, sd = tiny_sd
  src = save_pt(sd, tmp_path / "m.pt")
  foreign_folder(tmp_path)
  before = listing(tmp_path)
  monkeypatch.chdir(tmp_path)
  assert convert.main(["--src", str(src), "--dst", ".", "--family", "dit", "--num-heads", "2", "--overwrite"]) == 2
  assert "not a converted model" in capsys.readouterr().err
  assert listing(tmp_path) == before


def test_overwrite_replaces_only_a_model_directory_and_keeps_umask(tiny_sd, tmp_path, capsys):  # noqa: F811
  _, sd = tiny_sd
  src = save_pt(sd, tmp_path / "m.pt")
  old = os.umask(0o022)
  try:
    assert convert.main(["--src", str(src), "--dst", str(tmp_path / "out"), "--family", "dit",
                         "--num-heads", "2"]) == 0
  finally:
    os.umask(old)
  assert (tmp_path / "out").stat().st_mode & 0o777 == 0o755
  assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["config.json", "params"]
  empty = tmp_path / "empty"
  empty.mkdir()
  assert convert.main(["--src", str(src), "--dst", str(empty), "--family", "sit", "--num-heads", "2"]) == 0
  assert convert.main(["--src", str(src), "--dst", str(empty), "--family", "dit", "--num-heads", "2",
                       "--overwrite"]) == 0
  assert checkpoints.load(empty)[2].family == "dit"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "m.pt", "out"]  # no staging left


def test_library_writer_refuses_foreign_folder_even_with_overwrite(tmp_path):
  """The training export and the demo go through model_dir.save with overwrite=True."""
  dst = foreign_folder(tmp_path / "workdir" / "model")
  before = listing(tmp_path)
  config = ModelConfig(family="dit", input_size=4, patch_size=2, in_channels=4, hidden_size=16, depth=1,
                       num_heads=2, num_classes=3, learn_sigma=True)
  with pytest.raises(DestinationError, match="not a converted model"):
    model_dir.save(dst, {"w": np.zeros(3, np.float32)}, config, overwrite=True)
  assert listing(tmp_path) == before


def test_demo_rerun_refuses_a_foreign_training_folder(tmp_path):
  """`python -m nag_jax.demo --out .` must not wipe a runs/main folder the demo did not write."""
  from nag_jax.demo import models  # pylint: disable=import-outside-toplevel
  workdir = foreign_folder(tmp_path / "runs" / "main")
  before = listing(tmp_path)
  with pytest.raises(DestinationError, match="not a demo training folder"):
    models._train(None, workdir, "x", progress=False)  # pylint: disable=protected-access
  assert listing(tmp_path) == before
