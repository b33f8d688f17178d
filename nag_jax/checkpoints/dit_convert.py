"""Official DiT/SiT state_dict <-> Flax params, validated against the shapes of `jax.eval_shape`."""
from __future__ import annotations

import re
import warnings
from collections import OrderedDict

import flax.linen as nn
import jax
import numpy as np

from nag_jax.checkpoints.torch_io import CheckpointError
from nag_jax.models.config import ModelConfig, heads_for_hidden
from nag_jax.models.dit import DiT, dummy_inputs
from nag_jax.models.embeddings import sincos_2d

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


def infer_config(sd: dict, family: str, num_heads: int | None = None) -> ModelConfig:
  """Reads patch, width, depth, input size, classes and learn_sigma off the tensors."""
  required = ["x_embedder.proj.weight", "pos_embed", "y_embedder.embedding_table.weight",
              "final_layer.linear.weight", "blocks.0.mlp.fc1.weight"]
  missing = [k for k in required if k not in sd]
  if missing:
    raise CheckpointError(f"not a DiT/SiT state_dict: missing keys {missing}")
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
  heads = num_heads or heads_for_hidden(hidden)
  if heads is None:
    raise CheckpointError(f"hidden size {hidden} is not an official size: pass --num-heads")
  mlp_ratio = sd["blocks.0.mlp.fc1.weight"].shape[0] / hidden
  return ModelConfig(family=family, input_size=grid * p, patch_size=p, in_channels=in_ch,
                     hidden_size=hidden, depth=depth, num_heads=heads, mlp_ratio=mlp_ratio,
                     num_classes=sd["y_embedder.embedding_table.weight"].shape[0] - 1,
                     learn_sigma=learn_sigma)


def abstract_params(config: ModelConfig, shardings=None):
  """ShapeDtypeStructs of the params from `jax.eval_shape` of init (nothing is allocated)."""
  model = DiT(config)
  shapes = jax.eval_shape(lambda: nn.meta.unbox(model.init(jax.random.key(0), *dummy_inputs(config))))["params"]
  if shardings is None:
    return shapes
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)


def expected_shapes(config: ModelConfig) -> dict:
  """Flax param path -> shape."""
  flat = jax.tree_util.tree_flatten_with_path(abstract_params(config))[0]
  return {tuple(k.key for k in path): leaf.shape for path, leaf in flat}


def torch_to_flax(sd: dict, config: ModelConfig, ignore_unexpected: bool = False) -> dict:
  """Official state_dict -> Flax params; lists missing/unexpected keys and shape mismatches."""
  keymap = _key_map(config.depth)
  shapes = expected_shapes(config)
  missing = [k for k in list(keymap) + ["pos_embed"] if k not in sd]
  unexpected = [k for k in sd if k not in keymap and k != "pos_embed"]
  problems = []
  if missing:
    problems.append(f"missing keys: {missing}")
  if unexpected and not ignore_unexpected:
    problems.append(f"unexpected keys: {unexpected}")
  params: dict = {}
  for tkey, (fpath, kind) in keymap.items():
    if tkey not in sd:
      continue
    value = _to_flax(sd[tkey], kind)
    if value.shape != shapes[fpath]:
      problems.append(f"shape mismatch for {tkey}: expected {_to_torch(np.empty(shapes[fpath]), kind).shape}, "
                      f"got {sd[tkey].shape}")
      continue
    node = params
    for name in fpath[:-1]:
      node = node.setdefault(name, {})
    node[fpath[-1]] = np.asarray(value, np.float32)
  if "pos_embed" in sd and not problems:
    table = sincos_2d(config.hidden_size, config.input_size // config.patch_size)[None]
    if sd["pos_embed"].shape != table.shape:
      problems.append(f"shape mismatch for pos_embed: expected {table.shape}, got {sd['pos_embed'].shape}")
    elif np.abs(sd["pos_embed"] - table).max() > 1e-5:
      problems.append("pos_embed differs from the fixed 2-D sin-cos table the model uses")
  if problems:
    raise CheckpointError("checkpoint does not fit the model: " + "; ".join(problems))
  if unexpected:
    warnings.warn(f"ignored unexpected keys: {unexpected}")
  return params


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
