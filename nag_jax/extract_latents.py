"""Encodes an image dataset with the VAE into array_record latents (both flips), for training.

  python -m nag_jax.extract_latents --src /data/imagenet/train --vae /ckpt/sd-vae-ft-ema \
      --dst /data/latents/imagenet256 --image-size 256

`--src` is a folder of class sub-folders, or a TFDS name (e.g. imagenet2012). Images are center-cropped
as ADM/DiT do; each record stores the latents of the image and of its mirror (see nag_jax.data.latents).
The shards are written into a staging folder beside --dst and renamed into place; an existing latents
folder is replaced only with --overwrite, and a non-empty folder of anything else never.
"""
from __future__ import annotations

import argparse
import functools
import os
import shutil
import sys
from typing import Sequence

import jax

from nag_jax import cli, data, destination
from nag_jax.data import latents as latents_format
from nag_jax.errors import UserError
from nag_jax.sharding import multihost

ARTIFACT_NAMES = frozenset({latents_format.META_FILE, "latents-*.array_record"})
WHAT = "latents folder"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  """Parses the command line (see the module docstring)."""
  parser = cli.ArgumentParser(prog="python -m nag_jax.extract_latents", description=__doc__.splitlines()[0])
  parser.add_argument("--src", required=True, help="folder of class sub-folders, or a TFDS name")
  parser.add_argument("--vae", required=True, help="VAE checkpoint folder (nag_jax load_vae)")
  parser.add_argument("--dst", required=True, help="output folder for the array_record shards")
  parser.add_argument("--overwrite", action="store_true", help="replace an existing latents folder in --dst")
  parser.add_argument("--image-size", type=int, default=256, help="center-crop size in pixels")
  parser.add_argument("--mode", action="store_true",
                      help="store the posterior mode instead of a sample (official: a sample)")
  parser.add_argument("--batch-size", type=int, default=32, help="images per encode (×2 with flips)")
  parser.add_argument("--seed", type=int, default=0, help="seed of the posterior samples")
  parser.add_argument("--records-per-shard", type=int, default=100_000)
  parser.add_argument("--split", default="train", help="TFDS split")
  parser.add_argument("--tfds-data-dir", default=None, help="TFDS data_dir")
  parser.add_argument("--manual-dir", default=None, help="TFDS manual_dir (ImageNet tar files)")
  parser.add_argument("--prepare", action="store_true",
                      help="build the TFDS dataset as array_record first (needs tensorflow)")
  return parser.parse_args(argv)


def make_source(args: argparse.Namespace):
  """A FolderSource when --src looks like a path, else a TfdsSource."""
  if os.sep in args.src or os.path.exists(args.src):
    return data.FolderSource(args.src, image_size=args.image_size)
  return data.TfdsSource(args.src, split=args.split, data_dir=args.tfds_data_dir,
                         image_size=args.image_size, prepare=args.prepare,
                         manual_dir=args.manual_dir)


def extract(args: argparse.Namespace) -> None:
  """Loads the VAE, encodes the source and writes the latents folder (staged beside --dst)."""
  if args.image_size <= 0 or args.batch_size <= 0 or args.records_per_shard <= 0:
    raise UserError("--image-size, --batch-size and --records-per-shard must be positive")
  dst = destination.check(args.dst, names=ARTIFACT_NAMES, what=WHAT, overwrite=args.overwrite)
  # The VAE modules are imported here so that the data package never depends on them.
  from nag_jax.checkpoints import vae_convert  # pylint: disable=g-import-not-at-top
  from nag_jax.models import vae_io  # pylint: disable=g-import-not-at-top
  source = make_source(args)
  module, params, config = vae_convert.load_vae(args.vae)
  # uint8 in, latents x scaling_factor out (train.py's `latent_dist.sample() * 0.18215`).
  encode = jax.jit(lambda p, images, key: vae_io.encode(module, p, images, key, mode=args.mode))
  staging = destination.make_staging(dst)
  try:
    data.write_latents(
        source, functools.partial(encode, params), staging, key=jax.random.key(args.seed),
        batch_size=args.batch_size, records_per_shard=args.records_per_shard,
        metadata={"vae": os.path.abspath(args.vae), "scaling_factor": config.scaling_factor,
                  "image_size": args.image_size, "mode": args.mode, "seed": args.seed})
    destination.commit(staging, dst, names=ARTIFACT_NAMES, what=WHAT)
  finally:
    if staging.exists():
      shutil.rmtree(staging)


@cli.entry_point
def main(argv: Sequence[str] | None = None) -> int:
  """The command: an expected failure is one `error:` line and code 2, with --dst untouched."""
  args = parse_args(argv)
  multihost.start()  # before any other JAX call
  extract(args)
  return 0


if __name__ == "__main__":
  sys.exit(main())
