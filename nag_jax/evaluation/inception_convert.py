"""pytorch-fid weight file (`pt_inception-2015-12-05-*.pth`) <-> Flax variables for `InceptionV3`.

The user supplies the file; nothing is downloaded. Converted variables are validated against the
shapes of `jax.eval_shape(model.init, ...)`, listing missing, unexpected and mismatched keys.
"""
import os
from collections.abc import Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np

from nag_jax.evaluation.inception import INPUT_SIZE, InceptionV3, Resize
from nag_jax import paths
from nag_jax.errors import PathError, UserError

# torch leaf name -> (Flax collection, Flax leaf name) for the layers of the network.
_BN_LEAVES = {"weight": ("params", "scale"), "bias": ("params", "bias"),
              "running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var")}
_IGNORED = ("num_batches_tracked",)


def expected_shapes(model: InceptionV3 | None = None) -> dict[tuple[str, ...], tuple[int, ...]]:
  """Flat {(collection, *path): shape} of the variables `model.init` creates (no compute)."""
  model = model or InceptionV3()
  dummy = jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32)
  shapes = jax.eval_shape(model.init, jax.random.key(0), dummy)
  return {k: tuple(v.shape) for k, v in flax.traverse_util.flatten_dict(shapes).items()}


def _flax_key(torch_key: str, value: np.ndarray) -> tuple[tuple[str, ...], np.ndarray] | None:
  """Maps one torch key and array to its flat Flax key and layout, or None when unknown."""
  *path, leaf = torch_key.split(".")
  if path == ["fc"] and leaf in ("weight", "bias"):
    return ("params", "fc", "kernel" if leaf == "weight" else "bias"), value.T
  if path and path[-1] == "conv" and leaf == "weight" and value.ndim == 4:
    return ("params", *path, "kernel"), value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
  if path and path[-1] == "bn" and leaf in _BN_LEAVES:
    collection, name = _BN_LEAVES[leaf]
    return (collection, *path, name), value
  return None


def convert_state_dict(state_dict: Mapping[str, np.ndarray],
                       model: InceptionV3 | None = None) -> dict:
  """Converts a pytorch-fid FID Inception state dict (numpy or torch arrays) to Flax variables.

  Raises ValueError listing missing, unexpected and shape-mismatched keys.
  """
  want = expected_shapes(model)
  flat, unexpected, mismatched, seen = {}, [], [], set()
  for key, value in state_dict.items():
    if key.rsplit(".", 1)[-1] in _IGNORED:
      continue
    mapped = _flax_key(key, np.asarray(value, dtype=np.float32))
    if mapped is None or mapped[0] not in want:
      unexpected.append(key)
      continue
    flax_key, array = mapped
    seen.add(flax_key)
    if array.shape != want[flax_key]:
      mismatched.append(f"{key}: {tuple(np.shape(value))} -> {array.shape}, "
                        f"expected {want[flax_key]}")
    else:
      flat[flax_key] = np.ascontiguousarray(array)
  missing = ["/".join(k) for k in want if k not in seen]
  if missing or unexpected or mismatched:
    parts = [f"{name} ({len(items)}): {', '.join(items[:5])}{' ...' if len(items) > 5 else ''}"
             for name, items in (("missing", missing), ("unexpected", unexpected),
                                 ("shape mismatch", mismatched)) if items]
    raise UserError("not a pytorch-fid FID Inception state dict; " + "; ".join(parts))
  return flax.traverse_util.unflatten_dict(flat)


def to_state_dict(variables: Mapping) -> dict[str, np.ndarray]:
  """Inverse of `convert_state_dict`: Flax variables -> pytorch-fid layout (numpy arrays)."""
  inverse = {v: k for k, v in _BN_LEAVES.items()}
  out = {}
  for (collection, *path, leaf), value in flax.traverse_util.flatten_dict(variables).items():
    value = np.asarray(value)
    if path == ["fc"]:
      out[f"fc.{'weight' if leaf == 'kernel' else 'bias'}"] = value.T
    elif leaf == "kernel":
      out[".".join(path) + ".weight"] = value.transpose(3, 2, 0, 1)
    else:
      out[".".join(path) + "." + inverse[(collection, leaf)]] = value
  return out


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a `.pth` state dict with torch (weights only) into numpy arrays."""
  if not paths.path(path).is_file():
    raise PathError(
        f"Inception weight file {os.fspath(path)!r} not found; pass pytorch-fid's "
        "pt_inception-2015-12-05-6726825d.pth (nothing is downloaded)")
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError("reading a .pth weight file needs torch (CPU build is enough)") from e
  with paths.path(path).open("rb") as f:
    state = torch.load(f, map_location="cpu", weights_only=True)
  if not isinstance(state, Mapping):
    raise UserError(f"{os.fspath(path)!r} does not hold a state dict (got {type(state).__name__})")
  return {k: v.detach().float().numpy() if torch.is_tensor(v) else np.asarray(v)
          for k, v in state.items()}


def load_inception(path: str | os.PathLike,
                   resize: Resize = "pytorch_fid") -> tuple[InceptionV3, dict]:
  """Builds `InceptionV3(resize)` and its validated variables from a pytorch-fid weight file."""
  model = InceptionV3(resize=resize)
  return model, convert_state_dict(load_state_dict(path), model)
