"""CLI: the NAG demo on scikit-learn's digits; writes OUT/report.md and prints the headline table.

  python -m nag_jax.demo [--quick] [--out demo_out] [--seed 0]
  python -m nag_jax.demo --study [--quick] [--out demo_out]

The full preset fits about 15 minutes on 2 idle CPU cores, `--quick` (CI) about 3. OUT's training
folders are replaced, never resumed. `--study` (OUT/study/report.md) reuses OUT's trained models when
their training budget matches and trains the missing ones into OUT/runs.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import sys
import time

from nag_jax import cli
from nag_jax.demo import experiment, report, study
from nag_jax.demo.config import FULL, QUICK, STUDY, STUDY_QUICK


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  """The command line (see the module docstring); a bad flag raises UserError (one line, code 2)."""
  p = cli.ArgumentParser(prog="python -m nag_jax.demo", description=__doc__.splitlines()[0])
  p.add_argument("--out", default="demo_out", help="output folder (report.md, PNGs, results.json, runs/)")
  p.add_argument("--quick", action="store_true", help="CI preset: a few hundred steps, 200 samples, < 3 min")
  p.add_argument("--seed", type=int, default=0, help="seed of training, sampling and the classifier")
  p.add_argument("--no-progress", action="store_true", help="no progress bars (logs, CI)")
  p.add_argument("--study", action="store_true", help="the guidance study (weights, NAG + CFG, intervals, steps, "
                 "peers, noise shift with 95%% intervals) into OUT/study")
  return p.parse_args(argv)


@cli.entry_point
def main(argv: list[str] | None = None) -> int:
  """Runs the demo (or --study); an expected failure is one `error:` line and code 2."""
  args = parse_args(argv)
  dc = dataclasses.replace(QUICK if args.quick else FULL, seed=args.seed)
  out = pathlib.Path(args.out).absolute()
  out.mkdir(parents=True, exist_ok=True)
  command = "python -m nag_jax.demo" + (" --study" if args.study else "") + (" --quick" if args.quick else "") + (
      f" --seed {args.seed}" if args.seed else "")
  if args.study:
    print(study.run_study(dc, STUDY_QUICK if args.quick else STUDY, out, command, progress=not args.no_progress))
    print(f"report: {out / 'study' / 'report.md'}")
    return 0
  wall, cpu = time.perf_counter(), time.process_time()
  results, pictures = experiment.run(dc, out, progress=not args.no_progress)
  results["total"] = {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}
  results["machine"] = {"cpus": os.cpu_count(), "load_avg": os.getloadavg()[0]}
  headline = report.write(out, results, pictures, command)
  print(headline)
  print(f"\nclassifier held-out accuracy {results['classifier']['test_accuracy']:.3f}; "
        f"{results['total']['wall_s'] / 60:.1f} min wall, {results['total']['cpu_s'] / 60:.1f} min CPU; "
        f"report: {out / 'report.md'}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
