"""CLI: a diffusers-format SD-VAE (config.json + .safetensors/.bin) -> Orbax params + config.json.

  python -m nag_jax.convert_vae --src sd-vae-ft-ema --dst ckpt/sd-vae-ft-ema [--overwrite]
"""
from __future__ import annotations

import argparse
import sys

import jax

from nag_jax import cli
from nag_jax.checkpoints.vae_convert import convert


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  """The command line: --src, --dst, --overwrite."""
  p = cli.ArgumentParser(prog="python -m nag_jax.convert_vae", description=__doc__.splitlines()[0])
  p.add_argument("--src", required=True,
                 help="diffusers VAE folder (config.json + diffusion_pytorch_model.*) or its weights file")
  p.add_argument("--dst", required=True, help="output folder (params/ from Orbax + config.json)")
  p.add_argument("--overwrite", action="store_true", help="replace a non-empty --dst")
  return p.parse_args(argv)


@cli.entry_point
def main(argv: list[str] | None = None) -> int:
  """Converts; an expected failure is one `error:` line and code 2, having written nothing."""
  args = parse_args(argv)
  config, params = convert(args.src, args.dst, overwrite=args.overwrite)
  n = sum(v.size for v in jax.tree.leaves(params))
  print(f"converted {args.src} -> {args.dst}: {n:,} parameters, block_out_channels "
        f"{list(config.block_out_channels)}, latent_channels {config.latent_channels}, "
        f"scaling_factor {config.scaling_factor}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
