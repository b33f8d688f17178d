"""Logical-axis rules: the one place that maps parameter, activation and optimizer-state names onto the mesh.

DiT/SiT and g_phi parameters carry logical names (`nag_jax.models.initializers.partitioned`); the SD-VAE
has none and stays replicated (it only decodes, and its 84M parameters fit every device). Activations
follow the batch split of the inputs (the k*B guidance branch batch included); `constrain` pins them
inside the blocks, where XLA otherwise picks (and, on data x fsdp x tensor meshes, mis-partitions)
layouts with fsdp on both the batch and the features.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import flax.linen as nn
import jax
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from nag_jax.errors import UserError

# logical name -> mesh axes. Params: 'embed' is FSDP-sharded, 'mlp'/'heads' tensor-parallel.
# Activations: 'batch' over data x fsdp, features ('act_embed') whole, hidden units as their weights.
RULES = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("act_embed", None),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("vocab", None),
    ("freq", None),
    ("patch_out", None),
)


def _fit(spec: P, shape: tuple, mesh: Mesh) -> P:
  """Drops mesh axes from dimensions they do not divide (those dimensions stay replicated)."""
  out = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    names = (axes,) if isinstance(axes, str) else tuple(axes or ())
    size = math.prod(mesh.shape[n] for n in names)
    out.append(axes if names and dim % size == 0 else None)
  return P(*out)


def logical_shardings(boxed_tree, mesh: Mesh, rules=RULES):
  """NamedShardings for a tree of nn.LogicallyPartitioned (e.g. `jax.eval_shape(model.init, ...)`).

  Leaves without names (optimizer counters, EMA of unnamed leaves, the VAE) are replicated.
  """
  specs = nn.logical_to_mesh(nn.get_partition_spec(boxed_tree), rules)
  shapes = nn.meta.unbox(boxed_tree)
  return jax.tree.map(lambda spec, s: NamedSharding(mesh, _fit(spec, s.shape, mesh)), specs, shapes,
                      is_leaf=lambda x: isinstance(x, P))


def optimizer_shardings(tx: optax.GradientTransformation, abstract_params: Any, param_shardings: Any) -> Any:
  """Shardings of `tx.init(params)`: every params-shaped part (Adam moments) follows the params.

  Counters and other non-parameter leaves are replicated. Works for optax transforms whose state holds
  whole copies of the params tree (adam(w), sgd with momentum, chains and clipping of them).
  """
  mesh = jax.tree.leaves(param_shardings)[0].mesh
  state = jax.eval_shape(tx.init, abstract_params)
  return optax.tree_map_params(tx, lambda _, sharding: sharding, state, param_shardings,
                               transform_non_params=lambda _: replicated(mesh))


def with_shardings(abstract_tree: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs carrying `shardings` (an Orbax restore target, or AOT `lower` arguments)."""
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), abstract_tree, shardings)


def bytes_per_device(tree: Any) -> int:
  """Bytes one device holds of a tree of sharded arrays or ShapeDtypeStructs (even shardings)."""
  return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(tree))


def constrain(x: jax.Array, *names: str | None) -> jax.Array:
  """Pins an activation's sharding by logical names, e.g. ("batch", "length", "mlp"), inside `jax.set_mesh`.

  Outside a mesh context (one device, plain `jax.jit`) it returns x unchanged.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  return jax.lax.with_sharding_constraint(x, logical_spec(names, x.shape, mesh))


def logical_spec(names: tuple, shape: tuple, mesh) -> P:
  """The PartitionSpec of an array of `shape` whose dimensions have logical `names`, on `mesh` (axes that do not
  divide a dimension dropped)."""
  return _fit(P(*nn.logical_to_mesh_axes(names, RULES)), shape, mesh)


def batch_devices(shape: Mapping[str, int]) -> int:
  """How many ways the batch is split: the product of the sizes of the 'batch' rule's axes (data x fsdp)."""
  return math.prod(shape[a] for a in dict(RULES)["batch"])


def check_batch(mesh: Mesh, batch: int) -> None:
  """Raises a clear error when a global batch does not split evenly over the mesh's batch axes."""
  axes = dict(RULES)["batch"]
  devices = batch_devices(mesh.shape)
  if batch % devices:
    raise UserError(f"batch {batch} is not divisible by the {devices} devices of the batch axes {axes} of "
                    f"mesh {dict(mesh.shape)}")


def batch_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
  """Leading (batch) dimension over the mesh axes of the 'batch' rule, the rest replicated."""
  return NamedSharding(mesh, P(dict(RULES)["batch"], *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
  """The same full copy on every device of the mesh."""
  return NamedSharding(mesh, P())
