"""Multi-process runs as users run them: `nag_jax.main` and `nag_jax.sample` through `launch/local_multiprocess.sh`.

Two processes of two CPU devices each against one process of four devices: every training step's global
batch (digest) is the same, the exported EMA the same to float32 rounding, and the workdir has one events
file and one config.json. A SIGKILL of process 0 (the coordinator) or of process 1 stops both, with no
process left behind, and the relaunch resumes to the same result; a SIGTERM to the launcher makes both save
at one step and stop with code 75, and one process of four devices resumes and finishes the run (another
process count: the same batches and result). Sampling: the same latents as one
process, each row written once, and a killed run resumed to the same file.
"""
import os
import pathlib
import re
import shlex
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from nag_jax import checkpoints
from tests.session_helpers import free_port, once_per_session

REPO = pathlib.Path(__file__).resolve().parents[1]
LAUNCHER = REPO / "launch" / "local_multiprocess.sh"
STEPS = 24
TRAIN = ["-m", "nag_jax.main", "--config", "configs/tiny_digits.py", f"--config.num_train_steps={STEPS}",
         "--config.checkpoint.every_steps=6", "--config.log_every_steps=2", "--config.sample.every_steps=0",
         "--config.log_batch_digests=True", "--config.checkpoint.async_save=False"]


def train_args(workdir: pathlib.Path) -> list[str]:
  return [*TRAIN, f"--workdir={workdir}"]


def single(workdir: pathlib.Path, args: list[str] | None = None) -> subprocess.CompletedProcess:
  """One process of four CPU devices, without the launcher (default: training into workdir)."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  return subprocess.run([sys.executable, *(args or train_args(workdir))], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=600, check=False)


def launch(workdir: pathlib.Path, args: list[str] | None = None) -> subprocess.Popen:
  """Two processes of two CPU devices each, through the launcher (process 0's output to workdir.log)."""
  env = {**os.environ, "NUM_PROCESSES": "2", "DEVICES": "cpu:2", "LOG_DIR": f"{workdir}.logs",
         "PORT": str(free_port())}
  log = open(f"{workdir}.log", "a", encoding="utf-8")  # pylint: disable=consider-using-with
  return subprocess.Popen(["bash", str(LAUNCHER), sys.executable, *(args or train_args(workdir))], cwd=REPO,
                          env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def logs(workdir: pathlib.Path) -> str:
  parts = [pathlib.Path(f"{workdir}.log")] + sorted(pathlib.Path(f"{workdir}.logs").glob("*.log"))
  return "\n".join(f"--- {p}\n{p.read_text()[-3000:]}" for p in parts if p.exists())


def children(launcher: subprocess.Popen) -> dict[int, int]:
  """{NAG_PROCESS_ID: pid} of the launcher's processes."""
  out = {}
  for pid in subprocess.run(["pgrep", "-P", str(launcher.pid)], capture_output=True, text=True,
                            check=False).stdout.split():
    try:
      environ = pathlib.Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
      continue
    for item in environ:
      if item.startswith(b"NAG_PROCESS_ID="):
        out[int(item.split(b"=")[1])] = int(pid)
  return out


def alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  return pathlib.Path(f"/proc/{pid}/stat").exists() and " Z " not in pathlib.Path(f"/proc/{pid}/stat").read_text()


def wait_for_checkpoint(workdir: pathlib.Path, launcher: subprocess.Popen, timeout: float = 300,
                        marker: str = "checkpoints/6") -> None:
  deadline = time.monotonic() + timeout
  while not list(workdir.glob(marker)):
    assert launcher.poll() is None, logs(workdir)
    assert time.monotonic() < deadline, logs(workdir)
    time.sleep(0.02)


def finish(launcher: subprocess.Popen, workdir: pathlib.Path) -> int:
  try:
    return launcher.wait(timeout=600)
  except subprocess.TimeoutExpired:
    os.killpg(launcher.pid, signal.SIGKILL)
    raise AssertionError(logs(workdir))


def digests(workdir: pathlib.Path) -> list[str]:
  return (workdir / "batch_digests.txt").read_text().splitlines()


def exported(workdir: pathlib.Path) -> dict:
  _, params, _ = checkpoints.load(workdir / "model")
  import jax  # pylint: disable=import-outside-toplevel
  return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}


@pytest.fixture(scope="session")
def reference(tmp_path_factory):
  """The one-process run (once per session, also under xdist)."""
  with once_per_session(tmp_path_factory, "launcher") as root:
    if not (root / "one" / "model").is_dir():
      out = single(root / "one")
      assert out.returncode == 0, out.stderr[-3000:]
      (root / "one.log").write_text(out.stderr + out.stdout)
  return {"digests": digests(root / "one"), "params": exported(root / "one"),
          "losses": losses((root / "one.log").read_text())}


def losses(log: str) -> dict[int, float]:
  """{step: the loss as logged (6 significant digits)} of a training log."""
  return {int(step): float(loss) for step, loss in re.findall(r"\[(\d+)\] .*train/loss=([\d.]+)", log)}


def assert_like_the_reference(workdir: pathlib.Path, reference: dict) -> None:
  assert digests(workdir) == reference["digests"] and len(reference["digests"]) == STEPS
  two = exported(workdir)
  assert two.keys() == reference["params"].keys()
  diff = max(float(np.abs(two[k] - reference["params"][k]).max()) for k in two)
  scale = max(float(np.abs(v).max()) for v in two.values())
  print(f"exported EMA, two processes vs one: max abs diff {diff:.2e} (max |param| {scale:.2f})")
  assert diff <= 1e-5 * scale


def test_two_processes_train_like_one(reference, tmp_path):
  work = tmp_path / "two"
  assert finish(launch(work), work) == 0, logs(work)
  assert_like_the_reference(work, reference)
  names = sorted(p.name for p in work.iterdir())
  assert [n for n in names if n.startswith("events.out.tfevents")].__len__() == 1, names
  assert sorted(n for n in names if not n.startswith("events.out")) == [
      "batch_digests.txt", "checkpoints", "config.json", "model"]
  assert sorted(p.name for p in (work / "checkpoints").iterdir()) == ["12", "18", "24"]  # keep=3


def test_the_splash_kernel_in_shard_map_across_two_processes_trains_like_one(reference, tmp_path):
  """attention "splash" (run by the Pallas interpreter on CPU) inside shard_map over 2 processes x 2 devices: the
  same batches, losses and exported weights as the one-process run with CPU's default attention."""
  work = tmp_path / "splash"
  assert finish(launch(work, [*train_args(work), "--config.model.attention=splash"]), work) == 0, logs(work)
  assert_like_the_reference(work, reference)
  got = losses(pathlib.Path(f"{work}.log").read_text())
  assert len(got) == STEPS // 2 and got.keys() == reference["losses"].keys(), (got, reference["losses"])
  assert all(abs(got[k] - v) <= 1e-5 * max(1.0, abs(v)) for k, v in reference["losses"].items()), (got, reference)


@pytest.mark.parametrize("victim", [0, 1])
def test_a_killed_process_stops_both_and_the_relaunch_resumes(reference, tmp_path, victim):
  work = tmp_path / f"kill{victim}"
  launcher = launch(work)
  wait_for_checkpoint(work, launcher)
  pids = children(launcher)
  assert sorted(pids) == [0, 1], logs(work)
  os.kill(pids[victim], signal.SIGKILL)
  code = finish(launcher, work)
  assert code == 128 + signal.SIGKILL, logs(work)
  assert not any(alive(pid) for pid in pids.values())  # none left behind
  assert len(digests(work)) < STEPS  # it stopped before the end
  assert finish(launch(work), work) == 0, logs(work)
  assert_like_the_reference(work, reference)


def test_sigterm_saves_on_both_and_one_process_finishes_the_run(reference, tmp_path):
  work = tmp_path / "term"
  launcher = launch(work)
  wait_for_checkpoint(work, launcher)
  os.kill(launcher.pid, signal.SIGTERM)
  assert finish(launcher, work) == 75, logs(work)
  log = logs(work)
  assert "preempted (SIGTERM): saved a checkpoint at step" in log
  saved = sorted(int(p.name) for p in (work / "checkpoints").iterdir() if p.name.isdigit())
  assert saved[-1] < STEPS and not (work / "model").exists()
  out = single(work)  # resumed by ONE process of four devices: the data stream restarts at the step
  assert out.returncode == 0, out.stderr[-3000:]
  assert_like_the_reference(work, reference)


def test_sigterm_alone_saves_and_the_rerun_finishes(reference, tmp_path):
  """One process (no JAX preemption service): the command's own SIGTERM handler saves and stops."""
  work = tmp_path / "alone"
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  with open(tmp_path / "alone.log", "w", encoding="utf-8") as log:
    proc = subprocess.Popen([sys.executable, *TRAIN, f"--workdir={work}"], cwd=REPO, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
  wait_for_checkpoint(work, proc)
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=300) == 75
  assert "stopped: preempted (SIGTERM): saved a checkpoint at step" in (tmp_path / "alone.log").read_text()
  assert not (work / "model").exists()
  out = single(work)
  assert out.returncode == 0, out.stderr[-3000:]
  assert_like_the_reference(work, reference)


SAMPLE = ["-m", "nag_jax.sample", "--config", "configs/sample_dit.py:nag_cfg", "--config.num_samples=24",
          "--config.batch_size=4", "--config.sampler.num_steps=50", "--config.mesh.data=-1", "--config.grid_size=8"]


@pytest.fixture(scope="module")
def tiny_model(fixtures_dir, tmp_path_factory):
  from nag_jax import convert  # pylint: disable=import-outside-toplevel
  root = tmp_path_factory.mktemp("model")
  assert convert.main(["--src", str(fixtures_dir / "dit_official" / "model.pt"), "--dst", str(root / "dit"),
                       "--family", "dit", "--num-heads", "4"]) == 0
  return root / "dit"


def sample_args(model: pathlib.Path, out: pathlib.Path) -> list[str]:
  return [*SAMPLE, f"--config.checkpoint={model}", f"--config.out_dir={out}"]


def test_two_processes_sample_like_one_and_a_killed_run_resumes(tiny_model, tmp_path):
  one = single(tmp_path / "one", sample_args(tiny_model, tmp_path / "one"))
  assert one.returncode == 0, one.stderr[-3000:]
  with np.load(tmp_path / "one" / "latents.npz") as f:
    ref, ref_labels = f["latents"], f["labels"]
  assert ref.shape == (24, 8, 8, 4) and ref.std() > 0.1

  out = tmp_path / "two"
  launcher = launch(out, sample_args(tiny_model, out))
  wait_for_checkpoint(out, launcher, marker="parts/batch000001_*.npz")  # batch 1 written, 5 to go
  os.kill(children(launcher)[0], signal.SIGKILL)
  assert finish(launcher, out) == 128 + signal.SIGKILL, logs(out)
  assert not (out / "latents.npz").exists()
  assert finish(launch(out, sample_args(tiny_model, out)), out) == 0, logs(out)
  with np.load(out / "latents.npz") as f:
    two, two_labels = f["latents"], f["labels"]
  np.testing.assert_array_equal(two_labels, ref_labels)
  diff = float(np.abs(two - ref).max())
  print(f"samples, two processes (killed and resumed) vs one: max abs diff {diff:.2e}")
  assert diff <= 1e-5
  # Each row written once, by the one device that holds it: 6 batches x 4 devices of 1 row, over 2 processes.
  starts = sorted(int(p.name.split("_row")[1][:8]) for p in (out / "parts").glob("batch*_row*.npz"))
  assert starts == list(range(24))


@pytest.fixture(scope="module")
def images_and_vae(tmp_path_factory):
  """384 images in 3 class folders and a tiny VAE."""
  import jax  # pylint: disable=import-outside-toplevel
  from PIL import Image  # pylint: disable=import-outside-toplevel
  from nag_jax.checkpoints.vae_convert import save_vae  # pylint: disable=import-outside-toplevel
  from nag_jax.models.vae import AutoencoderKL, VAEConfig, dummy_images  # pylint: disable=import-outside-toplevel
  root = tmp_path_factory.mktemp("extract")
  config = VAEConfig(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4, latent_channels=4,
                     down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
  params = jax.jit(AutoencoderKL(config).init)(jax.random.key(0), dummy_images(config))["params"]
  save_vae(root / "vae", params, config)
  rng = np.random.default_rng(0)
  for i in range(384):
    folder = root / "imgs" / f"class{i % 3}"
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (20, 24, 3), np.uint8)).save(folder / f"{i}.png")
  return root


def extract_args(root: pathlib.Path, dst: pathlib.Path, batch: int) -> list[str]:
  return ["-m", "nag_jax.extract_latents", "--src", str(root / "imgs"), "--vae", str(root / "vae"), "--dst",
          str(dst), "--image-size", "32", "--batch-size", str(batch), "--records-per-shard", "8", "--seed", "3"]


def records(folder: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
  from nag_jax import data  # pylint: disable=import-outside-toplevel
  source = data.LatentSource(folder)
  return np.stack([source[i]["x"] for i in range(len(source))]), np.array([source[i]["y"] for i in range(len(source))])


def test_extract_latents_on_two_processes_killed_and_resumed_equals_one(images_and_vae, tmp_path):
  root = images_and_vae
  one = single(tmp_path / "one", extract_args(root, tmp_path / "one", batch=8))
  assert one.returncode == 0, one.stderr[-3000:]
  ref, ref_labels = records(tmp_path / "one")
  assert ref.shape == (384, 2, 16, 16, 4) and ref.std() > 0.01

  out = tmp_path / "two"
  staging = tmp_path / ".two.partial"
  launcher = launch(out, extract_args(root, out, batch=4))  # another batch size and device count too
  wait_for_checkpoint(tmp_path, launcher, marker=".two.partial/latents-00001.array_record")  # process 1's first
  os.kill(children(launcher)[1], signal.SIGKILL)
  assert finish(launcher, out) == 128 + signal.SIGKILL, logs(out)
  kept = {p.name: p.stat().st_mtime_ns for p in staging.glob("latents-*.array_record")}
  assert 0 < len(kept) < 48 and not out.exists()
  assert finish(launch(out, extract_args(root, out, batch=4)), out) == 0, logs(out)
  assert not staging.exists()
  two, two_labels = records(out)
  np.testing.assert_array_equal(two_labels, ref_labels)
  diff = float(np.abs(two - ref).max())
  print(f"latents, two processes (killed and resumed, batch 4) vs one (batch 8): max abs diff {diff:.2e}; "
        f"{len(kept)} of 48 shards kept")
  assert diff <= 1e-5


def test_a_workdir_the_processes_do_not_share_is_refused(tmp_path):
  """Process 1 runs in a private mount namespace with its own empty tmpfs over the workdir's parent: the same
  path, other storage, as on two hosts with local disks. Both processes refuse in one line; nothing is left."""
  parent = tmp_path / "disk"
  parent.mkdir()
  work = parent / "run"
  command = shlex.join([sys.executable, *train_args(work)])
  wrapper = (f'if [ "$NAG_PROCESS_ID" = 1 ]; then exec unshare -rm sh -c '
             f'{shlex.quote(f"mount -t tmpfs none {shlex.quote(str(parent))} && exec {command}")}; '
             f'else exec {command}; fi')
  env = {**os.environ, "NUM_PROCESSES": "2", "DEVICES": "cpu:2", "LOG_DIR": str(tmp_path / "logs"),
         "PORT": str(free_port())}
  out = subprocess.run(["bash", str(LAUNCHER), "sh", "-c", wrapper], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=600, check=False)
  logs_text = out.stderr + (tmp_path / "logs" / "process_1.log").read_text()
  assert out.returncode == 2, logs_text[-3000:]
  for text in (out.stderr, (tmp_path / "logs" / "process_1.log").read_text()):
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert errors == [f"error: --workdir {work} is not shared by the 2 processes (process 1 cannot see what "
                      "process 0 writes there): use a filesystem every host mounts, or gs://"], text[-3000:]
  assert sorted(os.listdir(parent)) == []  # process 0 removed the workdir it created for the check
