"""CLI: measure the noise shift of a model with its noise-level estimator g_phi (paper sec. 3, 5.3, app. D).

  python -m nag_jax.analyze_noise_shift --model DIR --estimator DIR --data digits --out DIR \
      [--sampler sde --num-steps 20] [--guidance none,cfg,nag,nag_cfg] [--t-values 0.3,0.5,0.7]

Real data x0 and noise go through the model's forward process at every level of the sampler's grid
(one forward trajectory per sample), and the same labels are sampled with each guidance setting from
the same noise, keeping every intermediate state. g_phi estimates the level of each state. Writes
report.json, noise_shift.csv, table.txt, estimates.npz and densities / shift_curves / guidance_shift PNGs.
Levels are noise fractions (1 = noise); see `nag_jax/evaluation/noise_shift.py`.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import pathlib
import sys

import jax
import ml_collections
import numpy as np

from nag_jax import checkpoints, cli
from nag_jax.checkpoints import model_dir
from nag_jax.data.pipeline import record_transforms
from nag_jax.evaluation import noise_shift as ns
from nag_jax.evaluation.noise_shift_plots import plot_all
from nag_jax.guidance import GuidanceConfig
from nag_jax.guidance.baselines import Schedule
from nag_jax.sampling.config import PRESETS
from nag_jax.sampling.pipeline import METHODS, SamplerConfig, build_sampler, step_noise_levels
from nag_jax.training.input_pipeline import check_source, create_source

SETTINGS = ("none", "cfg", "nag", "nag_cfg", "classifier_nag", "eps_scaling", "time_shift")
DATA_KINDS = ("digits", "folder", "tfds", "latents")


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


def data_source(spec: str, image_size: int, data_dir: str = "", split: str = "train"):
  """The grain source of a --data spec (`nag_jax.data` sources via the training config's data kinds)."""
  kind, _, arg = spec.partition(":")
  if kind not in DATA_KINDS or (kind != "digits") != bool(arg):
    raise ValueError(f"--data must be digits, folder:PATH, tfds:NAME or latents:PATH, got {spec!r}")
  dc = ml_collections.ConfigDict(dict(kind=kind, path=arg, tfds_name=arg, data_dir=data_dir, split=split,
                                      image_size=image_size))
  return create_source(dc)


def read_batch(source, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Float32 NHWC x0 (images in [-1, 1], or unflipped latents) and int32 labels of the records."""
  transforms = record_transforms(source.kind, flip=False)
  records = []
  for i in indices:
    record = source[int(i)]
    for t in transforms:
      record = t.map(record)
    records.append(record)
  return np.stack([r["x"] for r in records]), np.array([r["y"] for r in records], np.int32)


def guidance_of(name: str, args: argparse.Namespace) -> GuidanceConfig:
  """The GuidanceConfig of a named setting (CFG / NAG weights from the paper's presets unless given)."""
  if name not in SETTINGS:
    raise ValueError(f"unknown guidance setting {name!r}; expected one of {SETTINGS}")
  if name in PRESETS:
    cfg, nag = PRESETS[name]
    cfg = cfg if args.cfg_scale is None or cfg == 1.0 else args.cfg_scale
    nag = nag if args.nag_scale is None or nag == 0.0 else args.nag_scale
    return GuidanceConfig(cfg_scale=cfg, nag_scale=nag)
  return GuidanceConfig(**{"classifier_nag": dict(classifier_nag_scale=args.classifier_nag_scale,
                                                  classifier_nag_sigma=args.classifier_nag_sigma),
                           "eps_scaling": dict(eps_scaling=args.eps_scaling),
                           "time_shift": dict(time_shift_window=args.time_shift_window)}[name])


def collect(args: argparse.Namespace, t_values: list[float]) -> tuple[np.ndarray, dict[str, np.ndarray], dict]:
  """(levels (S,), {setting: (S, N) estimated noise fractions} with the forward reference, run info)."""
  _, params, config = checkpoints.load(args.model)
  estimator, est_params = model_dir.load_estimator(args.estimator)
  e = estimator.config
  if (e.family, e.input_size, e.in_channels) != (config.family, config.input_size, config.in_channels):
    raise ValueError(f"the estimator takes {e.family} inputs of {e.input_size}x{e.input_size}x{e.in_channels}, "
                     f"the model {config.family} {config.input_size}x{config.input_size}x{config.in_channels}")
  settings = [s for s in args.guidance.split(",") if s]
  pseudo = model_dir.read_pseudo_level(args.model)  # None: the family's 1001 / 1.001
  guidances = {s: dataclasses.replace(guidance_of(s, args), pseudo_level=pseudo) for s in settings}
  sampler = SamplerConfig(method=args.sampler or METHODS[config.family][0], num_steps=args.num_steps,
                          ode_method=args.ode_method)
  if sampler.method == "ode" and sampler.ode_method == "dopri5":
    raise ValueError("the analysis needs a fixed-step sampler (dopri5 has no step grid)")
  levels = step_noise_levels(config, sampler)[1:]  # trajectory[k] enters step k + 1
  ns.nearest_steps(levels, t_values)  # bad t values fail before any compute
  if args.num_samples < 2 or args.batch_size < 1:
    raise ValueError(f"--num-samples must be >= 2 and --batch-size >= 1, got {args.num_samples}, {args.batch_size}")
  source = data_source(args.data, config.input_size, args.data_dir, args.split)
  check_source(source, config)
  schedule = Schedule.create(config.family, path_type=sampler.path_type)
  times = ns.level_to_time(levels, schedule)
  level_fn = ns.make_level_fn(estimator, schedule)
  forward = jax.jit(lambda x0, noise: ns.forward_states(schedule, x0, noise, times))
  samplers = {s: build_sampler(config, sampler, g, estimator=estimator, return_trajectory=True)
              for s, g in guidances.items()}
  rng = np.random.default_rng(args.seed)
  batch = min(args.batch_size, args.num_samples)
  n_batches = -(-args.num_samples // batch)
  order = np.resize(rng.permutation(len(source)), n_batches * batch)
  key = jax.random.key(args.seed)
  out = {name: [] for name in [ns.FORWARD, *settings]}
  for b in range(n_batches):
    x0, y = read_batch(source, order[b * batch:(b + 1) * batch])
    noise = jax.random.normal(jax.random.fold_in(jax.random.fold_in(key, 0), b), x0.shape)
    out[ns.FORWARD].append(level_fn(est_params, forward(x0, noise), y))
    for s, fn in samplers.items():
      traj = fn(params, jax.random.fold_in(jax.random.fold_in(key, 1), b), y, estimator_params=est_params)
      out[s].append(level_fn(est_params, traj["trajectory"][:-1], y))
  estimates = {k: np.concatenate([np.asarray(a) for a in v], axis=1)[:, :args.num_samples] for k, v in out.items()}
  info = {"family": config.family, "sampler": sampler.method, "num_steps": sampler.num_steps,
          "guidance": {s: str(g) for s, g in guidances.items()}, "data": args.data}
  return levels, estimates, info


def write_outputs(out_dir: pathlib.Path, levels: np.ndarray, estimates: dict, report: dict) -> None:
  """report.json, noise_shift.csv, table.txt, estimates.npz and the three PNGs."""
  out_dir.mkdir(parents=True, exist_ok=True)
  (out_dir / "report.json").write_text(json.dumps(report, indent=1))
  rows = ns.csv_rows(report)
  with open(out_dir / "noise_shift.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  (out_dir / "table.txt").write_text(ns.table_text(report))
  np.savez(out_dir / "estimates.npz", levels=levels, **estimates)
  plot_all(report, out_dir)


def run(args: argparse.Namespace) -> dict:
  """Measures, writes everything into args.out and returns the report."""
  try:
    t_values = [float(v) for v in args.t_values.split(",") if v]
  except ValueError:
    raise ValueError(f"--t-values must be comma-separated numbers, got {args.t_values!r}") from None
  levels, estimates, info = collect(args, t_values)
  report = {**ns.analyze(levels, estimates, t_values), "run": info}
  write_outputs(pathlib.Path(args.out), levels, estimates, report)
  return report


@cli.entry_point
def main(argv=None) -> int:
  """The command: an expected failure is one `error:` line and code 2."""
  args = parse_args(argv)
  report = run(args)
  print(ns.table_text(report), end="")
  print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
