"""Trains or fine-tunes DiT/SiT with noise-condition dropout (NAG), or the noise estimator g_phi.

  python -m nag_jax.main --config configs/tiny_digits.py --workdir runs/tiny [--config.x=y ...]

The config is locked (a misspelt override is an error) and fully validated before any compute. The
run resumes from the latest checkpoint in --workdir. Logs go to the console and to TensorBoard in
--workdir; the final EMA weights are exported to --workdir/model as a converted model directory.
Every expected failure is one `error: ...` line and exit code 2 (`nag_jax.cli`); --verbose adds tracebacks.
"""
import sys

import jax
from absl import flags, logging
from ml_collections import config_flags

from nag_jax import cli
from nag_jax.errors import UserError
from nag_jax.sharding import multihost

FLAGS = flags.FLAGS

flags.DEFINE_string("workdir", None, "Directory for checkpoints, TensorBoard events and the exported model.")
config_flags.DEFINE_config_file("config", None, "Training configuration file.", lock_config=True)


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing under the error convention: a bad flag or override raises UserError naming it."""
  return cli.parse_absl_flags(argv)


def train(config, workdir: str) -> int:
  """Trains per `config` in `workdir` (TensorBoard logging needs TensorFlow, imported here); returns 0, or
  PREEMPTED_EXIT_CODE when a SIGTERM stopped the run after saving (the same command resumes it)."""
  from nag_jax.training import run_control  # pylint: disable=import-outside-toplevel
  from nag_jax.training import train as training  # pylint: disable=import-outside-toplevel  (clu -> TF)
  try:
    training.train_with_logging(config, workdir)
  except run_control.Preempted as e:
    print(f"stopped: {e}", file=sys.stderr)
    return run_control.PREEMPTED_EXIT_CODE
  return 0


def run(config, workdir: str, verbose: bool = False) -> int:
  """Trains; returns `train`'s code, or prints one `error: ...` line and returns 2 (bad config or checkpoint,
  NaN loss)."""
  return cli.run(train, config, workdir, verbose=verbose, named=[str(workdir)])


def main(argv: list[str]) -> int:
  """The absl command: --config and --workdir are required; returns the exit code."""
  if len(argv) > 1:
    raise UserError(f"unexpected arguments {argv[1:]}; settings go in --config.KEY=VALUE")
  for name, hint in (("config", "e.g. --config configs/tiny_digits.py"), ("workdir", "e.g. --workdir runs/tiny")):
    if FLAGS[name].value is None:
      raise UserError(f"--{name} is required ({hint})")
  multihost.start()  # joins the processes the launcher started, before any other JAX call
  logging.info("JAX process %d / %d, local devices %s", jax.process_index(), jax.process_count(),
               jax.local_devices())
  from clu import platform  # pylint: disable=import-outside-toplevel  (clu imports TensorFlow)
  platform.work_unit().set_task_status(f"process_index: {jax.process_index()}, "
                                       f"process_count: {jax.process_count()}")
  platform.work_unit().create_artifact(platform.ArtifactType.DIRECTORY, FLAGS.workdir, "workdir")
  return train(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  jax.config.config_with_absl()
  cli.absl_main(main)
