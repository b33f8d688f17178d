"""Safe reading and writing of PyTorch checkpoints (.pt/.pth pickles and .safetensors) as numpy."""
from __future__ import annotations

import argparse
import pathlib
import re
from collections import OrderedDict

import numpy as np

from nag_jax import paths
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
  if not paths.path(path).is_file():
    raise CheckpointError(f"checkpoint file {path} does not exist")
  with paths.local_copy(path) as local:
    return _read_local(local, trust_pickle)


def _read_local(path: pathlib.Path, trust_pickle: bool) -> tuple[dict, str]:
  if path.suffix == ".safetensors":
    return _to_numpy(_read_safetensors(path)), "safetensors state_dict"
  torch = _require_torch()
  try:
    if trust_pickle:
      obj = torch.load(str(path), map_location="cpu", weights_only=False)
    else:
      with torch.serialization.safe_globals([argparse.Namespace]):
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
  except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError... for bad files
    raise CheckpointError(_load_failure(path, e, trust_pickle)) from e
  return _select_state_dict(obj, path)


def _read_safetensors(path: pathlib.Path) -> dict:
  """{name: numpy array} in the stored dtype (bfloat16 as ml_dtypes', which `safetensors.numpy.load_file` lacks)."""
  from safetensors import safe_open  # pylint: disable=import-outside-toplevel
  try:
    with safe_open(str(path), framework="numpy") as f:
      return OrderedDict((k, f.get_tensor(k)) for k in f.keys())
  except Exception as e:  # safetensors raises its own error types for corrupt headers and data
    raise CheckpointError(f"{path} is not a readable .safetensors file: the file is truncated, corrupt or not "
                          f"safetensors ({_first_line(e)})") from e


def _first_line(e: BaseException) -> str:
  """`Type: first line` of an exception (torch's weights-only wrapper skipped to the unpickler's own line)."""
  text = str(e).strip()
  marker = "WeightsUnpickler error: "
  if marker in text:
    text = text[text.index(marker) + len(marker):].strip()
  lines = text.splitlines()
  if not lines:
    return type(e).__name__
  sentence = re.match(r"(.{20,}?[.!])\s", lines[0])  # torch appends paragraphs of advice to the reason
  return f"{type(e).__name__}: {(sentence.group(1) if sentence else lines[0])[:200]}"


def _load_failure(path: pathlib.Path, e: Exception, trust_pickle: bool) -> str:
  """One sentence on why torch.load failed; --trust-pickle is advised only when a safe load refused a global."""
  refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
  if refused and not trust_pickle:
    return (f"{path} pickles {refused.group(1)}, which the safe loader refuses (it allows only tensors, plain "
            "containers and argparse.Namespace); loading it anyway (nag_jax.convert --trust-pickle) would RUN "
            "code from the file, so do that only for a file from a source you trust")
  return (f"{path} is not a readable PyTorch checkpoint: the file is truncated, corrupt or not a torch.save "
          f"file ({_first_line(e)})")


def _select_state_dict(obj, path) -> tuple[dict, str]:
  if not isinstance(obj, dict):
    raise CheckpointError(f"{path} holds an object of type {type(obj).__name__}, not a state_dict or training "
                          "checkpoint")
  for key in ("ema", "model", "state_dict"):
    if key in obj and isinstance(obj[key], dict):
      return _to_numpy(obj[key]), f'training checkpoint, took "{key}"'
  return _to_numpy(obj), "plain state_dict"


def _to_numpy(sd: dict) -> dict:
  """{name: float32 numpy} from floating-point tensors or arrays (half precision is widened exactly).

  DiT/SiT and SD-VAE weights and buffers are all floating point: an integer or bool entry is a damaged
  or foreign file, and casting it would give silently wrong weights, so it is refused.
  """
  out = OrderedDict()
  for k, v in sd.items():
    if not isinstance(k, str):
      raise CheckpointError(f"entry {k!r} has a {type(k).__name__} name, not a string: not a model state_dict")
    if hasattr(v, "detach") and hasattr(v, "is_complex"):
      if v.is_complex():
        raise CheckpointError(f"entry {k!r} is a complex tensor ({v.dtype}): not a model state_dict")
      if not v.is_floating_point():
        raise CheckpointError(f"entry {k!r} has dtype {str(v.dtype).replace('torch.', '')}; model weights are "
                              "floating point: not a model state_dict")
      v = v.detach().cpu().float().numpy()
    if not isinstance(v, np.ndarray):
      raise CheckpointError(f"entry {k!r} is a {type(v).__name__}, not a tensor: not a model state_dict")
    if v.dtype.kind != "f" and v.dtype.name != "bfloat16":
      raise CheckpointError(f"entry {k!r} has dtype {v.dtype}; model weights are floating point: "
                            "not a model state_dict")
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
