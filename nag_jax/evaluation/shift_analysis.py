"""The noise-shift analysis as a library: measure g_phi's estimated level along forward and sampled trajectories.

Real data x0 and noise go through the model's forward process at every level of the sampler's grid
(one forward trajectory per sample), and the same labels are sampled with each guidance setting from
the same noise, keeping every intermediate state; g_phi estimates the level of each state. `measure`
returns the estimates, `run` also writes report.json, noise_shift.csv, table.txt, estimates.npz and
the PNGs. `python -m nag_jax.analyze_noise_shift` and the demo call these with real arguments.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import pathlib
from typing import Sequence

import jax
import ml_collections
import numpy as np

from nag_jax import checkpoints, paths, process
from nag_jax.checkpoints import model_dir
from nag_jax.data.pipeline import record_transforms
from nag_jax.evaluation import noise_shift as ns
from nag_jax.evaluation.noise_shift_plots import plot_all
from nag_jax.guidance import GuidanceConfig
from nag_jax.sampling.config import PRESETS
from nag_jax.sampling.pipeline import SamplerConfig, build_sampler, step_noise_levels
from nag_jax.training.input_pipeline import DATA_KINDS, check_source, create_source
from nag_jax.errors import UserError

SETTINGS = ("none", "cfg", "nag", "nag_cfg", "classifier_nag", "eps_scaling", "time_shift")


@dataclasses.dataclass(frozen=True)
class Strengths:
  """The weights of the named settings: CFG / NAG default to the paper's presets; the others are used as given."""
  cfg_scale: float | None = None
  nag_scale: float | None = None
  classifier_nag_scale: float = 1.0
  classifier_nag_sigma: float = 0.1
  eps_scaling: float = 0.005
  time_shift_window: float = 0.02


def data_source(spec: str, image_size: int, data_dir: str = "", split: str = "train"):
  """The grain source of a data spec (digits | folder:PATH | tfds:NAME | latents:PATH), as training reads it."""
  kind, _, arg = spec.partition(":")
  if kind not in DATA_KINDS or (kind != "digits") != bool(arg):
    raise UserError(f"--data must be digits, folder:PATH, tfds:NAME or latents:PATH, got {spec!r}")
  if kind in ("folder", "latents"):
    paths.local_only(arg, "--data")
  data_config = ml_collections.ConfigDict(dict(kind=kind, path=arg, tfds_name=arg, data_dir=data_dir,
                                               split=split, image_size=image_size))
  return create_source(data_config)


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


def guidance_of(name: str, strengths: Strengths = Strengths()) -> GuidanceConfig:
  """The GuidanceConfig of a named setting (CFG / NAG weights from the paper's presets unless given)."""
  if name not in SETTINGS:
    raise UserError(f"unknown guidance setting {name!r}; expected one of {SETTINGS}")
  s = strengths
  if name in PRESETS:
    cfg, nag = PRESETS[name]
    cfg = cfg if s.cfg_scale is None or cfg == 1.0 else s.cfg_scale
    nag = nag if s.nag_scale is None or nag == 0.0 else s.nag_scale
    return GuidanceConfig(cfg_scale=cfg, nag_scale=nag)
  return GuidanceConfig(**{"classifier_nag": dict(classifier_nag_scale=s.classifier_nag_scale,
                                                  classifier_nag_sigma=s.classifier_nag_sigma),
                           "eps_scaling": dict(eps_scaling=s.eps_scaling),
                           "time_shift": dict(time_shift_window=s.time_shift_window)}[name])


def measure(model: str | pathlib.Path, estimator: str | pathlib.Path, data: str, *,
            settings: Sequence[str] = ("none", "nag"), strengths: Strengths = Strengths(),
            sampler: str | None = None, num_steps: int = 20, ode_method: str = "euler",
            num_samples: int = 256, batch_size: int = 64, t_values: Sequence[float] = (0.7, 0.5, 0.3),
            seed: int = 0, data_dir: str = "", split: str = "train") -> tuple[np.ndarray, dict[str, np.ndarray], dict]:
  """(levels (S,), {setting: (S, N) estimated noise fractions} with the forward reference, run info).

  `model` and `estimator` are converted model directories (a DiT/SiT and its g_phi); `sampler` defaults
  to the family's first sampler method; every check comes before any compute.
  """
  _, params, config = checkpoints.load(str(model))
  g_phi, est_params = model_dir.load_estimator(str(estimator))
  e = g_phi.config
  if (e.family, e.input_size, e.in_channels) != (config.family, config.input_size, config.in_channels):
    raise UserError(f"the estimator takes {e.family} inputs of {e.input_size}x{e.input_size}x{e.in_channels}, "
                    f"the model {config.family} {config.input_size}x{config.input_size}x{config.in_channels}")
  pseudo = model_dir.read_pseudo_level(str(model))  # None: the family default
  guidances = {s: dataclasses.replace(guidance_of(s, strengths), pseudo_level=pseudo) for s in settings}
  sampler_config = SamplerConfig(method=sampler or process.family_process(config.family).sampler_methods[0],
                                 num_steps=num_steps, ode_method=ode_method)
  if sampler_config.method == "ode" and sampler_config.ode_method == "dopri5":
    raise UserError("the analysis needs a fixed-step sampler (dopri5 has no step grid)")
  levels = step_noise_levels(config, sampler_config)[1:]  # trajectory[k] enters step k + 1
  ns.nearest_steps(levels, t_values)  # bad t values fail before any compute
  if num_samples < 2 or batch_size < 1:
    raise UserError(f"--num-samples must be >= 2 and --batch-size >= 1, got {num_samples}, {batch_size}")
  source = data_source(data, config.input_size, data_dir, split)
  check_source(source, config)
  proc = process.create(config.family, path_type=sampler_config.path_type)
  times = proc.level_to_time(levels)
  level_fn = ns.make_level_fn(g_phi, proc)
  forward = jax.jit(lambda x0, noise: ns.forward_states(proc, x0, noise, times))
  samplers = {s: build_sampler(config, sampler_config, g, estimator=g_phi, return_trajectory=True)
              for s, g in guidances.items()}
  rng = np.random.default_rng(seed)
  batch = min(batch_size, num_samples)
  n_batches = -(-num_samples // batch)
  order = np.resize(rng.permutation(len(source)), n_batches * batch)
  key = jax.random.key(seed)
  out = {name: [] for name in [ns.FORWARD, *settings]}
  for b in range(n_batches):
    x0, y = read_batch(source, order[b * batch:(b + 1) * batch])
    noise = jax.random.normal(jax.random.fold_in(jax.random.fold_in(key, 0), b), x0.shape)
    out[ns.FORWARD].append(level_fn(est_params, forward(x0, noise), y))
    for s, fn in samplers.items():
      traj = fn(params, jax.random.fold_in(jax.random.fold_in(key, 1), b), y, estimator_params=est_params)
      out[s].append(level_fn(est_params, traj["trajectory"][:-1], y))
  estimates = {k: np.concatenate([np.asarray(a) for a in v], axis=1)[:, :num_samples] for k, v in out.items()}
  info = {"family": config.family, "sampler": sampler_config.method, "num_steps": sampler_config.num_steps,
          "guidance": {s: str(g) for s, g in guidances.items()}, "data": data}
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


def run(out: str | pathlib.Path, model: str | pathlib.Path, estimator: str | pathlib.Path, data: str,
        **options) -> dict:
  """Measures (`measure`'s keywords), writes everything into `out` (process 0) and returns the report.

  In a multi-process run every process measures the same (seeded) batches on its own devices.
  """
  t_values = list(options.get("t_values", (0.7, 0.5, 0.3)))
  levels, estimates, info = measure(model, estimator, data, **options)
  report = {**ns.analyze(levels, estimates, t_values), "run": info}
  if jax.process_index() == 0:
    write_outputs(pathlib.Path(out), levels, estimates, report)
  return report
