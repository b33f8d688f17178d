"""Mesh construction, the logical rules, optimizer-state shardings, multi-process helpers and the dry run."""
import os
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest
from jax.sharding import AbstractMesh, AxisType, PartitionSpec as P

from nag_jax import sharding
from nag_jax.models import DiT, ModelConfig, get_model_config
from nag_jax.models.dit import dummy_inputs
from nag_jax.sharding import multihost
from nag_jax.sharding.mesh import AXES
from nag_jax.training import get_base_config

TINY = ModelConfig(input_size=8, patch_size=2, hidden_size=64, depth=1, num_heads=4, num_classes=10)


def abstract_mesh(data=1, fsdp=1, tensor=1):
  return AbstractMesh((data, fsdp, tensor), AXES, axis_types=(AxisType.Auto,) * 3)


@pytest.fixture(scope="module")
def boxed():
  return jax.eval_shape(DiT(TINY).init, jax.random.key(0), *dummy_inputs(TINY))["params"]


def test_minus_one_fills_the_remaining_devices():
  assert sharding.resolve_shape({"data": 2, "fsdp": -1}, 8) == {"data": 2, "fsdp": 4, "tensor": 1}
  assert sharding.resolve_shape({"data": -1, "dcn": {"data": 2}}, 8) == {"data": 8, "fsdp": 1, "tensor": 1}


@pytest.mark.parametrize("shape,message", [
    ({"data": 3}, "does not divide the 8 devices"),
    ({"data": 3, "fsdp": -1}, "does not divide the 8 devices"),
    ({"data": 2, "fsdp": 2}, "has 4 devices, but 8 are available"),
    ({"data": -1, "fsdp": -1}, "at most one may be -1"),
    ({"model": 2}, "unknown mesh axes ['model']"),
])
def test_bad_mesh_is_one_clear_error(shape, message):
  with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
    sharding.resolve_shape(shape, 8)


def test_mesh_has_auto_axes_and_dcn_needs_as_many_processes():
  mesh = sharding.make_mesh(get_base_config().mesh.to_dict())  # the configs' default, dcn entry included
  assert mesh.axis_names == AXES and mesh.shape["data"] == jax.device_count()
  assert all(t == AxisType.Auto for t in mesh.axis_types)
  with pytest.raises(ValueError, match="needs 2 processes, but the devices span 1"):
    sharding.make_mesh({"data": -1, "dcn": {"data": 2}}, devices=jax.devices()[:1] * 2)
  with pytest.raises(ValueError, match="does not divide the mesh"):
    sharding.make_mesh({"data": 1, "dcn": {"data": 2}})


def test_params_follow_the_rules(boxed):
  specs = jax.tree.map(lambda s: s.spec, sharding.logical_shardings(boxed, abstract_mesh(2, 2, 2)))
  block = specs["blocks_0"]
  assert block["fc1"]["kernel"] == P("fsdp", "tensor") and block["fc2"]["kernel"] == P("tensor", "fsdp")
  assert block["attn"]["qkv"]["kernel"] == P("fsdp", "tensor")
  # 2*2*8 = 32 output features ('patch_out') and the 11-row label table ('vocab') are not split.
  assert specs["final_layer"]["linear"]["kernel"] == P("fsdp", None)
  assert specs["y_embedder"]["embedding_table"] == P(None, "fsdp")


def test_axes_that_do_not_divide_a_dimension_are_dropped(boxed):
  specs = jax.tree.map(lambda s: s.spec, sharding.logical_shardings(boxed, abstract_mesh(fsdp=3)))
  assert specs["blocks_0"]["fc1"]["kernel"] == P(None, "tensor")  # 64 features do not split in 3


def test_optimizer_state_follows_the_params(boxed):
  params = nn.meta.unbox(boxed)
  param_shardings = sharding.logical_shardings(boxed, abstract_mesh(2, 2, 2))
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-4))
  opt = sharding.optimizer_shardings(tx, params, param_shardings)
  adam = opt[1][0]
  assert jax.tree.structure(opt) == jax.tree.structure(jax.eval_shape(tx.init, params))
  assert adam.mu == param_shardings and adam.nu == param_shardings
  assert adam.count.spec == P()


def test_training_state_uses_the_same_optimizer_shardings(boxed):
  from nag_jax.training import create_optimizer, get_base_config, init_state  # pylint: disable=import-outside-toplevel
  config = get_base_config()
  config.model.update(TINY.to_dict())
  config.optimizer.grad_clip_norm = 1.0
  mesh = abstract_mesh(2, 2, 2)
  _, abstract, _ = init_state.state_initializer(config, TINY, mesh)
  tx, _ = create_optimizer(config.optimizer, config.num_train_steps)
  expected = sharding.optimizer_shardings(tx, nn.meta.unbox(boxed), sharding.logical_shardings(boxed, mesh))
  assert jax.tree.map(lambda s: s.sharding, abstract.opt_state) == expected


def test_bytes_per_device_counts_shards(boxed):
  params = nn.meta.unbox(boxed)
  total = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))
  one = sharding.bytes_per_device(sharding.with_shardings(params, sharding.logical_shardings(boxed, abstract_mesh())))
  four = sharding.bytes_per_device(sharding.with_shardings(
      params, sharding.logical_shardings(boxed, abstract_mesh(fsdp=4))))
  assert one == total and total / 4 <= four < total / 2


def test_constrain_is_a_no_op_without_a_mesh():
  x = jax.numpy.ones((4, 3))
  assert sharding.constrain(x, "batch", "act_embed") is x


def test_batch_that_does_not_split_over_the_data_axes_is_one_clear_error():
  run = sharding.shard_sampler(lambda *a, **k: None, abstract_mesh(2, 2), None)
  with pytest.raises(ValueError, match=r"batch 6 is not divisible by the 4 devices of the batch axes"):
    run(None, jax.random.key(0), np.zeros(6, np.int32))


def test_single_process_needs_no_distributed_start():
  assert multihost.initialize(environ={}) is False
  assert multihost.initialize(environ={"NAG_NUM_PROCESSES": "1"}) is False


@pytest.mark.parametrize("environ,message", [
    ({"NAG_COORDINATOR_ADDRESS": "10.0.0.1", "NAG_NUM_PROCESSES": "2", "NAG_PROCESS_ID": "0"}, "host:port"),
    ({"NAG_COORDINATOR_ADDRESS": "10.0.0.1:1234", "NAG_NUM_PROCESSES": "2"},
     "needs NAG_NUM_PROCESSES and NAG_PROCESS_ID"),
    ({"NAG_COORDINATOR_ADDRESS": "10.0.0.1:1234", "NAG_NUM_PROCESSES": "2", "NAG_PROCESS_ID": "2"},
     r"NAG_PROCESS_ID must be in \[0, NAG_NUM_PROCESSES\), got 2 of 2"),
    ({"NAG_NUM_PROCESSES": "two"}, "NAG_NUM_PROCESSES must be an integer"),
    ({"NAG_NUM_PROCESSES": "2", "NAG_PROCESS_ID": "0"}, "NAG_NUM_PROCESSES=2 but no coordinator"),
    ({"NAG_DISTRIBUTED": "off", "SLURM_NTASKS": "4", "SLURM_PROCID": "1"}, "names 4 processes"),
    ({"SLURM_NTASKS": "2", "SLURM_PROCID": "1", "SLURM_LOCALID": "1"}, "say which GPUs this process drives"),
])
def test_bad_distributed_setup_is_one_clear_error(environ, message):
  with pytest.raises(ValueError, match=message):
    multihost.initialize(environ=environ)


SLURM = {"SLURM_JOB_ID": "4242", "SLURM_STEP_NODELIST": "gpu[07-08]", "SLURM_NTASKS": "16", "SLURM_PROCID": "11",
         "SLURM_LOCALID": "3", "SLURM_STEP_NUM_NODES": "2"}


@pytest.fixture
def recorded_initialize(monkeypatch):
  """jax.distributed.initialize replaced by a recorder (the process count check sees what it was told)."""
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
  monkeypatch.setattr(multihost, "check_process_count", lambda n: calls.append({"checked_count": n}))
  return calls


@pytest.mark.parametrize("extra, devices", [
    ({"CUDA_VISIBLE_DEVICES": "3"}, [0]),  # one process per GPU: it drives the one GPU it sees
    ({"CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7"}, list(range(8))),  # one process per node: all eight
    ({"SLURM_GPUS_ON_NODE": "4"}, [0, 1, 2, 3]),
    ({"NAG_LOCAL_DEVICE_IDS": "2,3", "CUDA_VISIBLE_DEVICES": "0,1,2,3"}, [2, 3]),
])
def test_slurm_start_passes_the_local_devices_explicitly(recorded_initialize, monkeypatch, extra, devices):
  environ = {**SLURM, **extra}
  assert multihost.initialize(environ=environ) is True
  kwargs, check = recorded_initialize
  assert kwargs["local_device_ids"] == devices and "coordinator_address" not in kwargs
  assert check == {"checked_count": 16}
  # What JAX's own SLURM detection makes of those arguments (its real code, under the same environment):
  # it fills the coordinator, count and id, and keeps our devices instead of [SLURM_LOCALID] = [3].
  from jax._src import clusters  # pylint: disable=import-outside-toplevel
  for k in list(os.environ):
    if k.startswith("SLURM_") or k in ("CUDA_VISIBLE_DEVICES", "OMPI_MCA_orte_hnp_uri"):
      monkeypatch.delenv(k)
  for k, v in environ.items():
    monkeypatch.setenv(k, v)
  address, count, index, local = clusters.ClusterEnv.auto_detect_unset_distributed_params(
      None, None, None, kwargs["local_device_ids"], None, 300)
  assert (address.split(":")[0], count, index, list(local)) == ("gpu07", 16, 11, devices)
  # ... and without them it would have kept only [SLURM_LOCALID]: the bug the explicit devices avoid.
  assert list(clusters.ClusterEnv.auto_detect_unset_distributed_params(None, None, None, None, None, 300)[3]) == [3]


def test_launcher_environment_joins_explicitly(recorded_initialize):
  environ = {"NAG_COORDINATOR_ADDRESS": "10.0.0.1:1234", "NAG_NUM_PROCESSES": "4", "NAG_PROCESS_ID": "2",
             **SLURM, "CUDA_VISIBLE_DEVICES": "0,1"}
  assert multihost.initialize(environ=environ) is True
  kwargs, check = recorded_initialize
  assert kwargs == {"coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 2,
                    "local_device_ids": [0, 1], "cluster_detection_method": "deactivate",
                    "initialization_timeout": 300}
  assert check == {"checked_count": 4}


def test_tpu_pod_start_uses_jax_detection(recorded_initialize):
  assert multihost.initialize(environ={"NAG_DISTRIBUTED": "auto", "NAG_NUM_PROCESSES": "8"}) is True
  assert recorded_initialize == [{"initialization_timeout": 300}, {"checked_count": 8}]


def test_process_count_mismatch_is_one_clear_error():
  multihost.check_process_count(1)
  with pytest.raises(ValueError, match="the environment names 2 processes, but JAX joined 1"):
    multihost.check_process_count(2)


def test_one_process_holds_and_writes_every_row():
  mesh = sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])
  assert multihost.process_rows(mesh, 8) == slice(0, 8)
  x = jax.device_put(np.arange(8.0), sharding.batch_sharding(mesh))
  [(rows, data)] = multihost.owned_shards(x)
  assert rows.indices(8)[:2] == (0, 8) and np.array_equal(data, np.arange(8.0))


def _dry_run(*args):
  return subprocess.run([sys.executable, "-m", "nag_jax.dry_run", *args], capture_output=True, text=True,
                        timeout=300, check=False)


def test_dry_run_reports_bytes_and_the_compiled_estimate():
  out = _dry_run("--model", "DiT-S/8", "--depth", "1", "--image-size", "64", "--devices", "4", "--mesh",
                 "fsdp=-1", "--batch", "8", "--device-memory-gb", "1")
  assert out.returncode == 0, out.stderr[-3000:]
  lines = out.stdout.splitlines()
  assert "4 devices, mesh {'data': 1, 'fsdp': 4, 'tensor': 1}" in lines[0]
  cfg = get_model_config("DiT-S/8", image_size=64).replace(depth=1)
  total = sum(x.size * 4 for x in jax.tree.leaves(jax.eval_shape(DiT(cfg).init, jax.random.key(0),
                                                                 *dummy_inputs(cfg)))) / 2**20
  per_device = float(lines[1].split("params ")[1].split(" MiB")[0])
  assert total / 4 - 0.1 <= per_device <= total / 4 * 1.05  # FSDP splits all but a few small leaves
  assert "compiled train step (cpu)" in out.stdout and ": fits (" in out.stdout.splitlines()[-1]


@pytest.mark.parametrize("args,message", [
    (("--devices", "8", "--mesh", "data=3"), "does not divide the 8 devices"),
    (("--devices", "4", "--mesh", "fsdp=-1", "--batch", "6"), "batch 6 is not divisible by the 4 devices"),
])
def test_dry_run_bad_input_is_one_clear_error(args, message):
  out = _dry_run("--model", "DiT-S/8", "--image-size", "64", "--no-compile", *args)
  assert out.returncode == 2 and message in out.stderr
