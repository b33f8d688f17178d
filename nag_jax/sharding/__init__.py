"""Mesh construction and logical-axis sharding rules for training, sampling and evaluation."""
from nag_jax.sharding.mesh import make_mesh, resolve_shape
from nag_jax.sharding.rules import RULES, batch_sharding, logical_shardings, replicated

__all__ = ["RULES", "batch_sharding", "logical_shardings", "make_mesh", "replicated", "resolve_shape"]
