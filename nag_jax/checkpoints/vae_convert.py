"""diffusers-format SD-VAE (config.json + weights) <-> Flax params, validated, and Orbax save/load.

Any diffusers `AutoencoderKL` folder works (sd-vae-ft-ema/-mse and others); the torch key of every
Flax param is derived from its path, and the checkpoint must match `jax.eval_shape` of init exactly.
"""
from __future__ import annotations

import json
import pathlib
import re
from collections import OrderedDict

import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import traverse_util

from nag_jax import paths
from nag_jax.checkpoints import model_dir
from nag_jax.checkpoints.torch_io import CheckpointError, read_state_dict
from nag_jax.models.vae import AutoencoderKL, VAEConfig, abstract_params

CONFIG_FILE = "config.json"
PARAMS_DIR = "params"
# Weight files of a diffusers model folder, in the order diffusers prefers them.
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin",
                "diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.fp16.bin")
# Attention names of VAE files saved by old diffusers (e.g. stable-diffusion-2-1-base/vae);
# diffusers renames them on load (ModelMixin._convert_deprecated_attention_blocks).
_DEPRECATED_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def torch_key(path: tuple[str, ...]) -> str:
  """Flax param path -> diffusers key: (decoder, up_blocks_0, conv1, kernel) -> decoder.up_blocks.0.conv1.weight."""
  parts = []
  for name in path[:-1]:
    m = re.fullmatch(r"(.+)_(\d+)", name)
    parts += [m[1], m[2]] if m else [name]
  return ".".join(parts + ["weight" if path[-1] in ("kernel", "scale") else path[-1]])


def _to_flax(a: np.ndarray) -> np.ndarray:
  """torch layout -> Flax: conv (O, I, kh, kw) -> (kh, kw, I, O); linear (O, I) -> (I, O)."""
  return {4: lambda x: x.transpose(2, 3, 1, 0), 2: lambda x: x.T}.get(a.ndim, lambda x: x)(a)


def _to_torch(a: np.ndarray) -> np.ndarray:
  """Flax layout -> torch, the inverse of `_to_flax`."""
  return {4: lambda x: x.transpose(3, 2, 0, 1), 2: lambda x: x.T}.get(a.ndim, lambda x: x)(a)


def _torch_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
  s = tuple(shape)
  return (s[3], s[2], s[0], s[1]) if len(s) == 4 else s[::-1]  # conv (kh, kw, I, O); linear/1-D


def expected_torch_shapes(config: VAEConfig) -> dict[str, tuple[int, ...]]:
  """diffusers key -> torch shape of every param of the model, from `jax.eval_shape` of init."""
  flat = traverse_util.flatten_dict(abstract_params(config))
  return {torch_key(p): _torch_shape(s.shape) for p, s in flat.items()}


def _rename_deprecated(sd: dict) -> dict:
  pattern = re.compile(r"(.*\.attentions\.\d+)\.(query|key|value|proj_attn)\.(weight|bias)")
  out = OrderedDict()
  for k, v in sd.items():
    m = pattern.fullmatch(k)
    out[f"{m[1]}.{_DEPRECATED_ATTENTION[m[2]]}.{m[3]}" if m else k] = v
  return out


def _listing(keys: list, limit: int = 8) -> str:
  more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
  return ", ".join(keys[:limit]) + more


def torch_to_flax(sd: dict, config: VAEConfig) -> dict:
  """diffusers state_dict (numpy) -> Flax params (float32); refuses missing, unexpected or misshapen keys."""
  sd = _rename_deprecated(sd)
  flat = traverse_util.flatten_dict(abstract_params(config))
  keys = {torch_key(p): p for p in flat}
  missing = [k for k in keys if k not in sd]
  unexpected = [k for k in sd if k not in keys]
  mismatched = [f"{k} {tuple(sd[k].shape)} (model: {_torch_shape(flat[p].shape)})"
                for k, p in keys.items() if k in sd and tuple(sd[k].shape) != _torch_shape(flat[p].shape)]
  problems = [f"{len(v)} {what}: {_listing(v)}" for what, v in
              (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched))
              if v]
  if problems:
    raise CheckpointError("the weights do not fit the AutoencoderKL described by config.json: "
                          + "; ".join(problems))
  return traverse_util.unflatten_dict({p: np.asarray(_to_flax(sd[k]), np.float32) for k, p in keys.items()})


def flax_to_torch(params: dict) -> OrderedDict:
  """Flax params -> diffusers state_dict of contiguous float32 numpy arrays (loads with strict=True)."""
  flat = traverse_util.flatten_dict(params)
  return OrderedDict((torch_key(p), np.ascontiguousarray(_to_torch(np.asarray(v, np.float32))))
                     for p, v in sorted(flat.items()))


def read_diffusers(src: str | pathlib.Path) -> tuple[VAEConfig, dict]:
  """(config, numpy state_dict) of a diffusers VAE folder, or of a weights file beside its config.json."""
  src = paths.path(src)
  if src.is_file():
    folder, weights = src.parent, src
  elif src.is_dir():
    folder = src
    weights = next((src / n for n in WEIGHT_FILES if (src / n).is_file()), None)
    if weights is None:
      hint = " (for a full pipeline folder, pass its vae/ subfolder)" if (src / "vae").is_dir() else ""
      raise CheckpointError(f"{src} holds none of {', '.join(WEIGHT_FILES)}{hint}")
  else:
    raise CheckpointError(f"{src} does not exist")
  if not (folder / CONFIG_FILE).is_file():
    raise CheckpointError(f"{folder} has no {CONFIG_FILE}, which a diffusers-format VAE keeps "
                          "beside its weights")
  config = read_config(folder)
  sd, _ = read_state_dict(weights)
  return config, sd


def read_config(folder: str | pathlib.Path) -> VAEConfig:
  """The VAEConfig of `folder/config.json` (a diffusers folder or a converted one)."""
  path = paths.path(folder) / CONFIG_FILE
  try:
    return VAEConfig.from_dict(json.loads(path.read_text()))
  except (OSError, ValueError, TypeError) as e:
    raise CheckpointError(f"{path} is not a usable AutoencoderKL config ({e})") from e


def save_vae(dst: str | pathlib.Path, params: dict, config: VAEConfig,
             overwrite: bool = False) -> epath.Path:
  """Writes `dst/params` (Orbax) and `dst/config.json` as `model_dir.write_params_dir` does."""
  dst = paths.path(dst)
  model_dir.write_params_dir(dst, params, config.to_dict(), overwrite=overwrite, what="converted VAE")
  return dst


def convert(src: str | pathlib.Path, dst: str | pathlib.Path,
            overwrite: bool = False) -> tuple[VAEConfig, dict]:
  """diffusers folder/file -> converted folder; all is read and validated before anything is written."""
  dst = paths.path(dst)
  model_dir.check_destination(dst, overwrite, "converted VAE")
  config, sd = read_diffusers(src)
  params = torch_to_flax(sd, config)
  save_vae(dst, params, config, overwrite=overwrite)
  return config, params


def load_vae(directory: str | pathlib.Path, dtype=None) -> tuple[AutoencoderKL, dict, VAEConfig]:
  """(module, params, config) from a converted folder; `dtype` sets the compute dtype (params stay f32)."""
  directory = paths.path(directory)
  config = read_config(directory)
  if not (directory / PARAMS_DIR).is_dir():
    raise CheckpointError(f"{directory} has no {PARAMS_DIR}/ folder: not a converted VAE")
  try:
    params = ocp.StandardCheckpointer().restore(directory / PARAMS_DIR, abstract_params(config))
  except Exception as e:  # orbax raises several types for missing or corrupt files
    raise CheckpointError(f"cannot restore {directory / PARAMS_DIR} ({type(e).__name__}: {e})") from e
  module = AutoencoderKL(config) if dtype is None else AutoencoderKL(config, dtype=dtype)
  return module, params, config
