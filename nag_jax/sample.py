"""CLI: sample a converted DiT/SiT with CFG / NAG / NAG+CFG; writes a PNG grid and an ADM `samples.npz`.

  python -m nag_jax.sample --config configs/sample_dit.py:nag --config.checkpoint=DIR [--config.vae=VAE_DIR]

Resumable: batches already in OUT/parts are skipped. Batch i uses key fold_in(seed, i), so the samples
do not depend on how many processes or devices share the work.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from jax.experimental import multihost_utils
from absl import app, flags, logging
from ml_collections import config_flags

from nag_jax import checkpoints
from nag_jax.sampling import writer
from nag_jax.sampling.config import to_dataclasses
from nag_jax.sampling.pipeline import build_sampler
from nag_jax.sharding import batch_sharding, make_mesh, multihost, shard_sampler



def batch_labels(c, key: jax.Array, batch: int, num_classes: int) -> np.ndarray:
  """Class labels of global batch `batch`: uniform random from the seed, or the given ids cycled."""
  if c.labels:
    ids = np.array([int(v) for v in str(c.labels).split(",")])
    if ids.min() < 0 or ids.max() >= num_classes:
      raise ValueError(f"labels must be class ids in [0, {num_classes}), got {c.labels}")
    return ids[(batch * c.batch_size + np.arange(c.batch_size)) % len(ids)]
  return np.asarray(jax.random.randint(jax.random.fold_in(key, batch), (c.batch_size,), 0, num_classes))


def run(c) -> pathlib.Path:
  """Samples c.num_samples images into c.out_dir; returns the output directory."""
  if not c.checkpoint:
    raise ValueError("--config.checkpoint is required (a directory written by python -m nag_jax.convert)")
  sampler_cfg, guidance = to_dataclasses(c)
  mesh = make_mesh(c.mesh.to_dict())
  if c.batch_size % (mesh.shape["data"] * mesh.shape["fsdp"]):
    raise ValueError(f"batch_size {c.batch_size} is not divisible by the data axes of mesh {dict(mesh.shape)}")
  shardings = checkpoints.model_dir.param_shardings(checkpoints.model_dir.read_config(c.checkpoint), mesh)
  _, params, model_cfg = checkpoints.load(c.checkpoint, dtype=c.dtype, shardings=shardings)
  if guidance.pseudo_level is None:  # the level the model was trained with, when it was not the default
    guidance = dataclasses.replace(guidance, pseudo_level=checkpoints.model_dir.read_pseudo_level(c.checkpoint))
  decode, decoder_params = None, None
  if c.vae:
    from nag_jax.checkpoints.vae_convert import load_vae  # pylint: disable=import-outside-toplevel
    from nag_jax.models.vae_io import decode_to_uint8  # pylint: disable=import-outside-toplevel
    vae, decoder_params, _ = load_vae(c.vae)
    decode = lambda p, z: decode_to_uint8(vae, p, z)
  elif c.pixel_space:
    decode = lambda p, z: jnp.clip(127.5 * z + 128.0, 0, 255).astype(jnp.uint8)
  estimator, estimator_params = None, None
  if c.estimator:
    estimator, estimator_params = checkpoints.model_dir.load_estimator(c.estimator)
  sample = shard_sampler(build_sampler(model_cfg, sampler_cfg, guidance, decode=decode, estimator=estimator,
                                      jit=False), mesh, shardings)
  out_dir = pathlib.Path(c.out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  key_samples, key_labels = jax.random.split(jax.random.key(c.seed))
  n_batches = -(-c.num_samples // c.batch_size)
  sharding = batch_sharding(mesh)
  with jax.set_mesh(mesh):
    for b in tqdm.trange(n_batches, desc="sampling", unit="batch", disable=jax.process_index() != 0):
      rows = [s.index[0] for s in jax.device_put(np.zeros(c.batch_size), sharding).addressable_shards]
      starts = sorted({r.start or 0 for r in rows})
      if all(writer.part_path(out_dir, b, b * c.batch_size + s).exists() for s in starts):
        continue
      labels = batch_labels(c, key_labels, b, model_cfg.num_classes)
      out = sample(params, jax.random.fold_in(key_samples, b), jax.device_put(labels, sharding),
                   decoder_params, estimator_params=estimator_params)
      images = out["images"] if decode is not None else out["latents"]
      for rows, data in multihost.owned_shards(images):  # each row once in the whole run
        writer.write_part(out_dir, b, b * c.batch_size + (rows.start or 0), data, labels[rows])
  multihost_utils.sync_global_devices("nag_jax.sample: all parts written")
  if jax.process_index() == 0:
    finish(c, out_dir, decode is not None, model_cfg, guidance)
  return out_dir


def finish(c, out_dir: pathlib.Path, decoded: bool, model_cfg, guidance) -> None:
  """Merges the parts into samples.npz (or latents.npz), writes grid.png and run.json."""
  data, labels = writer.merge_parts(out_dir, c.num_samples)
  if decoded:
    if c.write_npz:
      np.savez(out_dir / "samples.npz", arr_0=data, labels=labels)
    preview = data
  else:
    np.savez(out_dir / "latents.npz", latents=data, labels=labels)
    preview = writer.latents_preview(data)
  writer.save_grid(preview[:c.grid_size], out_dir / "grid.png")
  meta = {"config": c.to_dict(), "model": model_cfg.to_dict(), "guidance": dataclasses.asdict(guidance),
          "num_written": int(len(data)),
          "pixel_rule": "clip(127.5 x + 128, 0, 255) -> uint8" if decoded else "latents (no VAE given)"}
  (out_dir / "run.json").write_text(json.dumps(meta, indent=2, default=str))
  print(f"wrote {len(data)} {'images' if decoded else 'latents'} to {out_dir}")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # keep Orbax's per-file INFO lines out of the progress bar
  multihost.initialize()
  jax.config.update("jax_threefry_partitionable", True)
  try:
    run(flags.FLAGS.config)
  except (ValueError, checkpoints.CheckpointError) as e:
    raise app.UsageError(str(e)) from e


if __name__ == "__main__":
  # Defined here, not at import, so that importing this module beside nag_jax.main defines no flag twice.
  config_flags.DEFINE_config_file("config", None, "sampling config file (configs/sample_*.py)", lock_config=True)
  app.run(main)
