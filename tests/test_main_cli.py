"""`python -m nag_jax.main`: an end-to-end run through the CLI, and one clear error per bad input."""
import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest
from absl import flags
from ml_collections import config_flags

from nag_jax.errors import UserError
from nag_jax.training import ConfigError, get_base_config, validate

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = ["--config.model.input_size=8", "--config.data.image_size=8", "--config.model.hidden_size=32",
        "--config.model.depth=1", "--config.model.num_heads=2", "--config.global_batch_size=16"]
FAST_COMPILE = {"XLA_FLAGS": "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"}


@pytest.fixture(scope="module")
def cli():
  """nag_jax.main, imported lazily: it imports clu, hence TensorFlow."""
  from nag_jax import main  # pylint: disable=import-outside-toplevel
  return main


def run_in_process(cli, workdir, *overrides, config="configs/tiny_digits.py"):
  """Parses the flags exactly as the CLI does (fresh flag values) and runs `main.run`; returns its code."""
  argv = ["main", "--config", str(REPO / config), *TINY, *overrides]
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, flag_values=fv, lock_config=True, sys_argv=argv)
  fv(argv)
  return cli.run(fv.config, str(workdir))


@pytest.mark.slow
def test_cli_trains_logs_samples_checkpoints_and_exports(tmp_path):
  args = [sys.executable, "-m", "nag_jax.main", "--config", "configs/tiny_digits.py", "--workdir", str(tmp_path),
          *TINY, "--config.num_train_steps=4", "--config.checkpoint.every_steps=2", "--config.log_every_steps=2",
          "--config.sample.every_steps=4", "--config.sample.num_steps=3", "--config.sample.num_images=3"]
  proc = subprocess.run(args, cwd=REPO, env={**os.environ, **FAST_COMPILE}, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "train/loss=" in proc.stderr and "steps_per_sec" in proc.stderr  # console writer and ReportProgress
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "4"]
  from nag_jax import checkpoints  # pylint: disable=import-outside-toplevel
  _, _, config = checkpoints.load(tmp_path / "model")
  assert (config.input_size, config.hidden_size, config.in_channels) == (8, 32, 1)
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=import-outside-toplevel
  events = event_accumulator.EventAccumulator(str(tmp_path), size_guidance={"tensors": 0})
  events.Reload()
  tags = events.Tags()["tensors"]
  assert {"train/loss", "train/noise_drop_rate", "steps_per_sec", "samples/top_plain_bottom_nag"} <= set(tags)
  grid = events.Tensors("samples/top_plain_bottom_nag")[-1]
  assert grid.step == 4


@pytest.mark.parametrize("override, message", [
    ("--config.optimizer.learning_rate=-1", "optimizer.learning_rate must be > 0, got -1.0"),
    ("--config.objective.noise_dropout=1.0", "objective.noise_dropout must be in [0, 1), got 1.0"),
    ("--config.objective.label_dropout=-0.1", "objective.label_dropout must be in [0, 1), got -0.1"),
    ("--config.optimizer.accumulation_steps=3", "global_batch_size 16 must be divisible by accumulation_steps"),
    ("--config.objective.pseudo_level=0.5", "objective.pseudo_level must be outside the trained range [0.0, 1.0] of sit"),
    ("--config.mode=finetune", "init_from must name a converted model directory in mode 'finetune'"),
    ("--config.data.kind=imagenet", "data.kind must be one of"),
    ("--config.data.read_threads=-2",
     "data.read_threads must be an integer >= -1 (-1 = automatic, 0 = in-thread), got -2"),
])
def test_invalid_value_gives_one_clear_error_before_any_compute(cli, tmp_path, capsys, override, message):
  assert run_in_process(cli, tmp_path / "w", override) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: invalid config") and message in err
  assert len(err.splitlines()) == 1 and not (tmp_path / "w").exists()


def test_unknown_keys_are_rejected(cli, tmp_path, capsys, monkeypatch):
  argv = ["main", "--config", str(REPO / "configs/tiny_digits.py"), "--workdir", str(tmp_path),
          "--config.optimizer.lr=1e-3", "--config.seed=3"]
  monkeypatch.setattr(sys, "argv", argv)  # config_flags reads the overrides from sys.argv, as under app.run
  try:
    with pytest.raises(UserError, match=r"^unknown config key --config\.optimizer\.lr$"):
      cli.parse_flags(argv)
  finally:
    cli.FLAGS.unparse_flags()
  custom = tmp_path / "custom.py"
  custom.write_text("from nag_jax.training import get_base_config\n\n\ndef get_config():\n"
                    "  c = get_base_config()\n  c.optimizer.lr = 1e-3\n  return c\n")
  assert run_in_process(cli, tmp_path / "w", config=custom) == 2
  assert "unknown keys ['optimizer.lr']" in capsys.readouterr().err


def test_batch_must_split_over_the_devices():
  config = get_base_config()
  config.global_batch_size = 30
  with pytest.raises(ConfigError, match=r"divisible by accumulation_steps x batch devices = 1 x 4"):
    validate(config, num_devices=4)
  config.mesh.fsdp = 3
  with pytest.raises(ConfigError, match="mesh: mesh .* does not divide the 4 devices"):
    validate(config, num_devices=4)


def test_corrupt_checkpoint_gives_one_clear_error(cli, tmp_path, capsys):
  step = tmp_path / "checkpoints" / "3"
  (step / "state").mkdir(parents=True)
  (step / "state" / "checkpoint").write_bytes(b"\x00garbage")
  assert run_in_process(cli, tmp_path) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: cannot restore training checkpoint step 3")


def load_config(name, arg=None):
  spec = importlib.util.spec_from_file_location(name, REPO / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config() if arg is None else module.get_config(arg)


@pytest.mark.parametrize("name, arg", [
    ("tiny_digits", None),
    *[("imagenet_scratch", f"{f}-{s}/2") for f in ("DiT", "SiT") for s in ("S", "B", "L", "XL")],
    ("imagenet_finetune_nag", "DiT"), ("imagenet_finetune_nag", "SiT"), ("imagenet_finetune_ip", "DiT"),
    *[("dataset_finetune", d) for d in ("food", "sun", "caltech", "cub", "cars", "df20m", "artbench")],
    ("noise_estimator", "SiT"), ("noise_estimator", "DiT"),
])
def test_paper_configs_are_valid_but_for_the_paths_to_supply(name, arg):
  config = load_config(name, arg)
  if config.data.kind == "latents":
    with pytest.raises(ConfigError, match="data.path must name the latents folder"):
      validate(config)
    config.data.path = "/data/imagenet256_latents"
  if config.mode == "scratch":
    validate(config)
  else:
    with pytest.raises(ConfigError) as info:
      validate(config)
    assert str(info.value) == f"invalid config: init_from must name a converted model directory in mode {config.mode!r}"
