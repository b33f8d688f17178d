"""The training data chosen by config (digits, folder, TFDS, latents) and global-batch assembly on a mesh."""
from __future__ import annotations

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from nag_jax import data
from nag_jax.sharding import batch_sharding, multihost
from nag_jax.errors import UserError


DATA_KINDS = ("digits", "folder", "tfds", "latents")  # the sources `create_source` builds


def create_source(data_config: ml_collections.ConfigDict):
  """The grain random-access source of `config.data`."""
  if data_config.kind == "digits":
    x, y = data.digits_arrays(data_config.image_size)
    return data.ArraySource(x, y, num_classes=10)
  if data_config.kind == "folder":
    return data.FolderSource(data_config.path, image_size=data_config.image_size)
  if data_config.kind == "tfds":
    return data.TfdsSource(data_config.tfds_name, split=data_config.split, data_dir=data_config.data_dir or None,
                           image_size=data_config.image_size)
  return data.LatentSource(data_config.path)


def check_source(source, model_config) -> None:
  """Raises ValueError when the records cannot feed the model (shape, channels or class ids)."""
  x = np.asarray(source[0]["x"])
  shape = x.shape[1:] if source.kind == "latent" else x.shape
  want = (model_config.input_size, model_config.input_size, model_config.in_channels)
  if tuple(shape) != want:
    raise UserError(f"the data's records are {tuple(shape)} (HWC) but the model takes {want}")
  if source.num_classes > model_config.num_classes:
    raise UserError(f"the data has {source.num_classes} classes but the model only {model_config.num_classes}")


def create_iterator(config: ml_collections.ConfigDict, source, mesh: Mesh, start_step: int = 0):
  """This process's iterator of its rows of each global batch, from the batch of step `start_step + 1` on.

  The global batches depend on the seed alone (`data.make_train_iterator`), so a resume, on any number of
  processes, restarts the stream at its step instead of restoring a per-process iterator state.
  """
  data_config = config.data
  return data.make_train_iterator(source, global_batch_size=config.global_batch_size, seed=config.seed,
                                  shuffle=data_config.shuffle, flip=data_config.flip,
                                  worker_count=data_config.worker_count,
                                  read_options=data.read_options(data_config.read_threads),
                                  rows=multihost.process_rows(mesh, config.global_batch_size),
                                  start_batch=start_step)


def global_batch(local: dict, mesh: Mesh) -> dict:
  """Assembles the processes' local batches into global arrays sharded over data x fsdp."""
  return {k: jax.make_array_from_process_local_data(batch_sharding(mesh, np.ndim(v)), np.asarray(v))
          for k, v in local.items()}
