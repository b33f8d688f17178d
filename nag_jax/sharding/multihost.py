"""Multi-process runs: `jax.distributed` start-up from config or environment, per-process data and writes.

Environment (set by the scripts in launch/): NAG_COORDINATOR_ADDRESS (host:port of process 0),
NAG_NUM_PROCESSES, NAG_PROCESS_ID; or NAG_DISTRIBUTED=auto for JAX's own cluster detection (TPU pods,
SLURM, Open MPI). Under SLURM with more than one task, auto detection is the default.
"""
from __future__ import annotations

import os
from typing import Mapping

import grain
import jax
import numpy as np
from jax.sharding import Mesh

from nag_jax.sharding.rules import batch_sharding
from nag_jax.errors import UserError


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, environ: Mapping[str, str] = os.environ,
               timeout_s: int = 300) -> bool:
  """Starts `jax.distributed` (before any other JAX call) when the run spans processes; True if it did.

  Arguments override the NAG_* environment; with neither (and no SLURM job of several tasks) this is a
  single-process run and nothing happens. CPU collectives use gloo, so CPU-only runs work too.
  """
  address = coordinator_address or environ.get("NAG_COORDINATOR_ADDRESS") or None
  count = _int_or_none("num_processes", num_processes, environ.get("NAG_NUM_PROCESSES"))
  index = _int_or_none("process_id", process_id, environ.get("NAG_PROCESS_ID"))
  auto = environ.get("NAG_DISTRIBUTED") == "auto" or int(environ.get("SLURM_NTASKS", "1")) > 1
  if address is None and not auto:
    if count not in (None, 1):
      raise UserError(f"{count} processes need a coordinator address (NAG_COORDINATOR_ADDRESS=host:port), "
                       "or NAG_DISTRIBUTED=auto on a TPU pod or SLURM job")
    return False
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if address is None:
    jax.distributed.initialize(num_processes=count, process_id=index, initialization_timeout=timeout_s)
  else:
    _check_explicit(address, count, index)
    jax.distributed.initialize(address, count, index, initialization_timeout=timeout_s)
  if count is not None:
    check_process_count(count)
  return True


def _int_or_none(name: str, value: int | None, env_value: str | None) -> int | None:
  raw = value if value is not None else env_value
  if raw in (None, ""):
    return None
  try:
    return int(raw)
  except ValueError:
    raise UserError(f"{name} must be an integer, got {raw!r}") from None


def _check_explicit(address: str, count: int | None, index: int | None) -> None:
  """One clear error for an incomplete or inconsistent explicit set-up."""
  host, _, port = address.rpartition(":")
  if not host or not port.isdigit():
    raise UserError(f"coordinator address must be host:port, got {address!r}")
  if count is None or index is None:
    raise UserError("a coordinator address needs num_processes and process_id too "
                     "(NAG_NUM_PROCESSES, NAG_PROCESS_ID)")
  if count < 1 or not 0 <= index < count:
    raise UserError(f"process_id must be in [0, num_processes), got process_id={index}, "
                     f"num_processes={count}")


def check_process_count(expected: int) -> None:
  """Raises when the run has another number of processes than the config or launcher asked for."""
  if jax.process_count() != expected:
    raise UserError(f"process count mismatch: expected {expected} processes, but JAX sees "
                     f"{jax.process_count()} (check the launcher's process count and the coordinator)")


def process_rows(mesh: Mesh, global_batch: int) -> slice:
  """The contiguous rows of a global batch that this process's devices hold (over data x fsdp)."""
  index = batch_sharding(mesh).addressable_devices_indices_map((global_batch,))
  blocks = sorted({s.indices(global_batch)[:2] for (s,) in index.values()})
  start, stop = blocks[0][0], blocks[-1][1]
  if sum(b - a for a, b in blocks) != stop - start:
    raise UserError(f"the batch rows of process {jax.process_index()} are not contiguous ({blocks}); "
                     "order the mesh so that each process holds one block of the data axes")
  return slice(start, stop)


def data_shard_options(mesh: Mesh, global_batch: int) -> grain.sharding.ShardOptions:
  """grain shard of this process: processes that hold the same batch rows (tensor axis) read the same."""
  rows = process_rows(mesh, global_batch)
  size = rows.stop - rows.start
  return grain.sharding.ShardOptions(shard_index=rows.start // size, shard_count=global_batch // size,
                                     drop_remainder=True)


def row_blocks(mesh: Mesh, global_batch: int) -> list[int]:
  """First rows of the global batch's row blocks over data x fsdp, the same list on every process
  (so that a decision taken on it, like skipping a batch whose parts exist, is taken by all or none)."""
  index = batch_sharding(mesh).devices_indices_map((global_batch,))
  return sorted({s.indices(global_batch)[0] for (s,) in index.values()})


def owned_shards(x: jax.Array) -> list[tuple[slice, np.ndarray]]:
  """(rows, data) of the shards this process must write: one replica of each row range in the whole run.

  A row range held by several devices (replicated over tensor, or over processes) is written once, by
  the device with replica_id 0, so processes writing per-row files never collide.
  """
  return [(s.index[0], np.asarray(s.data)) for s in x.addressable_shards if s.replica_id == 0]
