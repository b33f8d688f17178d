"""Mesh construction, logical-axis sharding rules, the sharded sampler and multi-process helpers."""
from nag_jax.sharding.mesh import make_mesh, resolve_shape
from nag_jax.sharding.rules import (RULES, batch_devices, batch_sharding, bytes_per_device, check_batch, constrain,
                                    logical_shardings, optimizer_shardings, replicated, with_shardings)
from nag_jax.sharding.sharded_sampler import shard_sampler

__all__ = ["RULES", "batch_devices", "batch_sharding", "bytes_per_device", "check_batch", "constrain",
           "logical_shardings", "make_mesh", "optimizer_shardings", "replicated", "resolve_shape", "shard_sampler",
           "with_shardings"]
