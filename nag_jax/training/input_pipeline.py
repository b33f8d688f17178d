"""The training data chosen by config (digits, folder, TFDS, latents) and global-batch assembly on a mesh."""
from __future__ import annotations

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from nag_jax import data
from nag_jax.sharding import batch_sharding, multihost


def create_source(dc: ml_collections.ConfigDict):
  """The grain random-access source of `config.data`."""
  if dc.kind == "digits":
    x, y = data.digits_arrays(dc.image_size)
    return data.ArraySource(x, y, num_classes=10)
  if dc.kind == "folder":
    return data.FolderSource(dc.path, image_size=dc.image_size)
  if dc.kind == "tfds":
    return data.TfdsSource(dc.tfds_name, split=dc.split, data_dir=dc.data_dir or None, image_size=dc.image_size)
  return data.LatentSource(dc.path)


def check_source(source, model_config) -> None:
  """Raises ValueError when the records cannot feed the model (shape, channels or class ids)."""
  x = np.asarray(source[0]["x"])
  shape = x.shape[1:] if source.kind == "latent" else x.shape
  want = (model_config.input_size, model_config.input_size, model_config.in_channels)
  if tuple(shape) != want:
    raise ValueError(f"the data's records are {tuple(shape)} (HWC) but the model takes {want}")
  if source.num_classes > model_config.num_classes:
    raise ValueError(f"the data has {source.num_classes} classes but the model only {model_config.num_classes}")


def create_iterator(config: ml_collections.ConfigDict, source, mesh: Mesh):
  """This process's checkpointable iterator of its rows of each global batch (order set by the seed)."""
  dc = config.data
  return data.make_train_iterator(source, global_batch_size=config.global_batch_size, seed=config.seed,
                                  shuffle=dc.shuffle, flip=dc.flip, worker_count=dc.worker_count,
                                  shard_options=multihost.data_shard_options(mesh, config.global_batch_size))


def global_batch(local: dict, mesh: Mesh) -> dict:
  """Assembles the processes' local batches into global arrays sharded over data x fsdp."""
  return {k: jax.make_array_from_process_local_data(batch_sharding(mesh, np.ndim(v)), np.asarray(v))
          for k, v in local.items()}
