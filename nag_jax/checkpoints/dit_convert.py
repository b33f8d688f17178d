"""Official DiT/SiT state_dict <-> Flax params, validated against the shapes of `jax.eval_shape`."""
from __future__ import annotations

import functools
import re
import warnings
from collections import OrderedDict

import flax.linen as nn
import jax
import ml_dtypes
import numpy as np

from nag_jax.checkpoints.torch_io import CheckpointError
from nag_jax.models.config import ModelConfig, heads_for_hidden
from nag_jax.models.dit import DiT, dummy_inputs
from nag_jax.models.embeddings import sincos_2d
from nag_jax.errors import UserError

# (torch prefix, flax path, kind); "{i}" is the block index. kind: linear | conv | embed.
_RULES = [
    ("x_embedder.proj", "x_embedder", "conv"),
    ("t_embedder.mlp.0", "t_embedder/mlp_0", "linear"),
    ("t_embedder.mlp.2", "t_embedder/mlp_2", "linear"),
    ("y_embedder.embedding_table", "y_embedder", "embed"),
    ("blocks.{i}.attn.qkv", "blocks_{i}/attn/qkv", "linear"),
    ("blocks.{i}.attn.proj", "blocks_{i}/attn/proj", "linear"),
    ("blocks.{i}.mlp.fc1", "blocks_{i}/fc1", "linear"),
    ("blocks.{i}.mlp.fc2", "blocks_{i}/fc2", "linear"),
    ("blocks.{i}.adaLN_modulation.1", "blocks_{i}/adaLN_modulation", "linear"),
    ("final_layer.linear", "final_layer/linear", "linear"),
    ("final_layer.adaLN_modulation.1", "final_layer/adaLN_modulation", "linear"),
]


def _key_map(depth: int) -> OrderedDict:
  """torch key -> (flax path tuple, transform kind) for a model of this depth."""
  block_rules = [r for r in _RULES if "{i}" in r[0]]
  rules = list(_RULES[:4])
  rules += [(tp.format(i=i), fp.format(i=i), kind) for i in range(depth) for tp, fp, kind in block_rules]
  rules += _RULES[-2:]
  out = OrderedDict()
  for tp, fpath, kind in rules:
    fp = tuple(fpath.split("/"))
    if kind == "embed":
      out[tp + ".weight"] = (fp + ("embedding_table",), kind)
    else:
      out[tp + ".weight"] = (fp + ("kernel",), kind)
      out[tp + ".bias"] = (fp + ("bias",), "bias")
  return out


def _to_flax(a: np.ndarray, kind: str) -> np.ndarray:
  return {"linear": lambda x: x.T, "conv": lambda x: x.transpose(2, 3, 1, 0)}.get(kind, lambda x: x)(a)


def _to_torch(a: np.ndarray, kind: str) -> np.ndarray:
  return {"linear": lambda x: x.T, "conv": lambda x: x.transpose(3, 2, 0, 1)}.get(kind, lambda x: x)(a)


# The tensors infer_config reads the architecture from, and their ranks.
_NDIMS = {"x_embedder.proj.weight": 4, "pos_embed": 3, "y_embedder.embedding_table.weight": 2,
          "final_layer.linear.weight": 2, "blocks.0.mlp.fc1.weight": 2}


def _torch_shape(flax_shape: tuple, kind: str) -> tuple:
  """The official tensor's shape for a Flax param shape (the inverse layout of `_to_flax`)."""
  if kind == "linear":
    return tuple(flax_shape[::-1])
  if kind == "conv":
    return (flax_shape[3], flax_shape[2], flax_shape[0], flax_shape[1])
  return tuple(flax_shape)


def infer_config(sd: dict, family: str, num_heads: int | None = None) -> ModelConfig:
  """Reads patch, width, depth, input size, classes and learn_sigma off the tensors."""
  missing = [k for k in _NDIMS if k not in sd]
  if missing:
    raise CheckpointError(f"not a DiT/SiT state_dict: missing keys {missing}")
  bad = [f"{k} has shape {np.shape(sd[k])}, not a non-empty {n}-D one" for k, n in _NDIMS.items()
         if np.ndim(sd[k]) != n or 0 in np.shape(sd[k])]
  if bad:
    raise CheckpointError(f"not a DiT/SiT state_dict: {'; '.join(bad)}")
  hidden, in_ch, p, p2 = sd["x_embedder.proj.weight"].shape
  if p != p2:
    raise CheckpointError(f"x_embedder.proj.weight has non-square patches {p}x{p2}")
  grid = int(round(sd["pos_embed"].shape[1] ** 0.5))
  if grid * grid != sd["pos_embed"].shape[1]:
    raise CheckpointError(f"pos_embed has {sd['pos_embed'].shape[1]} tokens, not a square grid")
  depth = len({m.group(1) for k in sd for m in [re.match(r"blocks\.(\d+)\.", k)] if m})
  out_rows = sd["final_layer.linear.weight"].shape[0]
  if out_rows == p * p * in_ch * 2:
    learn_sigma = True
  elif out_rows == p * p * in_ch:
    learn_sigma = False
  else:
    raise CheckpointError(f"final_layer.linear.weight has {out_rows} rows; a {family} model with patch {p} "
                          f"and {in_ch} channels needs {p * p * in_ch} or {p * p * in_ch * 2}")
  heads = _heads(hidden, num_heads)
  mlp_ratio = sd["blocks.0.mlp.fc1.weight"].shape[0] / hidden
  try:
    return ModelConfig(family=family, input_size=grid * p, patch_size=p, in_channels=in_ch,
                       hidden_size=hidden, depth=depth, num_heads=heads, mlp_ratio=mlp_ratio,
                       num_classes=sd["y_embedder.embedding_table.weight"].shape[0] - 1,
                       learn_sigma=learn_sigma)
  except UserError as e:  # e.g. a label table without classes: the tensors describe no valid model
    raise CheckpointError(f"the tensors describe no valid {family} model: {e}") from e


def _heads(hidden: int, num_heads: int | None) -> int:
  """The attention head count: the given one (it must divide the width) or the official size's."""
  if num_heads is None:
    heads = heads_for_hidden(hidden)
    if heads is None:
      raise CheckpointError(f"hidden size {hidden} is not an official size, so the head count is unknown: "
                            "pass --num-heads (a divisor of the width)")
    return heads
  if num_heads < 1:
    raise CheckpointError(f"--num-heads must be >= 1, got {num_heads}")
  if hidden % num_heads:
    raise CheckpointError(f"--num-heads {num_heads} does not divide the width (hidden size) {hidden}")
  return num_heads


def abstract_params(config: ModelConfig, shardings=None):
  """ShapeDtypeStructs of the params from `jax.eval_shape` of init (nothing is allocated)."""
  model = DiT(config)
  shapes = jax.eval_shape(lambda: nn.meta.unbox(model.init(jax.random.key(0), *dummy_inputs(config))))["params"]
  if shardings is None:
    return shapes
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)


def expected_shapes(config: ModelConfig) -> dict:
  """Flax param path -> shape."""
  return dict(_expected_shapes(config))


@functools.lru_cache(maxsize=16)
def _expected_shapes(config: ModelConfig) -> dict:
  """Cached per config: tracing init costs about 0.3 s, and a converter run or test checks one model often."""
  flat = jax.tree_util.tree_flatten_with_path(abstract_params(config))[0]
  return {tuple(k.key for k in path): leaf.shape for path, leaf in flat}


def _some(keys: list, limit: int = 8) -> str:
  """A key list for one line: the first `limit` and the count of the rest."""
  return str(keys) if len(keys) <= limit else f"{keys[:limit]} and {len(keys) - limit} more"


def torch_to_flax(sd: dict, config: ModelConfig, ignore_unexpected: bool = False) -> dict:
  """Official state_dict -> Flax params; lists missing/unexpected keys and shape mismatches."""
  keymap = _key_map(config.depth)
  shapes = expected_shapes(config)
  missing = [k for k in list(keymap) + ["pos_embed"] if k not in sd]
  unexpected = [k for k in sd if k not in keymap and k != "pos_embed"]
  problems = []
  if missing:
    problems.append(f"missing keys: {_some(missing)}")
  if unexpected and not ignore_unexpected:
    problems.append(f"unexpected keys: {_some(unexpected)}")
  params: dict = {}
  for tkey, (fpath, kind) in keymap.items():
    if tkey not in sd:
      continue
    want = _torch_shape(shapes[fpath], kind)
    if np.shape(sd[tkey]) != want:
      problems.append(f"shape mismatch for {tkey}: expected {want}, got {np.shape(sd[tkey])}")
      continue
    node = params
    for name in fpath[:-1]:
      node = node.setdefault(name, {})
    node[fpath[-1]] = np.asarray(_to_flax(sd[tkey], kind), np.float32)
  if "pos_embed" in sd and not problems:
    table = sincos_2d(config.hidden_size, config.input_size // config.patch_size)[None]
    if sd["pos_embed"].shape != table.shape:
      problems.append(f"shape mismatch for pos_embed: expected {table.shape}, got {sd['pos_embed'].shape}")
    else:
      precision, tol = stored_precision(sd["pos_embed"])
      err = float(np.abs(sd["pos_embed"] - table).max())
      if not err <= tol:
        problems.append(f"pos_embed differs from the fixed 2-D sin-cos table the model uses by {err:.3g} "
                        f"(more than the {tol:.3g} that {precision} rounding allows)")
  nonfinite = [k for k, v in sd.items() if k in keymap and not np.isfinite(v).all()]
  if nonfinite:
    problems.append(f"NaN or inf values in {nonfinite}")
  if problems:
    raise CheckpointError("checkpoint does not fit the model: " + "; ".join(problems))
  if unexpected:
    warnings.warn(f"ignored unexpected keys: {unexpected}")
  return params


def stored_precision(values: np.ndarray) -> tuple[str, float]:
  """(name, tolerance) of the coarsest float type holding `values` exactly (bfloat16, float16, else float32).

  Half-precision exports round the sin-cos table (|values| <= 1) to their type: the tolerance is one unit
  in the last place at 1 (the type's epsilon), twice the largest rounding error; float32 keeps 1e-5.
  """
  v = np.asarray(values, np.float32)
  for dtype in (ml_dtypes.bfloat16, np.float16):
    if np.array_equal(v.astype(dtype).astype(np.float32), v):
      return np.dtype(dtype).name, float(ml_dtypes.finfo(dtype).eps)
  return "float32", 1e-5


def flax_to_torch(params: dict, config: ModelConfig) -> OrderedDict:
  """Flax params -> official state_dict (numpy), including the fixed pos_embed, in official key order."""
  sd = OrderedDict()
  sd["pos_embed"] = sincos_2d(config.hidden_size, config.input_size // config.patch_size)[None]
  for tkey, (fpath, kind) in _key_map(config.depth).items():
    node = params
    for name in fpath:
      node = node[name]
    sd[tkey] = np.ascontiguousarray(_to_torch(np.asarray(node, np.float32), kind))
  return sd
