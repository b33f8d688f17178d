"""Two local processes (jax.distributed over 127.0.0.1, gloo CPU collectives) train and sample a tiny SiT
exactly as one process does: same parameters after the steps, same samples, written without collisions.
"""
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from nag_jax import checkpoints
from nag_jax.sampling import writer
from tests.multihost_worker import TAG
from tests.session_helpers import free_port, once_per_session

WORKER = pathlib.Path(__file__).with_name("multihost_worker.py")


def _start(out: pathlib.Path, num_processes: int, process_id: int, port: int) -> subprocess.Popen:
  out.mkdir(parents=True, exist_ok=True)
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  with open(out / f"log_{process_id}.txt", "w", encoding="utf-8") as log:
    return subprocess.Popen([sys.executable, str(WORKER), str(out), str(num_processes), str(process_id),
                             str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
  """Folders of the one-process reference run and the two-process run (run once, also under xdist)."""
  with once_per_session(tmp_path_factory, "multiprocess") as root:
    if not (root / "done").exists():
      port = free_port()
      procs = {"reference": _start(root / "reference", 1, 0, port)}
      procs.update({f"process {i}": _start(root / "two", 2, i, port) for i in range(2)})
      try:
        for p in procs.values():
          p.wait(timeout=400)
      finally:
        for p in procs.values():
          if p.poll() is None:
            p.kill()
      failed = [name for name, p in procs.items() if p.returncode != 0]
      logs = "\n".join(f"--- {log}\n{log.read_text()[-2000:]}" for log in sorted(root.glob("*/log_*.txt")))
      assert not failed, f"{failed} failed:\n{logs}"
      (root / "done").touch()
  return root


def test_both_processes_took_part(runs):
  assert "process 0 of 2: rows 0:4 done" in (runs / "two" / "log_0.txt").read_text()
  assert "process 1 of 2: rows 4:8 done" in (runs / "two" / "log_1.txt").read_text()


def test_two_processes_train_like_one(runs):
  root = runs
  with np.load(root / "reference" / "params.npz") as ref, np.load(root / "two" / "params.npz") as two:
    assert set(ref) == set(two)
    diff = max(float(np.abs(ref[k] - two[k]).max()) for k in ref)
  print(f"params after the steps, two processes vs one: max abs diff {diff:.2e}")
  assert diff <= 1e-5


def test_two_processes_export_the_model_and_the_sample_grid(runs):
  _, params, _ = checkpoints.load(runs / "two" / "model")
  with np.load(runs / "two" / "params.npz") as gathered:
    for path, value in jax.tree_util.tree_flatten_with_path(params)[0]:
      np.testing.assert_array_equal(value, gathered[jax.tree_util.keystr(path)])
  grids = [np.load(runs / "two" / f"grid_{i}.npy") for i in range(2)]
  ref = np.load(runs / "reference" / "grid_0.npy")
  np.testing.assert_array_equal(grids[0], grids[1])  # every process holds the whole grid
  diff = int(np.abs(grids[0].astype(int) - ref).max())
  print(f"sample grid, two processes vs one: max abs diff {diff} (uint8)")
  assert grids[0].shape == ref.shape == (2 * 10, 4 * 10, 3) and ref.std() > 10 and diff <= 1


def test_two_processes_sample_like_one_without_collisions(runs):
  root = runs
  # One file per block of rows (data x fsdp = 4 blocks of 2), each written by exactly one device.
  parts = sorted(p.name for p in (root / "two" / "samples" / "parts").iterdir())
  assert parts == [writer.part_path(pathlib.Path(), 0, start, TAG).name for start in (0, 2, 4, 6)]
  ref, ref_labels = writer.merge_parts(root / "reference" / "samples", 8, TAG)
  two, two_labels = writer.merge_parts(root / "two" / "samples", 8, TAG)
  np.testing.assert_array_equal(two_labels, ref_labels)
  diff = float(np.abs(two - ref).max())
  print(f"samples, two processes vs one: max abs diff {diff:.2e}")
  assert two.shape == (8, 8, 8, 4) and ref.std() > 0.1 and diff <= 1e-5


def test_local_launcher_joins_the_processes(tmp_path):
  script = ("from nag_jax.sharding import multihost; multihost.initialize(timeout_s=60); import jax; "
            "import jax.numpy as jnp; from jax.experimental import multihost_utils as mu; "
            "print('sum', int(mu.process_allgather(jnp.asarray(jax.process_index() + 1)).sum()), "
            "'of', jax.process_count())")
  launcher = pathlib.Path(__file__).parents[1] / "launch" / "local_multiprocess.sh"
  env = {**os.environ, "NUM_PROCESSES": "2", "DEVICES": "cpu:1", "LOG_DIR": str(tmp_path),
         "PORT": str(free_port())}
  out = subprocess.run(["bash", str(launcher), sys.executable, "-c", script], env=env, capture_output=True,
                       text=True, timeout=300, check=False)
  assert out.returncode == 0, out.stderr[-3000:] + (tmp_path / "process_1.log").read_text()[-3000:]
  assert "sum 3 of 2" in out.stdout  # process 0 saw both processes' values
  assert "sum 3 of 2" in (tmp_path / "process_1.log").read_text()
