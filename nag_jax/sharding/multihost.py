"""Multi-process runs: the one start-up of every command, per-process data rows and writes.

Every command that computes calls `start()` first, before any other JAX call. It reads the environment:
- NAG_COORDINATOR_ADDRESS (host:port of process 0), NAG_NUM_PROCESSES, NAG_PROCESS_ID, set by
  launch/local_multiprocess.sh and launch/slurm_gpu.sh (NAG_LOCAL_DEVICE_IDS optionally restricts the devices);
- NAG_DISTRIBUTED=auto: JAX's own cluster detection (TPU pod slices, Open MPI; launch/tpu_pod.sh sets it);
- a SLURM job step of several tasks (SLURM_NTASKS > 1): JAX's SLURM detection for the coordinator, process
  count and id, but the local devices passed explicitly (JAX's default, [SLURM_LOCALID], hides all but one
  GPU of a one-process-per-node job and fights CUDA_VISIBLE_DEVICES in a one-process-per-GPU job).
A run whose environment names several processes but that would run alone refuses to start in one line, so
N processes never become N independent copies racing over one workdir.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from nag_jax import paths
from nag_jax.errors import UserError
from nag_jax.sharding.rules import batch_sharding


def distributed_args(environ: Mapping[str, str] = os.environ) -> dict[str, Any] | None:
  """The keyword arguments of `jax.distributed.initialize` for this environment, or None for one process.

  Raises UserError for an environment that names several processes but no way to join them.
  """
  address = environ.get("NAG_COORDINATOR_ADDRESS") or None
  count = _int_or_none("NAG_NUM_PROCESSES", environ.get("NAG_NUM_PROCESSES"))
  index = _int_or_none("NAG_PROCESS_ID", environ.get("NAG_PROCESS_ID"))
  mode = environ.get("NAG_DISTRIBUTED", "")
  if mode not in ("", "auto", "off"):
    raise UserError(f"NAG_DISTRIBUTED must be auto or off, got {mode!r}")
  local = _local_device_ids(environ)
  if address is not None:
    _check_explicit(address, count, index)
    return {"coordinator_address": address, "num_processes": count, "process_id": index,
            "local_device_ids": local, "cluster_detection_method": "deactivate"}
  slurm_tasks = _int_or_none("SLURM_NTASKS", environ.get("SLURM_NTASKS")) or 1
  if mode == "off":
    if (count or 1) > 1 or slurm_tasks > 1:
      raise UserError(f"NAG_DISTRIBUTED=off, but the environment names {max(count or 1, slurm_tasks)} processes; "
                      "unset it to join them, or run one process")
    return None
  if slurm_tasks > 1 and "SLURM_PROCID" in environ:
    if local is None and environ.get("JAX_PLATFORMS", "") != "cpu":
      raise UserError("under SLURM, say which GPUs this process drives: set CUDA_VISIBLE_DEVICES (srun "
                      "--gpus-per-task or launch/slurm_gpu.sh do) or NAG_LOCAL_DEVICE_IDS=0,1,...")
    return {"local_device_ids": local}  # JAX's SLURM detection fills address, count and id
  if mode == "auto":
    return {"local_device_ids": local} if local is not None else {}
  if count not in (None, 1):
    raise UserError(f"NAG_NUM_PROCESSES={count} but no coordinator: set NAG_COORDINATOR_ADDRESS=host:port "
                    "(the launchers in launch/ do), or NAG_DISTRIBUTED=auto on a TPU pod slice")
  return None


def _local_device_ids(environ: Mapping[str, str]) -> list[int] | None:
  """The devices this process drives, as ordinals of the ones it sees: NAG_LOCAL_DEVICE_IDS, else all of
  CUDA_VISIBLE_DEVICES (or SLURM_GPUS_ON_NODE under SLURM), else None (JAX's choice)."""
  explicit = environ.get("NAG_LOCAL_DEVICE_IDS", "").strip()
  if explicit:
    try:
      return [int(v) for v in explicit.split(",")]
    except ValueError:
      raise UserError(f"NAG_LOCAL_DEVICE_IDS must be comma-separated device ordinals, got {explicit!r}") from None
  visible = environ.get("CUDA_VISIBLE_DEVICES", "").strip()
  if visible:
    return list(range(len(visible.split(","))))
  gpus = environ.get("SLURM_GPUS_ON_NODE", "").strip()
  if gpus.isdigit() and "SLURM_PROCID" in environ:
    return list(range(int(gpus)))
  return None


def initialize(environ: Mapping[str, str] = os.environ, *, timeout_s: int = 300) -> bool:
  """Starts `jax.distributed` (before any other JAX call) when the environment spans processes; True if it did.

  Then checks that JAX sees the number of processes the environment names, and refuses in one line if not.
  CPU collectives use gloo, so CPU-only runs work too.
  """
  args = distributed_args(environ)
  if args is None:
    return False
  if jax.distributed.is_initialized():
    return True
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**args, initialization_timeout=timeout_s)
  expected = args.get("num_processes") or _int_or_none("NAG_NUM_PROCESSES", environ.get("NAG_NUM_PROCESSES"))
  if expected is None and "SLURM_PROCID" in environ:
    expected = _int_or_none("SLURM_NTASKS", environ.get("SLURM_NTASKS"))
  if expected is not None:
    check_process_count(expected)
  elif jax.process_count() == 1 and len(environ.get("TPU_WORKER_HOSTNAMES", "").split(",")) > 1:
    raise UserError(f"this TPU slice has workers {environ['TPU_WORKER_HOSTNAMES']}, but JAX joined none of the "
                    "others: run the command on every worker at once (launch/tpu_pod.sh does)")
  return True


def start(environ: Mapping[str, str] = os.environ) -> None:
  """The start-up of every command that computes, before any other JAX call: joins the processes the
  environment names (`initialize`) and makes random numbers independent of how arrays are sharded."""
  initialize(environ)
  jax.config.update("jax_threefry_partitionable", True)


def check_shared(folder, what: str) -> None:
  """Refuses, on every process and in one line, a local `folder` the processes of a multi-process run do not share.

  Process 0 writes a marker with a token all processes agree on; every process looks for it. Several hosts
  with a local (non-shared) workdir would otherwise each write their own half of the checkpoints. Cloud paths
  are shared by construction; one process needs no check.
  """
  if jax.process_count() == 1 or paths.is_cloud(folder):
    return
  folder = paths.path(folder)
  token = int(multihost_utils.broadcast_one_to_all(np.int32(np.random.default_rng().integers(1, 2**30))))
  marker = folder / f".nag_jax_shared_check_{token}"
  created = False
  if is_primary():
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    marker.write_text(str(token))
  multihost_utils.sync_global_devices(f"nag_jax shared check {token}: written")
  seen = marker.exists() and marker.read_text() == str(token)
  everyone = np.asarray(multihost_utils.process_allgather(np.asarray(seen)))
  if is_primary():
    marker.unlink()
    if created and not any(folder.iterdir()):
      folder.rmdir()
  multihost_utils.sync_global_devices(f"nag_jax shared check {token}: done")
  if not everyone.all():
    blind = [int(i) for i in np.flatnonzero(~everyone.astype(bool))]
    raise UserError(f"{what} {folder} is not shared by the {jax.process_count()} processes (process {blind[0]} "
                    "cannot see what process 0 writes there): use a filesystem every host mounts, or gs://")


def is_primary() -> bool:
  """True on process 0: the one that writes logs, summaries, config.json and reports."""
  return jax.process_index() == 0


def _int_or_none(name: str, raw: Any) -> int | None:
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
    raise UserError(f"NAG_COORDINATOR_ADDRESS must be host:port, got {address!r}")
  if count is None or index is None:
    raise UserError("NAG_COORDINATOR_ADDRESS needs NAG_NUM_PROCESSES and NAG_PROCESS_ID too")
  if count < 1 or not 0 <= index < count:
    raise UserError(f"NAG_PROCESS_ID must be in [0, NAG_NUM_PROCESSES), got {index} of {count}")


def check_process_count(expected: int) -> None:
  """Raises when the run has another number of processes than the config or launcher asked for."""
  if jax.process_count() != expected:
    raise UserError(f"the environment names {expected} processes, but JAX joined {jax.process_count()} "
                    "(check the launcher's process count and the coordinator)")


def process_rows(mesh: Mesh, global_batch: int) -> slice:
  """The contiguous rows of a global batch that this process's devices hold (over data x fsdp)."""
  index = batch_sharding(mesh).addressable_devices_indices_map((global_batch,))
  blocks = sorted({s.indices(global_batch)[:2] for (s,) in index.values()})
  start, stop = blocks[0][0], blocks[-1][1]
  if sum(b - a for a, b in blocks) != stop - start:
    raise UserError(f"the batch rows of process {jax.process_index()} are not contiguous ({blocks}); "
                    "order the mesh so that each process holds one block of the data axes")
  return slice(start, stop)


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
