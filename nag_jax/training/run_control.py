"""What a training run watches besides its steps: preemption (SIGTERM) and the global-batch digests.

Preemption: spot and preemptible TPU slices (and SLURM's `scancel`) send SIGTERM. In a multi-process run
JAX's preemption service (started by `jax.distributed.initialize`) catches it on any process and lets every
process agree on one step (`CheckpointManager.reached_preemption`); alone, a SIGTERM handler sets the flag.
The loop then saves that step, waits for the save, and raises `Preempted`: the command exits with
`PREEMPTED_EXIT_CODE`, and rerunning it resumes there (launch/tpu_pod.sh relaunches until the run ends).
"""
from __future__ import annotations

import signal
import threading

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: try again (the run resumes from the step it saved)
DIGESTS_FILE = "batch_digests.txt"


class Preempted(Exception):
  """The run saved a checkpoint at `step` after a SIGTERM and stopped; rerun to resume."""

  def __init__(self, step: int):
    super().__init__(f"preempted (SIGTERM): saved a checkpoint at step {step}; run the same command again "
                     "to resume")
    self.step = step


class Preemption:
  """`reached(step)`: True once, on every process at the same step, after a SIGTERM to any of them."""

  def __init__(self, manager):
    self._manager, self._signalled, self._previous = manager, False, None
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):  # pylint: disable=unused-argument
    self._signalled = True

  def reached(self, step: int) -> bool:
    if jax.process_count() > 1:
      return self._manager.reached_preemption(step)
    return self._signalled

  def close(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None


def _mix(h: jax.Array) -> jax.Array:
  """A 32-bit integer hash (lowbias32): every input bit moves about half the output bits."""
  h = (h ^ (h >> 16)) * jnp.uint32(0x7FEB352D)
  h = (h ^ (h >> 15)) * jnp.uint32(0x846CA68B)
  return h ^ (h >> 16)


@jax.jit
def batch_digest(batch: dict) -> jax.Array:
  """uint32 digests of a global batch's arrays (sorted by key): the hash of each element's bits mixed with its
  position, summed modulo 2**32. Integer sums do not depend on the order of addition, so the digest is the same
  whatever devices and processes hold the rows."""
  out = []
  for key in sorted(batch):
    a = batch[key]
    bits = (jax.lax.bitcast_convert_type(a.astype(jnp.float32), jnp.uint32)
            if jnp.issubdtype(a.dtype, jnp.floating) else a.astype(jnp.uint32))
    position = _mix(jnp.arange(a.size, dtype=jnp.uint32).reshape(a.shape) + jnp.uint32(1))
    out.append(jnp.sum(_mix(bits ^ position), dtype=jnp.uint32))
  return jnp.stack(out)


class DigestLog:
  """Each step's batch digest, in workdir/batch_digests.txt ("step hex hex" lines), rewritten by process 0 at
  every flush; a resumed run keeps the lines of the steps it does not redo."""

  def __init__(self, workdir: epath.Path, start_step: int, enabled: bool):
    self.path, self.enabled = workdir / DIGESTS_FILE, enabled
    self.lines: dict[int, str] = {}
    if enabled and self.path.exists():
      for line in self.path.read_text().splitlines():
        step = int(line.split()[0])
        if step <= start_step:
          self.lines[step] = line
    self.pending: list[tuple[int, jax.Array]] = []

  def add(self, step: int, batch: dict) -> None:
    if self.enabled:
      self.pending.append((step, batch_digest(batch)))

  def flush(self) -> None:
    if not self.enabled or not self.pending:
      return
    for step, digest in self.pending:
      self.lines[step] = f"{step} " + " ".join(f"{int(v):08x}" for v in np.asarray(digest))
    self.pending = []
    if jax.process_index() == 0:
      self.path.write_text("".join(f"{self.lines[s]}\n" for s in sorted(self.lines)))
