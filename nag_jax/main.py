"""Trains or fine-tunes DiT/SiT with noise-condition dropout (NAG), or the noise estimator g_phi.

  python -m nag_jax.main --config configs/tiny_digits.py --workdir runs/tiny [--config.x=y ...]

The config is locked (a misspelt override is an error) and fully validated before any compute. The
run resumes from the latest checkpoint in --workdir. Logs go to the console and to TensorBoard in
--workdir; the final EMA weights are exported to --workdir/model as a converted model directory.
"""
import sys

import jax
from absl import app, flags, logging
from clu import platform
from ml_collections import config_flags

from nag_jax.checkpoints import CheckpointError
from nag_jax.training import config_validation, train
from nag_jax.training.config_validation import ConfigError

FLAGS = flags.FLAGS

flags.DEFINE_string("workdir", None, "Directory for checkpoints, TensorBoard events and the exported model.")
config_flags.DEFINE_config_file("config", None, "Training configuration file.", lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing; an override of a key the config lacks gives one `error:` line, not a traceback."""
  try:
    return FLAGS(argv)
  except (AttributeError, KeyError) as e:  # what config_flags raises for a missing key
    names = [a[len("--config."):].split("=")[0] for a in argv if a.startswith("--config.")]
    unknown = [n for n in names if not config_validation.has_key(n)] or names
    print(f"error: unknown config keys {unknown} ({e}); see nag_jax/training/base_config.py", file=sys.stderr)
    sys.exit(2)


def run(config, workdir: str) -> int:
  """Trains; returns 0, or prints one `error: ...` line and returns 2 (bad config or checkpoint, NaN loss)."""
  try:
    train.train_and_evaluate(config, workdir)
  except (ConfigError, CheckpointError, FloatingPointError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Too many command-line arguments: {argv[1:]}")
  # Random numbers that do not depend on how arrays are sharded.
  jax.config.update("jax_threefry_partitionable", True)
  logging.info("JAX process %d / %d, local devices %s", jax.process_index(), jax.process_count(),
               jax.local_devices())
  platform.work_unit().set_task_status(f"process_index: {jax.process_index()}, "
                                       f"process_count: {jax.process_count()}")
  platform.work_unit().create_artifact(platform.ArtifactType.DIRECTORY, FLAGS.workdir, "workdir")
  sys.exit(run(FLAGS.config, FLAGS.workdir))


if __name__ == "__main__":
  jax.config.config_with_absl()
  app.run(main, flags_parser=parse_flags)
