"""CLI: Orbax model directory -> official PyTorch state_dict that `load_state_dict(strict=True)` accepts.

  python -m nag_jax.export --src ckpt/dit-xl-2 --dst DiT-XL-2-256x256.pt [--overwrite]

The file is written beside --dst under a staging name and renamed into place, so an existing --dst
(replaced only with --overwrite) is never left half-written.
"""
from __future__ import annotations

import sys

import jax
import numpy as np

from nag_jax import cli, destination, paths
from nag_jax.checkpoints import model_dir
from nag_jax.checkpoints.dit_convert import flax_to_torch
from nag_jax.checkpoints.torch_io import write_state_dict

SUFFIXES = (".pt", ".pth", ".safetensors")


def export(src: paths.PathLike, dst: paths.PathLike, *, overwrite: bool = False):
  """Writes the model directory `src` as a state_dict file `dst`; returns its ModelConfig."""
  destination.check_file(dst, what="state_dict", overwrite=overwrite)  # before the (slow) load
  if paths.path(dst).suffix not in SUFFIXES:
    raise destination.DestinationError(f"--dst {dst} must end in one of {', '.join(SUFFIXES)}")
  _, params, config = model_dir.load(src)
  sd = flax_to_torch(jax.tree.map(np.asarray, params), config)
  destination.write_file(dst, lambda p: write_state_dict(sd, p), what="state_dict", overwrite=overwrite)
  return config


def parse_args(argv=None):
  """The command line (see the module docstring); a bad flag raises UserError."""
  p = cli.ArgumentParser(prog="python -m nag_jax.export", description=__doc__.splitlines()[0])
  p.add_argument("--src", required=True, help="converted model directory")
  p.add_argument("--dst", required=True, help="output .pt/.pth or .safetensors file")
  p.add_argument("--overwrite", action="store_true", help="replace an existing --dst file")
  return p.parse_args(argv)


@cli.entry_point
def main(argv=None) -> int:
  """Exports --src to --dst; an expected failure is one `error:` line and code 2, --dst untouched."""
  args = parse_args(argv)
  config = export(args.src, args.dst, overwrite=args.overwrite)
  print(f"exported {args.src} -> {args.dst} ({config.family}, {config.depth} blocks, width {config.hidden_size})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
