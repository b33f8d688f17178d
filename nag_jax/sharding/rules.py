"""Logical-axis rules: the one place that maps every parameter and activation name onto the mesh."""
from __future__ import annotations

import flax.linen as nn
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

# logical name -> mesh axes. Params: 'embed' is FSDP-sharded, 'mlp'/'heads' tensor-parallel.
RULES = (
    ("batch", ("data", "fsdp")),
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
    size = 1
    for n in names:
      size *= mesh.shape[n]
    out.append(axes if names and dim % size == 0 else None)
  return P(*out)


def logical_shardings(boxed_tree, mesh: Mesh, rules=RULES):
  """NamedShardings for a tree of nn.LogicallyPartitioned (e.g. `jax.eval_shape(model.init, ...)`).

  Leaves without names (optimizer counters, EMA of unnamed leaves) are replicated.
  """
  specs = nn.logical_to_mesh(nn.get_partition_spec(boxed_tree), rules)
  shapes = nn.meta.unbox(boxed_tree)
  return jax.tree.map(lambda spec, s: NamedSharding(mesh, _fit(spec, s.shape, mesh)), specs, shapes,
                      is_leaf=lambda x: isinstance(x, P))


def batch_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
  """Leading (batch) dimension over data x fsdp, the rest replicated."""
  return NamedSharding(mesh, P(("data", "fsdp"), *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())
