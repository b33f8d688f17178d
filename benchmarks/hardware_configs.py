"""The TPU compiler's verdict on every hardware variant of the paper's XL/2 configs, as one markdown table.

  python -m benchmarks.hardware_configs [--only v5p-64,v4-32] [--programs finetune,sample] [--out DIR]

For each TPU variant of nag_jax.hardware.SETUPS and each program (the DiT-XL/2 and SiT-XL/2 NAG fine-tune
train step, the from-scratch one, the NAG+CFG sampler call with SD-VAE decoding), runs
`python -m nag_jax.dry_run --config FILE:ARG,VARIANT --json` (the real TPU compiler, deviceless, on this CPU host;
about 1-4 minutes per XL/2 program on 2 cores) and prints per chip: peak against HBM, spare, the counted TFLOP per
step or call, and the roofline projection at 50% of peak (labelled: a projection, not a measurement). GPU variants
are not compiler-checked (JAX's deviceless GPU compile needs a target description taken from a real GPU): their
rows give the FLOP-based projection only. The configs' docstrings quote this table (docs/scale.md too).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import time

from nag_jax import cli, hardware
from nag_jax.models import get_model_config
from nag_jax.sampling import config as sample_config
from nag_jax.sampling.pipeline import network_rows

PROGRAMS = {  # name -> (config file, argument before the variant)
    "finetune": ("configs/imagenet_finetune_nag.py", "DiT"),
    "finetune-sit": ("configs/imagenet_finetune_nag.py", "SiT"),
    "scratch": ("configs/imagenet_scratch.py", "DiT-XL/2"),
    "sample": ("configs/sample_dit.py", "nag_cfg"),
    "sample-sit": ("configs/sample_sit.py", "nag_cfg"),
}


def dry_run(config: str, out: pathlib.Path) -> tuple[dict | None, float, str]:
  """(report, seconds, error line) of one dry run."""
  start = time.perf_counter()
  proc = subprocess.run([sys.executable, "-m", "nag_jax.dry_run", "--config", config, "--json", str(out)],
                        capture_output=True, text=True, check=False)
  seconds = time.perf_counter() - start
  if proc.returncode:
    return None, seconds, (proc.stderr.strip().splitlines() or ["?"])[-1]
  return json.loads(out.read_text()), seconds, ""


def gpu_projection(name: str, program: str) -> str:
  """The FLOP roofline of a GPU variant at 50% of the bf16 peak (no compiler involved)."""
  setup = hardware.SETUPS[name]
  peak = hardware.peak_flops(name.split("x", 1)[1])
  model = get_model_config("DiT-XL/2")
  forward = hardware.forward_flops(model)
  if program.startswith("sample"):
    file, arg = PROGRAMS[program]
    sampler, guidance = sample_config.to_dataclasses(cli.load_config_file(f"{file}:{arg}"))
    batch, flops = setup.devices * setup.sample_per_device, network_rows(model, sampler, guidance) * forward
  else:
    batch, flops = 256, 3 * forward
  seconds = flops * batch / setup.devices / (0.5 * peak)
  return f"{seconds * 1e3:,.0f} ms, {batch / seconds:,.0f} img/s"


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--only", default="", help="comma-separated variants (default: all)")
  p.add_argument("--programs", default="finetune,sample", help=f"comma-separated of {', '.join(PROGRAMS)}")
  p.add_argument("--out", default="hardware_configs", help="folder for the JSON reports")
  args = p.parse_args(argv)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  names = [n for n in hardware.SETUPS if not args.only or n in args.only.split(",")]
  print("| variant | program | mesh | per-chip peak / HBM | spare | TFLOP per chip | projection at 50% | bound | "
        "compile s |")
  print("|---|---|---|---|---|---|---|---|---|")
  for program in args.programs.split(","):
    file, arg = PROGRAMS[program]
    for name in names:
      setup = hardware.SETUPS[name]
      if not setup.topology:
        mesh = setup.train_mesh if not program.startswith("sample") else {"data": setup.devices}
        print(f"| {name} | {program} | {mesh} | not compiler-checked | | | {gpu_projection(name, program)} (FLOPs only) | compute | |",
              flush=True)
        continue
      report, seconds, error = dry_run(f"{file}:{arg},{name}", out / f"{program}_{name}.json")
      if report is None:
        print(f"| {name} | {program} | | {error} | | | | | {seconds:.0f} |", flush=True)
        continue
      mesh = {k: v for k, v in report["mesh"].items() if v > 1}
      unit = "step" if report["program"] == "train" else "call"
      half = report["projection"]["50%"]
      print(f"| {name} | {program} | {mesh} | {report['peak_bytes'] / 2**30:.1f} / {report['memory_bytes'] / 2**30:.1f} GiB "
            f"| {report['spare']:.0%} | {report['flops_per_chip'] / 1e12:.1f} | {half[unit + '_s'] * 1e3:,.0f} ms per "
            f"{unit}, {half['images_per_s']:,.0f} img/s | {report['projection']['bound']} | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
  main()
