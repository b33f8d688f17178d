"""Safe reading and writing of PyTorch checkpoints (.pt/.pth pickles and .safetensors) as numpy."""
from __future__ import annotations

import argparse
import pathlib
from collections import OrderedDict

import numpy as np

from nag_jax.errors import UserError


class CheckpointError(UserError):
  """A checkpoint cannot be read or does not fit the model; the message names the problem."""


def _require_torch():
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise CheckpointError("reading .pt/.pth checkpoints needs PyTorch: pip install torch==2.13.0 "
                          "(CPU build), then pip install -e '.[torch]'") from e
  return torch


def read_state_dict(path: str | pathlib.Path, trust_pickle: bool = False) -> tuple[dict, str]:
  """Returns ({name: float32 numpy array}, description of what was taken) from a checkpoint file.

  Training checkpoints `{"model", "ema", "opt", "args"}` yield their "ema" entry, as the official
  loader does. Pickles are read with `weights_only=True` plus `argparse.Namespace` allow-listed
  (the official train.py stores its args that way); arbitrary pickles run only with trust_pickle.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise CheckpointError(f"checkpoint file {path} does not exist")
  if path.suffix == ".safetensors":
    from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
    try:
      return _to_numpy(load_file(str(path))), "safetensors state_dict"
    except Exception as e:  # safetensors raises its own error types for corrupt headers
      raise CheckpointError(f"{path} is not a readable .safetensors file ({e})") from e
  torch = _require_torch()
  try:
    if trust_pickle:
      obj = torch.load(str(path), map_location="cpu", weights_only=False)
    else:
      with torch.serialization.safe_globals([argparse.Namespace]):
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
  except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError... for bad files
    hint = "" if trust_pickle else (" If it is a checkpoint you trust that pickles other objects, "
                                    "pass --trust-pickle.")
    raise CheckpointError(f"{path} is not a readable PyTorch checkpoint "
                          f"({type(e).__name__}: {str(e).splitlines()[0][:200]}).{hint}") from e
  return _select_state_dict(obj, path)


def _select_state_dict(obj, path) -> tuple[dict, str]:
  if not isinstance(obj, dict):
    raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state_dict or training checkpoint")
  for key in ("ema", "model", "state_dict"):
    if key in obj and isinstance(obj[key], dict):
      return _to_numpy(obj[key]), f'training checkpoint, took "{key}"'
  return _to_numpy(obj), "plain state_dict"


def _to_numpy(sd: dict) -> dict:
  out = OrderedDict()
  for k, v in sd.items():
    if hasattr(v, "detach"):
      v = v.detach().cpu().float().numpy()
    if not isinstance(v, np.ndarray):
      raise CheckpointError(f"entry {k!r} is a {type(v).__name__}, not a tensor: not a model state_dict")
    out[k] = v.astype(np.float32)
  return out


def write_state_dict(sd: dict, path: str | pathlib.Path) -> None:
  """Writes {name: array} as a torch state_dict (.pt/.pth) or .safetensors, by suffix."""
  path = pathlib.Path(path)
  if path.suffix == ".safetensors":
    from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
    save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, str(path))
    return
  torch = _require_torch()
  torch.save(OrderedDict((k, torch.from_numpy(np.ascontiguousarray(v))) for k, v in sd.items()), str(path))
