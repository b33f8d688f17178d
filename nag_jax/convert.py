"""CLI: official DiT/SiT checkpoint (.pt/.pth/.safetensors) -> Orbax model directory.

  python -m nag_jax.convert --src DiT-XL-2-256x256.pt --dst ckpt/dit-xl-2 --family dit [--sha256 HEX]

--sha256 checks the downloaded file (all 64 hex digits, or a prefix of at least 8) before anything is read.
"""
from __future__ import annotations

import argparse
import sys

from nag_jax import cli, paths, process
from nag_jax.checkpoints import model_dir
from nag_jax.checkpoints.dit_convert import infer_config, torch_to_flax
from nag_jax.checkpoints.torch_io import read_state_dict
from nag_jax.errors import PathError


def parse_args(argv=None) -> argparse.Namespace:
  """The command line (see the module docstring); a bad flag raises UserError."""
  p = cli.ArgumentParser(prog="python -m nag_jax.convert", description=__doc__.splitlines()[0])
  p.add_argument("--src", required=True, help="official checkpoint: state_dict or train.py dict")
  p.add_argument("--dst", required=True, help="output directory (Orbax params + config.json)")
  p.add_argument("--family", required=True, choices=process.FAMILIES, help="dit: eps+variance; sit: velocity")
  p.add_argument("--num-heads", type=int, default=None, help="needed only for a non-standard hidden size")
  p.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint in --dst")
  p.add_argument("--trust-pickle", action="store_true",
                 help="allow arbitrary pickled objects (only for files you trust)")
  p.add_argument("--ignore-unexpected", action="store_true",
                 help="warn about, instead of refusing, keys the model does not have")
  p.add_argument("--sha256", default=None, help="expected SHA-256 of --src (64 hex digits, or a prefix of >= 8)")
  return p.parse_args(argv)


@cli.entry_point
def main(argv=None) -> int:
  """Converts --src into --dst; an expected failure is one `error:` line and code 2, with --dst untouched."""
  args = parse_args(argv)
  model_dir.check_destination(args.dst, args.overwrite)
  if args.sha256:
    if not paths.path(args.src).is_file():
      raise PathError(f"checkpoint file {args.src} does not exist")
    paths.check_sha256(args.src, args.sha256, "--src")
  sd, taken = read_state_dict(args.src, trust_pickle=args.trust_pickle)
  config = infer_config(sd, args.family, args.num_heads)
  params = torch_to_flax(sd, config, ignore_unexpected=args.ignore_unexpected)
  out = model_dir.save(args.dst, params, config, overwrite=args.overwrite, source=f"{args.src} ({taken})")
  n = sum(v.size for v in _leaves(params))
  print(f"converted {args.src} ({taken}) -> {out}\n  {config}\n  {n:,} parameters (+{config.num_tokens * config.hidden_size:,} "
        "in the fixed position table)")
  return 0


def _leaves(tree):
  for v in tree.values():
    yield from (_leaves(v) if isinstance(v, dict) else [v])


if __name__ == "__main__":
  sys.exit(main())
