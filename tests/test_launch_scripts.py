"""launch/tpu_pod.sh and launch/slurm_gpu.sh against recording fakes of gcloud, srun and scontrol.

The fake gcloud keeps a slice of 4 workers, each a home folder: `scp` copies into every home, `ssh --command`
runs the command in each home (with `python3` and `python` recording what they are asked, `hostname` naming
the worker). So the tests see what runs on which worker, with which environment, what is installed, and
that nothing outside the launcher's own code copy is deleted. The fake srun runs each task with SLURM's
variables; the task's command prints the arguments nag_jax's start-up would give `jax.distributed.initialize`.
"""
import json
import os
import pathlib
import subprocess
import sys
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
WORKERS = 4

FAKE_GCLOUD = r'''#!/usr/bin/env python3
"""Fake gcloud: records every call; a TPU slice of WORKERS homes under $FAKE_ROOT."""
import json, os, pathlib, shutil, subprocess, sys
root = pathlib.Path(os.environ["FAKE_ROOT"])
args = sys.argv[1:]
with open(root / "gcloud.log", "a") as log:
  log.write(json.dumps(args) + "\n")
state = root / "state"
homes = [root / f"worker{w}" for w in range(WORKERS)]
verb = args[3] if args[:3] == ["compute", "tpus", "tpu-vm"] else None
opt = lambda name: args[args.index(name) + 1] if name in args else None
workers = lambda: homes if opt("--worker") == "all" or "--worker=all" in args else [homes[0]]
if verb == "describe":
  if not state.exists():
    sys.exit(1)
  if "--format=json" in args:
    print(json.dumps({"state": state.read_text(), "networkEndpoints": [{"ipAddress": f"10.0.0.{w}"} for w in range(WORKERS)]}))
  else:
    print(state.read_text())
elif verb == "create":
  state.write_text("READY")
  for h in homes:
    h.mkdir(parents=True, exist_ok=True)
elif verb == "delete":
  state.unlink()
elif verb == "scp":
  src, dst = args[4], args[5].split(":", 1)[1]
  for h in workers():
    shutil.copy(src, h / dst)
elif verb == "ssh":
  command = next(a.split("=", 1)[1] for a in args if a.startswith("--command=")) if opt("--command") is None else opt("--command")
  for w, h in enumerate(homes):
    if h not in workers():
      continue
    env = {**os.environ, "HOME": str(h), "PATH": f"{root / 'workerbin'}:{os.environ['PATH']}", "FAKE_WORKER": str(w)}
    subprocess.run(["bash", "-c", command], env=env, cwd=h, check=True)
else:
  sys.exit(f"fake gcloud: unexpected {args}")
'''.replace("WORKERS", str(WORKERS))

# On a worker: python3 records pip installs; python records the job (argv, NAG_* environment, cwd).
FAKE_PYTHON3 = r'''#!/usr/bin/env bash
echo "$*" >> "$HOME/pip.log"
'''
FAKE_PYTHON = r'''#!/usr/bin/env bash
{ echo "argv: $*"; echo "cwd: $PWD"; env | grep '^NAG_' | sort; ls configs/tiny_digits.py; } >> "$HOME/job.log"
exit "${FAKE_EXIT:-0}"
'''
FAKE_HOSTNAME = '#!/usr/bin/env bash\necho "worker$FAKE_WORKER"\n'


def _write(path: pathlib.Path, text: str) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text)
  path.chmod(0o755)


@pytest.fixture
def fake_cloud(tmp_path):
  _write(tmp_path / "bin" / "gcloud", FAKE_GCLOUD)
  for name, text in (("python3", FAKE_PYTHON3), ("python", FAKE_PYTHON), ("hostname", FAKE_HOSTNAME)):
    _write(tmp_path / "workerbin" / name, text)
  return tmp_path


def tpu_pod(root: pathlib.Path, *command: str, **env) -> subprocess.CompletedProcess:
  environ = {**os.environ, "PATH": f"{root / 'bin'}:{os.environ['PATH']}", "FAKE_ROOT": str(root),
             "TPU_NAME": "nag-test", "ZONE": "us-east5-a", "JOB": "job-1", **env}
  return subprocess.run(["bash", str(REPO / "launch" / "tpu_pod.sh"), *command], env=environ, capture_output=True,
                        text=True, timeout=120, check=False)


def gcloud_calls(root: pathlib.Path) -> list[list[str]]:
  return [json.loads(line) for line in (root / "gcloud.log").read_text().splitlines()]


def wait_for(path: pathlib.Path, timeout: float = 60) -> str:
  deadline = time.monotonic() + timeout
  while not path.exists():
    assert time.monotonic() < deadline, f"{path} never appeared"
    time.sleep(0.05)
  time.sleep(0.1)
  return path.read_text()


def test_tpu_pod_creates_installs_pinned_runs_detached_and_deletes_nothing(fake_cloud):
  root = fake_cloud
  out = tpu_pod(root, "python", "-m", "nag_jax.main", "--config", "configs/tiny_digits.py", "--workdir", "runs/x",
                ACCELERATOR="v5p-32", SPOT="1")
  assert out.returncode == 0, out.stderr
  create = next(c for c in gcloud_calls(root) if c[3] == "create")
  assert create[create.index("--accelerator-type") + 1] == "v5p-32"
  assert create[create.index("--version") + 1] == "v2-alpha-tpuv5" and "--spot" in create
  assert "follow:" in out.stdout and "stop:" in out.stdout and "tail -f ~/nag_jax/logs/job-1.*.log" in out.stdout
  for w in range(WORKERS):
    home = root / f"worker{w}"
    assert wait_for(home / "nag_jax" / "logs" / f"job-1.worker{w}.exit").strip() == "0"
    pip = (home / "pip.log").read_text()
    assert "-m pip install -q -c constraints.txt -e .[tf,gcs,tpu]" in pip  # pinned by the suite's versions
    assert (home / "nag_jax" / "code" / "constraints.txt").read_text() == (REPO / "constraints.txt").read_text()
    job = (home / "job.log").read_text().splitlines()
    assert job[0] == "argv: -m nag_jax.main --config configs/tiny_digits.py --workdir runs/x"
    assert job[1] == f"cwd: {home / 'nag_jax'}"  # relative paths land outside the code copy
    assert "NAG_DISTRIBUTED=auto" in job and f"NAG_NUM_PROCESSES={WORKERS}" in job
    assert "configs/tiny_digits.py" in job  # configs/ resolves to the code's
    assert (home / "nag_jax" / "logs" / f"job-1.worker{w}.log").exists()

  # A second launch (new code, same slice): the user's files survive, only the code copy is replaced.
  for w in range(WORKERS):
    home = root / f"worker{w}"
    (home / "nag_jax" / "runs" / "x").mkdir(parents=True)
    (home / "nag_jax" / "runs" / "x" / "checkpoint").write_text("keep")
    (home / "notes.txt").write_text("keep")
    (home / "nag_jax" / "code" / "stale_file.py").write_text("old code")
  out = tpu_pod(root, "python", "-m", "nag_jax.sample", "--config", "configs/sample_dit.py", ACCELERATOR="v5p-32",
                JOB="job-2")
  assert out.returncode == 0, out.stderr
  assert sum(c[3] == "create" for c in gcloud_calls(root)) == 1  # the slice existed
  for w in range(WORKERS):
    home = root / f"worker{w}"
    wait_for(home / "nag_jax" / "logs" / f"job-2.worker{w}.exit")
    assert (home / "nag_jax" / "runs" / "x" / "checkpoint").read_text() == "keep"
    assert (home / "notes.txt").read_text() == "keep"
    assert not (home / "nag_jax" / "code" / "stale_file.py").exists()
    assert (home / "nag_jax" / "logs" / "job-1.worker0.log").exists() if w == 0 else True


@pytest.mark.parametrize("accelerator, runtime", [("v4-32", "tpu-ubuntu2204-base"),
                                                  ("v5litepod-64", "v2-alpha-tpuv5-lite"),
                                                  ("v6e-32", "v2-alpha-tpuv6e")])
def test_tpu_pod_picks_the_runtime_of_each_generation(fake_cloud, accelerator, runtime):
  out = tpu_pod(fake_cloud, "python", "-c", "pass", ACCELERATOR=accelerator, SKIP_INSTALL="1")
  assert out.returncode == 0, out.stderr
  create = next(c for c in gcloud_calls(fake_cloud) if c[3] == "create")
  assert create[create.index("--version") + 1] == runtime and "--spot" not in create


def test_tpu_pod_reruns_a_command_that_saved_on_sigterm(fake_cloud):
  """worker_run.sh: exit 75 (saved after SIGTERM) is rerun; the second run's 0 ends the job."""
  counter = fake_cloud / "workerbin" / "python"
  _write(counter, '#!/usr/bin/env bash\nn=$(cat "$HOME/runs" 2>/dev/null || echo 0); echo $((n + 1)) > "$HOME/runs"\n'
                  '[ "$n" -ge 1 ] && exit 0 || exit 75\n')
  out = tpu_pod(fake_cloud, "python", "-m", "nag_jax.main", SKIP_INSTALL="1")  # a new slice: installed anyway
  assert out.returncode == 0, out.stderr
  for w in range(WORKERS):
    home = fake_cloud / f"worker{w}"
    assert wait_for(home / "nag_jax" / "logs" / f"job-1.worker{w}.exit").strip() == "0"
    assert (home / "runs").read_text().strip() == "2"
    assert "resuming it" in (home / "nag_jax" / "logs" / f"job-1.worker{w}.log").read_text()


def test_tpu_pod_refuses_bad_settings(fake_cloud):
  out = tpu_pod(fake_cloud, "python", "-c", "pass", WORK_DIR="../etc")
  assert out.returncode == 2 and "WORK_DIR must be a plain relative folder name" in out.stderr
  out = tpu_pod(fake_cloud, "python", "-c", "pass", ACCELERATOR="v9-8")
  assert out.returncode == 2 and "unknown ACCELERATOR 'v9-8'" in out.stderr
  assert not (fake_cloud / "gcloud.log").exists()  # nothing was asked of the cloud


FAKE_SRUN = r'''#!/usr/bin/env bash
# Fake srun: runs the job step's SLURM_NTASKS tasks here, one after another, with SLURM's task variables.
echo "$*" > "$FAKE_ROOT/srun.args"
while [[ $1 == --* ]]; do shift; done
per_node=$((SLURM_NTASKS / SLURM_NNODES))
for ((t = 0; t < SLURM_NTASKS; t++)); do
  SLURM_PROCID=$t SLURM_LOCALID=$((t % per_node)) SLURM_NODEID=$((t / per_node)) SLURM_STEP_NODELIST=gpu[07-08] \
    "$@" || exit $?
done
'''
FAKE_SCONTROL = '#!/usr/bin/env bash\n[ "$1 $2" = "show hostnames" ] && printf "gpu07\\ngpu08\\n"\n'
PRINT_ARGS = ("import json, os; from nag_jax.sharding import multihost; "
              "print(json.dumps({'task': os.environ['SLURM_PROCID'], 'cuda': os.environ.get('CUDA_VISIBLE_DEVICES'), "
              "'args': multihost.distributed_args()}))")


@pytest.mark.parametrize("per, tasks_per_node, node_gpus", [("gpu", 4, "4,5,6,7"), ("node", 1, "4,5,6,7"),
                                                            ("gpu", 2, None)])
def test_slurm_tasks_join_explicitly_with_every_gpu_they_see(tmp_path, per, tasks_per_node, node_gpus):
  _write(tmp_path / "bin" / "srun", FAKE_SRUN)
  _write(tmp_path / "bin" / "scontrol", FAKE_SCONTROL)
  ntasks = 2 * tasks_per_node
  env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "NAG_", "CUDA_"))}
  env.update({"PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "FAKE_ROOT": str(tmp_path), "PER": per,
              "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_NTASKS": str(ntasks),
              "SLURM_NNODES": "2"})
  if node_gpus:
    env["CUDA_VISIBLE_DEVICES"] = node_gpus  # what SLURM's gres plugin gives the node's tasks
  out = subprocess.run(["bash", str(REPO / "launch" / "slurm_gpu.sh"), sys.executable, "-c", PRINT_ARGS], env=env,
                       cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  assert (tmp_path / "srun.args").read_text().startswith("--kill-on-bad-exit=1 ")
  tasks = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
  assert [int(t["task"]) for t in tasks] == list(range(ntasks))
  for t in tasks:
    args, local = t["args"], int(t["task"]) % tasks_per_node
    assert args["coordinator_address"] == "gpu07:" + str(20000 + 4242 % 20000)
    assert (args["num_processes"], args["process_id"]) == (ntasks, int(t["task"]))
    assert args["cluster_detection_method"] == "deactivate"  # JAX's SLURM default ([SLURM_LOCALID]) is off
    if per == "gpu":  # one GPU each: the task's entry of the node's GPUs, driven as its device 0
      assert t["cuda"] == (node_gpus.split(",")[local] if node_gpus else str(local))
      assert args["local_device_ids"] == [0]
    else:  # one process per node drives all four
      assert t["cuda"] == node_gpus and args["local_device_ids"] == [0, 1, 2, 3]


def test_tpu_pod_relaunch_recreates_a_preempted_slice_until_the_run_completes(fake_cloud):
  """RELAUNCH=1: the first job's slice is preempted under it (the fake job marks the slice PREEMPTED and its
  worker wrapper dies, as a VM that goes away); the launcher deletes and recreates the slice, reinstalls, starts
  the same job again, and exits with the job's code once worker 0 reports it."""
  _write(fake_cloud / "workerbin" / "python",
         '#!/usr/bin/env bash\nif [ ! -f "$HOME/ran_once" ]; then touch "$HOME/ran_once"; '
         'echo -n PREEMPTED > "$FAKE_ROOT/state"; kill -9 $PPID; exit 1; fi\nexit 0\n')
  out = tpu_pod(fake_cloud, "python", "-m", "nag_jax.main", ACCELERATOR="v5litepod-16", SPOT="1", RELAUNCH="1",
                POLL_SECONDS="1")
  assert out.returncode == 0, out.stdout + out.stderr
  assert "was preempted; recreating it and resuming job-1" in out.stdout and "job-1 ended with code 0" in out.stdout
  verbs = [c[3] for c in gcloud_calls(fake_cloud) if c[:3] == ["compute", "tpus", "tpu-vm"] and c[3] != "describe"]
  assert verbs.count("create") == 2 and verbs.count("delete") == 1
  creates = [c for c in gcloud_calls(fake_cloud) if c[3] == "create"]
  assert all("--spot" in c and c[c.index("--version") + 1] == "v2-alpha-tpuv5-lite" for c in creates)
