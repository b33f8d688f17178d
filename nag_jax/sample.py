"""CLI: sample a converted DiT/SiT with CFG / NAG / NAG+CFG; writes a PNG grid and an ADM `samples.npz`.

  python -m nag_jax.sample --config configs/sample_dit.py:nag --config.checkpoint=DIR [--config.vae=VAE_DIR]

Resumable: batches already in OUT/parts under the same protocol (checkpoint, seed, sampler, guidance,
labels, batch size, dtype, VAE: see `protocol`) are skipped; a rerun with another protocol is refused
naming the keys that differ, unless --config.overwrite=True. Batch i uses key fold_in(seed, i), so the
samples do not depend on how many processes or devices share the work.
"""
from __future__ import annotations

import dataclasses

import jax
import numpy as np
import tqdm
from jax.experimental import multihost_utils
from absl import flags, logging
from etils import epath
from ml_collections import config_flags

from nag_jax import checkpoints, cli, destination, paths
from nag_jax.checkpoints import model_dir
from nag_jax.errors import UserError
from nag_jax.sampling import config as sample_config
from nag_jax.sampling import writer
from nag_jax.sampling.pipeline import build_sampler
from nag_jax.sharding import batch_devices, batch_sharding, make_mesh, multihost, shard_sampler


def batch_labels(c, key: jax.Array, batch: int, num_classes: int) -> np.ndarray:
  """Class labels of global batch `batch`: uniform random from the seed, or the given ids cycled."""
  if c.labels:
    ids = np.array(sample_config.parse_labels(c.labels, num_classes))
    return ids[(batch * c.batch_size + np.arange(c.batch_size)) % len(ids)]
  return np.asarray(jax.random.randint(jax.random.fold_in(key, batch), (c.batch_size,), 0, num_classes))


def protocol(c, sampler_cfg, guidance, model_cfg) -> dict:
  """Everything that determines the samples: a rerun into the same out_dir resumes only an equal protocol.

  Checkpoints (model, VAE, g_phi) enter by `model_dir.identity` (config and file manifest, not weights);
  num_samples, the mesh and the output options do not change the samples and are left out.
  """
  return {"checkpoint": model_dir.identity(c.checkpoint), "vae": model_dir.identity(c.vae) if c.vae else "",
          "estimator": model_dir.identity(c.estimator) if c.estimator else "",
          "parent": model_dir.identity(c.parent) if c.parent else "", "pixel_space": bool(c.pixel_space),
          "seed": c.seed, "labels": str(c.labels), "batch_size": c.batch_size, "dtype": c.dtype,
          "image_size": model_cfg.input_size, "num_classes": model_cfg.num_classes,
          "sampler": dataclasses.asdict(sampler_cfg), "guidance": dataclasses.asdict(guidance)}


def run(c) -> epath.Path:
  """Samples c.num_samples images into c.out_dir; returns the output directory.

  Every check (config, out_dir, protocol, labels, sampler) comes before out_dir is created or changed.
  """
  sample_config.check(c)
  sampler_cfg, guidance = sample_config.to_dataclasses(c)
  mesh = make_mesh(c.mesh.to_dict())
  if c.batch_size % batch_devices(mesh.shape):
    raise UserError(f"--config.batch_size {c.batch_size} is not divisible by the data axes of mesh "
                    f"{dict(mesh.shape)}")
  model_cfg = model_dir.read_config(c.checkpoint)
  if c.labels:
    sample_config.parse_labels(c.labels, model_cfg.num_classes)
  if guidance.pseudo_level is None:  # the level the model was trained with, when it was not the default
    guidance = dataclasses.replace(guidance, pseudo_level=model_dir.read_pseudo_level(c.checkpoint))
  spec = protocol(c, sampler_cfg, guidance, model_cfg)
  tag = writer.protocol_hash(spec)
  writer.prepare(c.out_dir, spec, overwrite=c.overwrite, write=False)  # cheap refusals first
  shardings = model_dir.param_shardings(model_cfg, mesh)
  _, params, model_cfg = checkpoints.load(c.checkpoint, dtype=c.dtype, shardings=shardings)
  decode, decoder_params = None, None
  if c.vae:
    from nag_jax.checkpoints.vae_convert import load_vae  # pylint: disable=import-outside-toplevel
    from nag_jax.models.vae_io import decode_to_uint8  # pylint: disable=import-outside-toplevel
    vae, decoder_params, _ = load_vae(c.vae)
    decode = lambda p, z: decode_to_uint8(vae, p, z)
  elif c.pixel_space:
    from nag_jax.models.vae_io import pixels_to_uint8  # pylint: disable=import-outside-toplevel
    decode = lambda p, z: pixels_to_uint8(z)
  estimator, estimator_params = None, None
  if c.estimator:
    estimator, estimator_params = model_dir.load_estimator(c.estimator)
  parent_cfg, parent_params, parent_shardings = None, None, None
  if c.parent:
    parent_shardings = model_dir.param_shardings(model_dir.read_config(c.parent), mesh)
    _, parent_params, parent_cfg = checkpoints.load(c.parent, dtype=c.dtype, shardings=parent_shardings)
  if c.attention:  # the backend, not the weights: any checkpoint runs with any of them
    model_cfg = model_cfg.replace(attention=c.attention)
  sample = shard_sampler(build_sampler(model_cfg, sampler_cfg, guidance, decode=decode, estimator=estimator,
                                      parent_config=parent_cfg, jit=False, devices=mesh.devices),
                         mesh, shardings,
                         parent_shardings=parent_shardings)
  multihost.check_shared(c.out_dir, "--config.out_dir")
  writer.prepare(c.out_dir, spec, overwrite=c.overwrite, write=False)  # every process checks ...
  multihost_utils.sync_global_devices("nag_jax.sample: protocol checked")
  if jax.process_index() == 0:  # ... before the first one clears or records anything
    writer.prepare(c.out_dir, spec, overwrite=c.overwrite)
  multihost_utils.sync_global_devices("nag_jax.sample: out_dir prepared")
  out_dir = paths.path(c.out_dir)
  key_samples, key_labels = jax.random.split(jax.random.key(c.seed))
  n_batches = -(-c.num_samples // c.batch_size)
  sharding = batch_sharding(mesh)
  blocks = multihost.row_blocks(mesh, c.batch_size)
  with jax.set_mesh(mesh):
    for b in tqdm.trange(n_batches, desc="sampling", unit="batch", disable=jax.process_index() != 0):
      if all(writer.part_path(out_dir, b, b * c.batch_size + s, tag).exists() for s in blocks):
        continue  # every process sees the same parts (one shared out_dir), so all skip or none
      labels = batch_labels(c, key_labels, b, model_cfg.num_classes)
      out = sample(params, jax.random.fold_in(key_samples, b), jax.device_put(labels, sharding),
                   decoder_params, parent_params=parent_params, estimator_params=estimator_params)
      images = out["images"] if decode is not None else out["latents"]
      for rows, data in multihost.owned_shards(images):  # each row once in the whole run
        writer.write_part(out_dir, b, b * c.batch_size + (rows.start or 0), tag, data, labels[rows])
  multihost_utils.sync_global_devices("nag_jax.sample: all parts written")
  if jax.process_index() == 0:
    finish(c, out_dir, decode is not None, model_cfg, guidance, spec)
  return out_dir


def finish(c, out_dir: epath.Path, decoded: bool, model_cfg, guidance, spec: dict) -> None:
  """Merges the parts into samples.npz (or latents.npz), writes grid.png and completes run.json (atomically).

  The merge streams the parts into the .npz (`writer.write_merged_npz`): its memory is one part, not the
  whole array (9.8 GB for 50,000 images at 256 px).
  """
  tag = writer.protocol_hash(spec)
  parts = writer.part_files(out_dir, tag)
  num_written = writer.count_rows(parts, c.num_samples)
  save = lambda name, fn: destination.write_file(out_dir / name, fn, what=name, overwrite=True)
  name, names = (("samples.npz", {"images": "arr_0", "labels": "labels"}) if decoded else
                 ("latents.npz", {"images": "latents", "labels": "labels"}))
  if c.write_npz or not decoded:
    save(name, lambda p: writer.write_merged_npz(p, parts, c.num_samples, names))
  if c.grid_size:
    preview, _ = writer.merge_parts(out_dir, min(c.grid_size, c.num_samples), tag)
    preview = preview if decoded else writer.latents_preview(preview)
    save("grid.png", lambda p: writer.save_grid(preview, p))
  meta = {"protocol": spec, "protocol_hash": tag, "config": c.to_dict(), "model": model_cfg.to_dict(),
          "guidance": dataclasses.asdict(guidance), "num_written": int(num_written),
          "pixel_rule": "clip(127.5 x + 128, 0, 255) -> uint8" if decoded else "latents (no VAE given)"}
  writer.write_json(out_dir / writer.RUN_FILE, meta)
  print(f"wrote {num_written} {'images' if decoded else 'latents'} to {out_dir}")


def main(argv: list[str]) -> int:
  """The absl command: samples per --config (see `run`)."""
  if len(argv) > 1:
    raise UserError(f"unexpected arguments {argv[1:]}; settings go in --config.KEY=VALUE")
  if flags.FLAGS.config is None:
    raise UserError("--config is required, e.g. --config configs/sample_dit.py:nag")
  logging.set_verbosity(logging.WARNING)  # keep Orbax's per-file INFO lines out of the progress bar
  multihost.start()  # before any other JAX call
  run(flags.FLAGS.config)
  return 0


if __name__ == "__main__":
  # Defined here, not at import, so that importing this module beside nag_jax.main defines no flag twice.
  config_flags.DEFINE_config_file("config", None, "sampling config file (configs/sample_*.py)", lock_config=True)
  cli.absl_main(main)
