"""Every command's bad inputs: exit code 2, exactly one `error: ...` line, nothing lost or half-written on disk.

The probes are mostly in-process calls of each command's `main` (the shared `nag_jax.cli` wrapper);
a few real subprocesses prove the exit code and that no traceback is printed.
"""
import hashlib
import json
import os
import pathlib
import shlex
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

from nag_jax import cli, convert, convert_vae, dry_run, evaluate, export, extract_latents, sample
from nag_jax.checkpoints import model_dir
from nag_jax.errors import UserError
from nag_jax.sampling import writer
from nag_jax.sampling.config import default_sample_config
from tests.test_convert import save_pt, tiny_sd  # noqa: F401  (fixture)

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY_TRAIN = ["--config.model.input_size=8", "--config.data.image_size=8", "--config.model.hidden_size=32",
              "--config.model.depth=1", "--config.model.num_heads=2", "--config.global_batch_size=16"]


def listing(root: pathlib.Path) -> dict:
  """Every file below root with its sha256, and every folder: what a user would miss."""
  return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
          for p in sorted(root.rglob("*"))}


def one_error(capsys, code: int, *fragments: str) -> str:
  """Asserts exit code 2 and exactly one stderr line, `error: ...`, holding every fragment; returns it."""
  err = capsys.readouterr().err
  lines = err.strip().splitlines()
  assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
  for f in fragments:
    assert f in lines[0], (f, lines[0])
  return lines[0]


@pytest.fixture(scope="module")
def files(tiny_sd, tmp_path_factory):  # noqa: F811
  """A tiny official-layout .pt, its converted model directory, and a foreign folder to protect."""
  root = tmp_path_factory.mktemp("cli")
  _, sd = tiny_sd
  pt = save_pt(sd, root / "m.pt")
  assert convert.main(["--src", str(pt), "--dst", str(root / "model"), "--family", "dit", "--num-heads", "2"]) == 0
  (root / "a_file").write_text("keep me")
  (root / "foreign").mkdir()
  (root / "foreign" / "notes.txt").write_text("do not lose me")
  return root


# --- convert, convert_vae, export ---------------------------------------------------------------------

def _convert(files, dst, *extra):
  return convert.main(["--src", str(files / "m.pt"), "--dst", str(dst), "--family", "dit", *extra])


@pytest.mark.parametrize("case, fragments", [
    ("bad_family", ["--family", "invalid choice"]),
    ("missing_src", ["missing.pt"]),
    ("heads_zero", ["--num-heads must be >= 1"]),
    ("heads_not_dividing", ["--num-heads 3", "32"]),
    ("dst_file", ["a_file is a file"]),
    ("dst_under_file", ["a_file is a file"]),
    ("dst_foreign", ["not a converted model"]),
])
def test_convert_bad_inputs(files, capsys, case, fragments):
  before = listing(files)
  args = {"bad_family": ["--src", str(files / "m.pt"), "--dst", str(files / "new"), "--family", "vit"],
          "missing_src": ["--src", str(files / "missing.pt"), "--dst", str(files / "new"), "--family", "dit"]}
  if case in args:
    code = convert.main(args[case])
  else:
    dst = {"dst_file": files / "a_file", "dst_under_file": files / "a_file" / "sub",
           "dst_foreign": files / "foreign"}.get(case, files / "new")
    heads = {"heads_zero": "0", "heads_not_dividing": "3"}.get(case, "2")
    code = _convert(files, dst, "--num-heads", heads)
  one_error(capsys, code, *fragments)
  assert listing(files) == before  # nothing written, nothing lost, no staging left


def test_convert_into_read_only_folder(files, tmp_path):
  """As a user, a folder without write permission; as root (who writes into those, as CI runs), a read-only
  mount in a private mount namespace: either way one line, exit 2, nothing written."""
  ro = tmp_path / "ro"
  ro.mkdir()
  cmd = [sys.executable, "-m", "nag_jax.convert", "--src", str(files / "m.pt"), "--dst", str(ro / "out"),
         "--family", "dit", "--num-heads", "2"]
  if os.geteuid() == 0:
    script = f"mount -t tmpfs none {shlex.quote(str(ro))} && mount -o remount,ro {shlex.quote(str(ro))} && exec "
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script + shlex.join(cmd)], capture_output=True, text=True,
                          cwd=REPO, timeout=300, check=False)
  else:
    ro.chmod(0o555)
    try:
      proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300, check=False)
    finally:
      ro.chmod(0o755)
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
  assert proc.returncode == 2 and len(errors) == 1 and "not writable" in errors[0], proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr and not (ro / "out").exists()


def test_permission_error_on_a_named_path_is_one_line(capsys):
  """What a read-only destination raises where no check saw it coming (e.g. as root on a read-only mount)."""
  def fails():
    raise PermissionError(13, "Permission denied", "/ro/out/params")
  one_error(capsys, cli.run(fails, named=["/ro/out"]), "/ro/out/params: Permission denied")
  with pytest.raises(PermissionError):  # on a path the user did not name: a bug, with its traceback
    cli.run(fails, named=["/elsewhere"])


def test_export_destination_rule(files, tmp_path, capsys):
  src = ["--src", str(files / "model")]
  dst = tmp_path / "m.safetensors"
  assert export.main(src + ["--dst", str(dst)]) == 0
  first = listing(tmp_path)
  one_error(capsys, export.main(src + ["--dst", str(dst)]), "exists", "--overwrite")
  one_error(capsys, export.main(src + ["--dst", str(tmp_path)]), "is a folder")
  one_error(capsys, export.main(src + ["--dst", str(tmp_path / "m.npz")]), ".safetensors")
  one_error(capsys, export.main(src + ["--dst", str(files / "a_file" / "m.pt")]), "a_file is a file")
  one_error(capsys, export.main(["--src", str(tmp_path / "none"), "--dst", str(tmp_path / "x.pt")]),
            "config.json is missing")
  assert listing(tmp_path) == first
  (tmp_path / "m.safetensors").write_bytes(b"old")
  assert export.main(src + ["--dst", str(dst), "--overwrite"]) == 0
  assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]  # replaced, no staging file left
  assert listing(tmp_path) == first  # the same bytes as the first export


def test_convert_vae_bad_destination(files, capsys):
  before = listing(files)
  one_error(capsys, convert_vae.main(["--src", str(files / "nothing"), "--dst", str(files / "a_file")]),
            "a_file is a file")
  one_error(capsys, convert_vae.main(["--src", str(files / "nothing"), "--dst", str(files / "vae")]), "nothing")
  one_error(capsys, convert_vae.main(["--src", str(files / "nothing")]), "--dst")
  assert listing(files) == before


# --- sampling ----------------------------------------------------------------------------------------

def sample_config(files, out, **kw):
  c = default_sample_config("dit", "nag")
  c.checkpoint, c.out_dir, c.pixel_space = str(files / "model"), str(out), True
  c.num_samples, c.batch_size, c.grid_size = 4, 2, 4
  c.sampler.num_steps = 2
  for k, v in kw.items():
    node, *path = k.split("__")
    target = c
    for p in [node, *path][:-1]:
      target = target[p]
    target[[node, *path][-1]] = v
  return c


@pytest.mark.parametrize("kw, fragments", [
    (dict(batch_size=0), ["--config.batch_size must be a positive integer"]),
    (dict(num_samples=0), ["--config.num_samples must be a positive integer"]),
    (dict(num_samples=-3), ["--config.num_samples must be a positive integer"]),
    (dict(labels="3,x"), ["--config.labels must be comma-separated class ids"]),
    (dict(labels="4,7"), ["class ids in [0, 5)"]),
    (dict(checkpoint=""), ["--config.checkpoint is required"]),
    (dict(sampler__method="sde"), ["sde"]),
])
def test_sample_bad_values_leave_no_out_dir(files, tmp_path, capsys, kw, fragments):
  one_error(capsys, cli.run(sample.run, sample_config(files, tmp_path / "out", **kw)), *fragments)
  assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("where", ["a_file", "foreign"])
def test_sample_refuses_a_file_or_foreign_out_dir(files, capsys, where):
  before = listing(files)
  one_error(capsys, cli.run(sample.run, sample_config(files, files / where)),
            "is a file" if where == "a_file" else "not a sampling output folder")
  assert listing(files) == before


def test_sample_resumes_only_the_same_protocol(files, tmp_path, capsys):
  out = tmp_path / "out"
  c = sample_config(files, out)
  sample.run(c)
  capsys.readouterr()  # the progress bar
  first = listing(out)
  run = json.loads((out / "run.json").read_text())
  tag = run["protocol_hash"]
  assert run["protocol"]["checkpoint"] == model_dir.identity(files / "model") and run["num_written"] == 4
  assert sorted(p.name for p in (out / "parts").iterdir()) == [
      writer.part_path(out, b, 2 * b, tag).name for b in (0, 1)]
  for kw, keys in ((dict(seed=1, guidance__nag_scale=2.0), "guidance.nag_scale, seed"),
                   (dict(batch_size=4), "batch_size"), (dict(sampler__num_steps=3), "sampler.num_steps"),
                   (dict(labels="1,2"), "labels")):
    one_error(capsys, cli.run(sample.run, sample_config(files, out, **kw)), "another protocol",
              f"(different {keys})", "--config.overwrite=True")
    assert listing(out) == first
  other = tmp_path / "other_model"  # the same config, other weights: another checkpoint identity
  _, params, config = model_dir.load(files / "model")
  model_dir.save(other, jax.tree.map(lambda x: np.asarray(x) * 1.5, params), config)
  one_error(capsys, cli.run(sample.run, sample_config(files, out, checkpoint=str(other))), "(different checkpoint)")
  # A copy of the checkpoint is the same checkpoint; a stale temporary part and a part of another
  # protocol are ignored; a deleted part is recomputed bit-identically.
  shutil.copytree(files / "model", tmp_path / "copy")
  (out / "parts" / f"batch000001_row00000002_{tag}.npz").unlink()
  stale = out / "parts" / f".batch000001_row00000002_{tag}.0badf00d.staging.npz"  # a killed write's staging file
  stale.write_bytes(b"half written")
  (out / "parts" / "batch000009_row00000018_0123456789ab.npz").write_bytes(b"other protocol")
  sample.run(sample_config(files, out, checkpoint=str(tmp_path / "copy")))
  assert "sampling: 100%|" in capsys.readouterr().err
  assert not stale.exists()  # ours: cleaned
  (out / "parts" / "batch000009_row00000018_0123456789ab.npz").unlink()
  now = listing(out)
  for name in ("samples.npz", "grid.png", f"parts/batch000000_row00000000_{tag}.npz",
               f"parts/batch000001_row00000002_{tag}.npz"):
    assert now[name] == first[name], name
  # --config.overwrite=True starts afresh under the new protocol.
  sample.run(sample_config(files, out, seed=1, overwrite=True))
  run = json.loads((out / "run.json").read_text())
  assert run["protocol"]["seed"] == 1 and all(run["protocol_hash"] in p.name for p in (out / "parts").iterdir())
  assert listing(out)["samples.npz"] != first["samples.npz"]


def absl_parse(config_spec: str, *overrides: str):
  """The sampling / training flag parsing of the CLIs on fresh flag values; returns the config."""
  argv = ["prog", "--config", config_spec, *overrides]
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, flag_values=fv, lock_config=True, sys_argv=argv)
  cli.parse_absl_flags(argv, flag_values=fv)
  return fv.config


@pytest.mark.parametrize("spec, overrides, fragments", [
    ("configs/sample_dit.py:nag", ["--config.chekpoint=x"], ["unknown config key --config.chekpoint"]),
    ("configs/sample_dit.py:nag", ["--config.batch_size=abc"], ["--config.batch_size=abc"]),
    ("configs/sample_dit.py:bogus", [], ["unknown guidance preset 'bogus'"]),
    ("configs/missing.py", [], ["missing.py"]),
    ("configs/tiny_digits.py", ["--config.global_batch_size=abc"], ["--config.global_batch_size=abc"]),
    ("configs/tiny_digits.py", ["--config.optimizer.lr=1e-3"], ["unknown config key --config.optimizer.lr"]),
    ("configs/tiny_digits.py", ["--nonflag=3"], ["nonflag"]),
])
def test_flag_and_override_errors_are_one_line(capsys, spec, overrides, fragments):
  one_error(capsys, cli.run(absl_parse, f"{REPO}/{spec}", *overrides), *fragments)


# --- training ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def train_main():
  from nag_jax import main  # pylint: disable=import-outside-toplevel
  return main


def train_config(*overrides):
  return absl_parse(str(REPO / "configs/tiny_digits.py"), *TINY_TRAIN, *overrides)


def test_init_from_in_scratch_mode_is_refused(train_main, files, tmp_path, capsys):
  code = train_main.run(train_config(f"--config.init_from={files / 'model'}"), str(tmp_path / "w"))
  one_error(capsys, code, "init_from", "not used in mode 'scratch'")
  assert not (tmp_path / "w").exists()


def test_resume_with_another_model_config_names_the_keys(train_main, tmp_path, capsys):
  from nag_jax.training import checkpointing  # pylint: disable=import-outside-toplevel
  work = tmp_path / "w"
  for item in ("state",):  # a checkpoint step that was written (its contents are never reached)
    (work / "checkpoints" / "3" / item).mkdir(parents=True)
  checkpointing.check_run_config(work, train_config())
  before = listing(work)
  code = train_main.run(train_config("--config.model.depth=2", "--config.model.hidden_size=64"), str(work))
  one_error(capsys, code, "the config differs from the one", "model.depth=2 (workdir: 1)",
            "model.hidden_size=64 (workdir: 32)")
  assert listing(work) == before


def test_corrupt_newest_checkpoint_is_one_line(train_main, tmp_path, capsys):
  step = tmp_path / "checkpoints" / "3"
  (step / "state").mkdir(parents=True)
  (step / "state" / "checkpoint").write_bytes(b"\x00garbage")
  one_error(capsys, train_main.run(train_config(), str(tmp_path)), "cannot restore training checkpoint step 3",
            "move the folder away")


# --- evaluate, extract_latents, dry_run ------------------------------------------------------------------

@pytest.fixture(scope="module")
def eval_files(tmp_path_factory):
  root = tmp_path_factory.mktemp("eval")
  images = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
  np.savez(root / "samples.npz", arr_0=images)
  np.savez(root / "ref_images_only.npz", arr_0=images)
  (root / "corrupt.pth").write_bytes(b"PK\x03\x04 not a torch file")
  (root / "metrics.json").write_text("{}")
  return root


def _evaluate(eval_files, *extra, reference="ref_images_only.npz"):
  return evaluate.main(["--samples", str(eval_files / "samples.npz"), "--reference", str(eval_files / reference),
                        "--inception", str(eval_files / "corrupt.pth"), "--no-progress", *extra])


def test_evaluate_bad_inputs(eval_files, capsys):
  before = listing(eval_files)
  # --recompute-reference-stats takes a reference of images alone: the error is the corrupt weights.
  one_error(capsys, _evaluate(eval_files, "--recompute-reference-stats", "--k", "2"),
            "--inception", "corrupt.pth", "not a readable PyTorch weight file")
  one_error(capsys, _evaluate(eval_files), "has no 'mu' and 'sigma'")
  one_error(capsys, _evaluate(eval_files, "--out", str(eval_files / "metrics.json")), "exists", "--overwrite")
  one_error(capsys, _evaluate(eval_files, "--out", str(eval_files)), "is a folder")
  one_error(capsys, _evaluate(eval_files, "--batch-size", "0"), "--batch-size")
  one_error(capsys, _evaluate(eval_files, "--resize", "bilinear"), "--resize")
  assert listing(eval_files) == before


def test_extract_latents_bad_destination(files, capsys):
  before = listing(files)
  base = ["--src", str(files / "foreign"), "--vae", str(files / "none")]
  one_error(capsys, extract_latents.main(base + ["--dst", str(files / "foreign")]), "not a latents folder")
  one_error(capsys, extract_latents.main(base + ["--dst", str(files / "a_file")]), "is a file")
  one_error(capsys, extract_latents.main(base + ["--dst", str(files / "new"), "--batch-size", "0"]), "positive")
  one_error(capsys, extract_latents.main(base + ["--dst", str(files / "new")]), "has no class sub-folders")
  assert listing(files) == before


@pytest.mark.parametrize("argv, fragment", [
    (["--batch", "0"], "--batch must be a positive integer"), (["--batch", "x"], "--batch"),
    (["--mesh", "data=two", "--devices", "0", "--no-compile"], "--mesh must look like"),
    (["--model", "DiT-Q/9", "--devices", "0", "--no-compile"], "DiT-Q/9"),
])
def test_dry_run_bad_inputs(capsys, argv, fragment):
  one_error(capsys, dry_run.main(argv), fragment)


def test_analyze_and_demo_flag_errors(files, tmp_path, capsys):
  from nag_jax import analyze_noise_shift  # pylint: disable=import-outside-toplevel
  from nag_jax.demo import __main__ as demo  # pylint: disable=import-outside-toplevel
  base = ["--model", str(files / "model"), "--out", str(tmp_path / "a"), "--data", "digits"]
  one_error(capsys, analyze_noise_shift.main(base + ["--estimator", str(files / "model")]),
            "does not hold noise-estimator (g_phi) params")
  one_error(capsys, analyze_noise_shift.main(base), "--estimator")
  one_error(capsys, demo.main(["--seed", "abc"]), "--seed")
  assert not (tmp_path / "a").exists()


# --- the convention itself -------------------------------------------------------------------------------

def test_bugs_keep_their_traceback_and_verbose_shows_it(capsys):
  def bug():
    raise KeyError("a real bug")
  with pytest.raises(KeyError):
    cli.run(bug)

  def missing_module_of_ours():
    raise ModuleNotFoundError("No module named 'nag_jax.nothing'", name="nag_jax.nothing")
  with pytest.raises(ModuleNotFoundError):
    cli.run(missing_module_of_ours)

  def bad_input():
    raise UserError("the flag --x is bad")
  assert cli.run(bad_input, verbose=True) == 2
  err = capsys.readouterr().err
  assert "Traceback" in err and err.strip().splitlines()[-1] == "error: the flag --x is bad"


def _subprocess(*args, env=None):
  proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO, timeout=600,
                        env={**os.environ, **(env or {})}, check=False)
  return proc.returncode, [line for line in proc.stderr.splitlines() if not line[:1] in "IW" or
                           not line[1:5].isdigit()]  # absl's I/W log lines are not errors


@pytest.mark.parametrize("args, fragment", [
    (["-m", "nag_jax.sample", "--config", "configs/sample_dit.py:nag", "--config.chekpoint=x"],
     "unknown config key --config.chekpoint"),
    (["-m", "nag_jax.main", "--config", "configs/tiny_digits.py", "--workdir", "/nonexistent/w",
      "--config.global_batch_size=abc"], "--config.global_batch_size=abc"),
    (["-c", "import runpy, sys; sys.modules['tensorflow'] = None; sys.argv = ['nag_jax.main', *sys.argv[1:]]; "
      "runpy.run_module('nag_jax.main', run_name='__main__')", "--config", "configs/tiny_digits.py",
      "--workdir", "/nonexistent/w"], "optional package 'tensorflow'"),
])
def test_real_exit_code_and_no_traceback(args, fragment):
  code, lines = _subprocess(*args)
  assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], lines
