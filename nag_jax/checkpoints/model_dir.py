"""A converted model directory: Orbax params + `config.json`, local or in cloud storage; loaded by `load`.

On disk it is written in a staging folder and renamed into place; in cloud storage in place, config.json last
(a folder without it is not a model directory, so a cut-short write is never loaded).
"""
from __future__ import annotations

import hashlib
import json
import shutil

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from nag_jax import destination, paths, process
from nag_jax.checkpoints.torch_io import CheckpointError
from nag_jax.models.config import ModelConfig
from nag_jax.models.dit import DiT, dummy_inputs
from nag_jax.models.noise_estimator import NoiseEstimator, estimator_inputs
from nag_jax.sharding.rules import logical_shardings

CONFIG_FILE = "config.json"
PARAMS_DIR = "params"


ARTIFACT_NAMES = frozenset({CONFIG_FILE, PARAMS_DIR})


def check_destination(path: paths.PathLike, overwrite: bool, what: str = "converted model") -> epath.Path:
  """Raises DestinationError unless `path` is new, empty, or (with overwrite) a model directory."""
  return destination.check(path, names=ARTIFACT_NAMES, what=what, overwrite=overwrite)


def write_params_dir(path: paths.PathLike, params, meta: dict, *, overwrite: bool = False,
                     what: str = "converted model") -> None:
  """Writes `path/params` (Orbax) and `path/config.json` into a staging folder, then renames it into place.

  `path` must be new, empty, or (with `overwrite`) hold only a model directory's entries: nothing
  else is ever deleted. In a multi-process run every process calls it with the same path: each
  writes the shards it owns of the (globally sharded) params; process 0 writes the config and renames.
  """
  primary, multi = jax.process_index() == 0, jax.process_count() > 1
  path = check_destination(path, overwrite, what)
  cloud = paths.is_cloud(path)
  if cloud:  # written in place: clear our old artifact (check refused anything else), config.json last
    if primary and path.exists():
      destination.clear(path, ARTIFACT_NAMES, what)
    if multi:
      multihost_utils.sync_global_devices(f"nag_jax cleared {path}")
    staging = path
  elif multi:  # one staging name all processes agree on
    name = f".{path.name}.staging"
    if primary:
      if (path.parent / name).exists():
        shutil.rmtree(path.parent / name)
      staging = destination.make_staging(path, name)
    multihost_utils.sync_global_devices(f"nag_jax staging {path}")
    staging = path.parent / name
  else:
    staging = destination.make_staging(path)
  try:
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(staging / PARAMS_DIR, params if multi else jax.tree.map(np.asarray, params))
    ckptr.wait_until_finished()
    if primary:
      (staging / CONFIG_FILE).write_text(json.dumps(meta, indent=2))
      destination.commit(staging, path, names=ARTIFACT_NAMES, what=what)
  finally:
    if primary and not cloud and staging.exists():
      shutil.rmtree(staging)
  if multi:
    multihost_utils.sync_global_devices(f"nag_jax wrote {path}")


def save(path: paths.PathLike, params, config: ModelConfig, *, overwrite: bool = False,
         source: str = "", pseudo_level: float | None = None) -> epath.Path:
  """Writes params (Orbax) and config into a staging folder, then renames it into place.

  `pseudo_level`: the level the noise-unconditional branch was trained with, when not the family's default.
  """
  path = paths.path(path)
  meta = {"model": config.to_dict(), "source": source, "format": "nag_jax/1"}
  if pseudo_level is not None:
    meta["pseudo_level"] = float(pseudo_level)
  write_params_dir(path, params, meta, overwrite=overwrite)
  return path


def identity(path: paths.PathLike) -> str:
  """A short hash naming a written directory (model, VAE or g_phi) without reading its weights.

  It covers config.json, the Orbax tree metadata and the name and size of every params file (Orbax
  names data files at random on each write), so a copied folder keeps its identity and a rewritten one
  gets a new one. CheckpointError when `path` has no config.json.
  """
  path = paths.path(path)
  if not (path / CONFIG_FILE).is_file():
    raise CheckpointError(f"{path} is not a converted directory: {CONFIG_FILE} is missing")
  h = hashlib.sha256((path / CONFIG_FILE).read_bytes())
  params = path / PARAMS_DIR
  if (params / "_METADATA").is_file():
    h.update((params / "_METADATA").read_bytes())
  base = _without_scheme(params)
  for root, dirs, files in params.walk():  # (in cloud storage, walk's roots come without their scheme)
    dirs.sort()
    sub = _without_scheme(root)[len(base):].lstrip("/")
    for name in sorted(files):
      rel = f"{sub}/{name}" if sub else name
      h.update(f"{rel}:{(params / rel).stat().length};".encode())
  return h.hexdigest()[:16]


def _without_scheme(p) -> str:
  return str(p).split("://", 1)[-1].rstrip("/")


def read_pseudo_level(path: paths.PathLike) -> float | None:
  """The trained pseudo level stored by `save`, or None for the family's default."""
  return json.loads((paths.path(path) / CONFIG_FILE).read_text()).get("pseudo_level")


def param_shardings(config: ModelConfig, mesh: Mesh):
  """NamedShardings of a model's params on `mesh` by the logical-axis rules (a `load` target)."""
  boxed = jax.eval_shape(lambda: DiT(config).init(jax.random.key(0), *dummy_inputs(config))["params"])
  return logical_shardings(boxed, mesh)


def on_first_device(abstract_tree):
  """A restore target on this process's first device, whatever mesh the checkpoint was written from."""
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device), abstract_tree)


def read_config(path: paths.PathLike) -> ModelConfig:
  """The ModelConfig stored in a converted model directory."""
  cfg_file = paths.path(path) / CONFIG_FILE
  if not cfg_file.is_file():
    raise CheckpointError(f"{path} is not a converted model directory: {CONFIG_FILE} is missing")
  try:
    return ModelConfig.from_dict(json.loads(cfg_file.read_text())["model"])
  except (ValueError, KeyError, TypeError) as e:
    raise CheckpointError(f"{cfg_file} is not a valid nag_jax model config ({e})") from e


def load(path: paths.PathLike, *, dtype: str | None = None, shardings=None):
  """Returns (model, params, config) from a converted directory, optionally restored sharded."""
  path = paths.path(path)
  config = read_config(path)
  if dtype:
    config = config.replace(dtype=dtype)
  if not (path / PARAMS_DIR).exists():
    raise CheckpointError(f"{path} has no {PARAMS_DIR}/ folder: the conversion did not finish")
  from nag_jax.checkpoints.dit_convert import abstract_params  # pylint: disable=import-outside-toplevel
  target = abstract_params(config, shardings)
  if shardings is None:
    target = on_first_device(target)
  try:
    params = ocp.StandardCheckpointer().restore(path / PARAMS_DIR, target)
  except Exception as e:  # orbax raises several types for missing or corrupt files
    raise CheckpointError(f"cannot restore params from {path / PARAMS_DIR} ({type(e).__name__}: {e})") from e
  return DiT(config), params, config


def load_estimator(path: paths.PathLike) -> tuple[NoiseEstimator, dict]:
  """g_phi and its params from a model directory holding a NoiseEstimator's params."""
  config = read_config(path)
  estimator = NoiseEstimator(config, pseudo_level=process.create(config.family).pseudo_level(read_pseudo_level(path)))
  target = jax.eval_shape(lambda: nn.meta.unbox(estimator.init(jax.random.key(0), *estimator_inputs(estimator))))
  try:
    params = ocp.StandardCheckpointer().restore(paths.path(path) / PARAMS_DIR,
                                                on_first_device(target["params"]))
  except Exception as e:  # orbax raises several types for a tree that does not match
    raise CheckpointError(f"{path} does not hold noise-estimator (g_phi) params "
                          f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e
  return estimator, params
