"""CLI: measure the noise shift of a model with its noise-level estimator g_phi (paper sec. 3, 5.3, app. D).

  python -m nag_jax.analyze_noise_shift --model DIR --estimator DIR --data digits --out DIR \
      [--sampler sde --num-steps 20] [--guidance none,cfg,nag,nag_cfg] [--t-values 0.3,0.5,0.7]

Real data x0 and noise go through the model's forward process at every level of the sampler's grid
(one forward trajectory per sample), and the same labels are sampled with each guidance setting from
the same noise, keeping every intermediate state. g_phi estimates the level of each state. Writes
report.json, noise_shift.csv, table.txt, estimates.npz and densities / shift_curves / guidance_shift PNGs.
Levels are noise fractions (1 = noise); see `nag_jax/evaluation/noise_shift.py`. This parses the flags
and calls `nag_jax.evaluation.shift_analysis.run`, the library function the demo calls too.
"""
from __future__ import annotations

import argparse
import sys

from nag_jax import cli
from nag_jax.evaluation import noise_shift as ns
from nag_jax.evaluation import shift_analysis
from nag_jax.evaluation.shift_analysis import SETTINGS
from nag_jax.errors import UserError
from nag_jax.sharding import multihost


def parse_args(argv=None) -> argparse.Namespace:
  """The command line (see the module docstring); a bad flag raises UserError."""
  p = cli.ArgumentParser(prog="python -m nag_jax.analyze_noise_shift", description=__doc__.splitlines()[0])
  p.add_argument("--model", required=True, help="converted model directory (DiT or SiT)")
  p.add_argument("--estimator", required=True, help="g_phi directory (config.json + params/ of a NoiseEstimator)")
  p.add_argument("--data", required=True, help="digits | folder:PATH | tfds:NAME | latents:PATH")
  p.add_argument("--data-dir", default="", help="TFDS data_dir")
  p.add_argument("--split", default="train", help="TFDS split")
  p.add_argument("--out", required=True, help="output directory")
  p.add_argument("--sampler", default=None, help="dit: ddpm | ddim; sit: sde | ode (default: ddpm / sde)")
  p.add_argument("--num-steps", type=int, default=20, help="sampling steps (the paper's analysis: 20)")
  p.add_argument("--ode-method", default="euler", help="fixed-grid ODE solver: euler | heun2 | midpoint")
  p.add_argument("--guidance", default="none,nag", help=f"comma-separated settings from {SETTINGS}")
  p.add_argument("--cfg-scale", type=float, default=None, help="CFG scale (default: the paper's presets)")
  p.add_argument("--nag-scale", type=float, default=None, help="NAG w (default: the paper's presets)")
  p.add_argument("--classifier-nag-scale", type=float, default=1.0)
  p.add_argument("--classifier-nag-sigma", type=float, default=0.1)
  p.add_argument("--eps-scaling", type=float, default=0.005, help="lambda - 1 of Epsilon Scaling")
  p.add_argument("--time-shift-window", type=float, default=0.02, help="Time Shift half-window (noise fraction)")
  p.add_argument("--num-samples", type=int, default=256)
  p.add_argument("--batch-size", type=int, default=64)
  p.add_argument("--t-values", default="0.7,0.5,0.3", help="prior noise fractions for the densities")
  p.add_argument("--seed", type=int, default=0)
  return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
  """Parses the list flags, then runs `shift_analysis.run` (writes into args.out) and returns the report."""
  try:
    t_values = [float(v) for v in args.t_values.split(",") if v]
  except ValueError:
    raise UserError(f"--t-values must be comma-separated numbers, got {args.t_values!r}") from None
  strengths = shift_analysis.Strengths(
      cfg_scale=args.cfg_scale, nag_scale=args.nag_scale, classifier_nag_scale=args.classifier_nag_scale,
      classifier_nag_sigma=args.classifier_nag_sigma, eps_scaling=args.eps_scaling,
      time_shift_window=args.time_shift_window)
  return shift_analysis.run(args.out, args.model, args.estimator, args.data,
                            settings=[s for s in args.guidance.split(",") if s], strengths=strengths,
                            sampler=args.sampler, num_steps=args.num_steps, ode_method=args.ode_method,
                            num_samples=args.num_samples, batch_size=args.batch_size, t_values=t_values,
                            seed=args.seed, data_dir=args.data_dir, split=args.split)


@cli.entry_point
def main(argv=None) -> int:
  """The command: an expected failure is one `error:` line and code 2."""
  args = parse_args(argv)
  multihost.start()  # before any other JAX call
  report = run(args)
  print(ns.table_text(report), end="")
  print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
