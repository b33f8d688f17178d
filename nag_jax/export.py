"""CLI: Orbax model directory -> official PyTorch state_dict that `load_state_dict(strict=True)` accepts.

  python -m nag_jax.export --src ckpt/dit-xl-2 --dst DiT-XL-2-256x256.pt
"""
from __future__ import annotations

import argparse
import pathlib
import sys

import jax
import numpy as np

from nag_jax.checkpoints import model_dir
from nag_jax.checkpoints.dit_convert import flax_to_torch
from nag_jax.checkpoints.torch_io import CheckpointError, write_state_dict


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m nag_jax.export", description=__doc__.splitlines()[0])
  p.add_argument("--src", required=True, help="converted model directory")
  p.add_argument("--dst", required=True, help="output .pt/.pth or .safetensors file")
  p.add_argument("--overwrite", action="store_true", help="replace an existing --dst file")
  args = p.parse_args(argv)
  try:
    if pathlib.Path(args.dst).exists() and not args.overwrite:
      raise CheckpointError(f"{args.dst} exists; pass --overwrite to replace it")
    _, params, config = model_dir.load(args.src)
    write_state_dict(flax_to_torch(jax.tree.map(np.asarray, params), config), args.dst)
  except CheckpointError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"exported {args.src} -> {args.dst} ({config.family}, {config.depth} blocks, width {config.hidden_size})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
