"""Every command's error convention: a `UserError` from inside the library is one `error:` line and exit code 2;
a plain `ValueError` (what JAX, Orbax or numpy raise for their own failures) is a bug and keeps its traceback.

The failure is planted (monkeypatched) in the first library function each command calls after parsing its
flags. The argparse commands run in-process; the two absl commands (`main`, `sample`) run as real
subprocesses through `python -m`, so their exit code and stderr are what a user sees.
"""
import importlib
import os
import pathlib
import subprocess
import sys

import pytest

from nag_jax import cli
from nag_jax.errors import UserError

REPO = pathlib.Path(__file__).resolve().parents[1]

# command module, the attribute to plant the failure in, and a command line that parses.
ARGPARSE_COMMANDS = [
    ("nag_jax.convert", "read_state_dict", ["--src", "m.pt", "--dst", "out", "--family", "dit"]),
    ("nag_jax.convert_vae", "convert", ["--src", "vae", "--dst", "out"]),
    ("nag_jax.export", "export", ["--src", "model", "--dst", "m.pt"]),
    ("nag_jax.extract_latents", "extract", ["--src", "images", "--vae", "vae", "--dst", "latents"]),
    ("nag_jax.evaluate", "evaluate", ["--samples", "s.npz", "--reference", "r.npz", "--inception", "i.pth"]),
    ("nag_jax.analyze_noise_shift", "run", ["--model", "m", "--estimator", "e", "--data", "digits", "--out", "o"]),
    ("nag_jax.dry_run", "report", ["--devices", "0", "--no-compile"]),
    ("nag_jax.demo.__main__", "experiment", ["--out", "demo"]),
]


class _Planted:
  """Stands in for a module attribute (a function, or a module whose `run` is called): raises `error`."""

  def __init__(self, error: Exception):
    self.error = error

  def __call__(self, *args, **kwargs):
    raise self.error

  def __getattr__(self, name):
    return self


@pytest.mark.parametrize("module, attr, argv", ARGPARSE_COMMANDS, ids=[c[0] for c in ARGPARSE_COMMANDS])
def test_argparse_commands(module, attr, argv, monkeypatch, capsys, tmp_path):
  monkeypatch.chdir(tmp_path)
  command = importlib.import_module(module)
  monkeypatch.setattr(command, attr, _Planted(UserError("the planted input problem\nsecond line")))
  assert command.main(argv) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert err == ["error: the planted input problem"]

  monkeypatch.setattr(command, attr, _Planted(ValueError("a planted bug inside the run")))
  with pytest.raises(ValueError, match="a planted bug inside the run"):
    command.main(argv)
  assert "error:" not in capsys.readouterr().err
  assert [p for p in tmp_path.rglob("*") if p.is_file()] == []  # no file written either way


def _run_with(command: str, planted: str, error: str, *argv: str) -> subprocess.CompletedProcess:
  """`python -m command argv` with library function `planted` (module.attr) raising `error` (an expression)."""
  module, attr = planted.rsplit(".", 1)
  code = (f"import runpy, sys, {module} as m\n"
          "from nag_jax.errors import UserError\n"
          f"def planted(*a, **k):\n  raise {error}\n"
          f"m.{attr} = planted\n"
          f"sys.argv = [{command!r}, *sys.argv[1:]]\n"
          f"runpy.run_module({command!r}, run_name='__main__', alter_sys=True)\n")
  return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=REPO,
                        timeout=300, check=False, env={**os.environ, "JAX_PLATFORMS": "cpu"})


# (command, the library function it calls first, its command line)
ABSL_COMMANDS = [
    ("nag_jax.main", "nag_jax.training.train.train_with_logging",
     ["--config", "configs/tiny_digits.py", "--workdir", "{tmp}/w"]),
    ("nag_jax.sample", "nag_jax.sampling.config.check",
     ["--config", "configs/sample_dit.py:nag", "--config.checkpoint={tmp}/m", "--config.out_dir={tmp}/out"]),
]


@pytest.mark.parametrize("command, planted, argv", ABSL_COMMANDS, ids=[c[0] for c in ABSL_COMMANDS])
def test_absl_commands(command, planted, argv, tmp_path):
  argv = [a.format(tmp=tmp_path) for a in argv]
  user = _run_with(command, planted, "UserError('the planted input problem')", *argv)
  errors = [line for line in user.stderr.splitlines() if line.startswith("error:")]  # beside TF's log lines
  assert user.returncode == 2 and errors == ["error: the planted input problem"], user.stderr[-3000:]
  assert "Traceback" not in user.stderr

  bug = _run_with(command, planted, "ValueError('a planted bug inside the run')", *argv)
  assert bug.returncode == 1, bug.stderr[-3000:]
  assert "Traceback (most recent call last)" in bug.stderr
  assert bug.stderr.strip().splitlines()[-1] == "ValueError: a planted bug inside the run"
  assert "error:" not in bug.stderr
  assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_os_errors_are_one_line_only_on_paths_the_user_named(tmp_path, capsys):
  named = cli.named_paths(["--dst", str(tmp_path / "out"), "--config.checkpoint=/ckpt/model", "gs://b/run"])

  def fails(path):
    raise PermissionError(13, "Permission denied", path)

  for path in (tmp_path / "out", tmp_path / "out" / "params" / "x", tmp_path,  # the path, below it, above it
               "/ckpt/model/config.json", "gs://b/run/checkpoints/1"):
    assert cli.run(fails, path, named=named) == 2
    assert capsys.readouterr().err.strip() == f"error: {path}: Permission denied"
  for path in ("/somewhere/else/.cache/file", "gs://b/other"):  # inside a library, not the user's: a bug
    with pytest.raises(PermissionError):
      cli.run(fails, path, named=named)
