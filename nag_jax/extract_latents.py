"""Encodes an image dataset with the VAE into array_record latents (both flips), for training.

  python -m nag_jax.extract_latents --src /data/imagenet/train --vae /ckpt/sd-vae-ft-ema \
      --dst /data/latents/imagenet256 --image-size 256

`--src` is a folder of class sub-folders, or a TFDS name (e.g. imagenet2012). Images are center-cropped
as ADM/DiT do; each record stores the latents of the image and of its mirror (see nag_jax.data.latents).

At ImageNet scale: run it on every process of a multi-process launch (launch/); each process encodes its
share of the shards (shard s on process s mod P) on all its devices. Every image's posterior draw is keyed
by its index, so the output does not depend on the number of processes, devices or the batch size. The
shards are written into a staging folder beside --dst, `.DST.partial`, which a killed run keeps: rerunning
the same command keeps its finished shards and redoes the rest (another protocol there is refused; with
--overwrite it starts afresh). When all shards exist, process 0 writes meta.json and renames the folder
into place; an existing latents folder is replaced only with --overwrite, and a foreign folder never.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import pathlib
import sys
from typing import Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from nag_jax import cli, data, destination, paths
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


PROTOCOL_FILE = "protocol.json"  # in the staging folder: what its finished shards were made with
PARTIAL_NAMES = ARTIFACT_NAMES | {PROTOCOL_FILE, "latents-*.array_record.tmp"}


def protocol(args: argparse.Namespace, source, vae_identity: str) -> dict:
  """Everything that determines the shards: a partial extraction resumes only under an equal protocol."""
  return {"source": repr(source), "num_records": len(source), "vae": vae_identity, "image_size": args.image_size,
          "mode": args.mode, "seed": args.seed, "records_per_shard": args.records_per_shard}


def prepare_staging(staging: pathlib.Path, spec: dict, overwrite: bool, write: bool) -> None:
  """Checks (and with `write`, creates) the staging folder of a resumable extraction; see the module docstring."""
  if staging.exists():
    destination.check(staging, names=PARTIAL_NAMES, what="partial latents extraction", overwrite=True, resume=True)
    try:
      old = json.loads((staging / PROTOCOL_FILE).read_text())
    except (OSError, ValueError):
      old = None
    if old != spec and not overwrite:
      diff = sorted(k for k in spec.keys() | (old or {}).keys() if (old or {}).get(k) != spec.get(k))
      raise destination.DestinationError(
          f"{staging} holds a partial extraction of another protocol (different {', '.join(diff)}); pass "
          "--overwrite to start afresh")
    if write and old != spec:
      destination.clear(staging, PARTIAL_NAMES, "partial latents extraction")
  if write:
    staging.mkdir(parents=True, exist_ok=True)
    for stale in staging.glob("latents-*.array_record.tmp"):  # a shard a killed run was writing
      stale.unlink()
    (staging / PROTOCOL_FILE).write_text(json.dumps(spec, indent=2))


def extract(args: argparse.Namespace) -> pathlib.Path:
  """Loads the VAE, encodes this process's shards of the source, and (process 0, once all exist) commits --dst."""
  if args.image_size <= 0 or args.batch_size <= 0 or args.records_per_shard <= 0:
    raise UserError("--image-size, --batch-size and --records-per-shard must be positive")
  paths.local_only(args.dst, "--dst")
  paths.local_only(args.src, "--src")
  dst = destination.check(args.dst, names=ARTIFACT_NAMES, what=WHAT, overwrite=args.overwrite)
  # The VAE modules are imported here so that the data package never depends on them.
  from nag_jax.checkpoints import model_dir, vae_convert  # pylint: disable=import-outside-toplevel
  from nag_jax.models import vae_io  # pylint: disable=import-outside-toplevel
  source = make_source(args)
  module, params, config = vae_convert.load_vae(args.vae)
  staging = dst.parent / f".{dst.name}.partial"
  spec = protocol(args, source, model_dir.identity(args.vae))
  multihost.check_shared(dst.parent, "the folder of --dst")
  prepare_staging(staging, spec, args.overwrite, write=False)  # every process checks ...
  multihost_utils.sync_global_devices("nag_jax.extract_latents: checked")
  if multihost.is_primary():  # ... before process 0 clears or records anything
    prepare_staging(staging, spec, args.overwrite, write=True)
  multihost_utils.sync_global_devices("nag_jax.extract_latents: staging ready")

  # This process's devices encode its batches data-parallel; batch_size rounds up to a multiple of them.
  devices = jax.local_devices()
  batch = -(-args.batch_size // len(devices)) * len(devices)
  local = Mesh(np.asarray(devices), ("batch",))
  rows, params = NamedSharding(local, P("batch")), jax.device_put(params, NamedSharding(local, P()))
  # uint8 in, latents x scaling_factor out (train.py's `latent_dist.sample() * 0.18215`), one key per image.
  step = jax.jit(lambda p, images, keys: vae_io.encode(module, p, images, keys, mode=args.mode),
                 out_shardings=rows)
  encode = lambda p, images, keys: step(p, jax.device_put(images, rows), jax.device_put(keys, rows))
  shards = range(jax.process_index(), latents_format.num_shards(len(source), args.records_per_shard),
                 jax.process_count())
  latents_format.write_shards(source, functools.partial(encode, params), staging, shards,
                              key=jax.random.key(args.seed), batch_size=batch,
                              records_per_shard=args.records_per_shard, progress=multihost.is_primary())
  multihost_utils.sync_global_devices("nag_jax.extract_latents: all shards written")
  if multihost.is_primary():
    first = latents_format.LatentSource.read_record(latents_format.shard_path(staging, 0), 0)
    latents_format.write_meta(staging, source, args.records_per_shard, first["x"].shape[1:], metadata={
        "vae": os.path.abspath(args.vae), "scaling_factor": config.scaling_factor, "image_size": args.image_size,
        "mode": args.mode, "seed": args.seed, "keys": "record i: fold_in(fold_in(key(seed), i), 0); flip: ..., 1"})
    (staging / PROTOCOL_FILE).unlink()
    destination.commit(staging, dst, names=ARTIFACT_NAMES, what=WHAT)
    print(f"wrote {len(source)} records to {dst}")
  multihost_utils.sync_global_devices("nag_jax.extract_latents: committed")
  return dst


@cli.entry_point
def main(argv: Sequence[str] | None = None) -> int:
  """The command: an expected failure is one `error:` line and code 2, with --dst untouched."""
  args = parse_args(argv)
  multihost.start()  # before any other JAX call
  extract(args)
  return 0


if __name__ == "__main__":
  sys.exit(main())
