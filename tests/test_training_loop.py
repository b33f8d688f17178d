"""The training loop end to end on CPU: the loss falls, kill -9 resumes bit-exactly, NaN and corrupt checkpoints."""
import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from nag_jax import checkpoints
from nag_jax.checkpoints import CheckpointError
from nag_jax.models import DiT
from nag_jax.sharding import make_mesh
from nag_jax.training import ConfigError, create_objective, get_base_config, loop, validate
from nag_jax.training.config_validation import model_config_of
from nag_jax.training.init_state import merge_label_table, state_initializer
from nag_jax.training.input_pipeline import create_source

jax.config.update("jax_threefry_partitionable", True)
REPO = pathlib.Path(__file__).resolve().parents[1]
# Both runs of the kill test use the same (cheaper to compile) XLA flags, so their results are comparable.
FAST_COMPILE = {"XLA_FLAGS": "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"}
DRIVER = """
import sys, jax
jax.config.update("jax_threefry_partitionable", True)
from tests.test_training_loop import tiny_config
from nag_jax.training import loop
loop.train(tiny_config(steps=int(sys.argv[2])), sys.argv[1])
"""


def tiny_config(steps=10, every=1, **kw):
  """A 1-block DiT on the 8x8 digits: a few ms per step on CPU."""
  c = get_base_config()
  c.model.update(dict(family="dit", input_size=8, patch_size=2, in_channels=1, hidden_size=32, depth=1,
                      num_heads=2, num_classes=10))
  c.data.update(dict(kind="digits", image_size=8, flip=False))
  c.num_train_steps, c.global_batch_size, c.ema_decay = steps, 16, 0.9
  c.optimizer.learning_rate = 2e-3
  c.checkpoint.update(dict(every_steps=every, keep=3))
  c.log_every_steps = every
  for k, v in kw.items():
    node = c
    *parents, leaf = k.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = v
  return c


def fixed_loss_fn(config):
  """params -> mean loss on the first 256 digits with fixed draws (the same t, noise and dropout each call)."""
  mc = model_config_of(config)
  obj = create_objective(mc, config.objective)
  source = create_source(config.data)
  x, y = jnp.asarray(source.x[:256]), jnp.asarray(source.y[:256])
  d = obj.draw(jax.random.key(123), x, y)
  model = DiT(mc)
  return jax.jit(lambda p: jnp.mean(obj.losses(lambda q, *a: model.apply({"params": q}, *a), p, x, d)["loss"]))


def test_tiny_model_trains_on_digits_and_its_loss_falls(tmp_path):
  config = tiny_config(steps=80, every=40, **{"ema_decay": 0.0})
  state = loop.train(config, tmp_path)
  # adaLN-Zero: the initial final layer is zero, so the initial loss is that of any params whose final
  # layer is zeroed (the output is exactly 0 whatever the other weights).
  init_like = {**state.params, "final_layer": jax.tree.map(jnp.zeros_like, state.params["final_layer"])}
  loss = fixed_loss_fn(config)
  before, after = float(loss(init_like)), float(loss(state.params))
  assert after < 0.6 * before, (before, after)
  assert int(state.step) == 80 and sorted(os.listdir(tmp_path / "checkpoints")) == ["40", "80"]
  _, exported, _ = checkpoints.load(tmp_path / loop.EXPORT_DIR)
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(exported), jax.tree.leaves(state.params)))


def _finalized(ckpt_dir):
  return sorted(int(p.name) for p in ckpt_dir.glob("*") if p.name.isdigit()) if ckpt_dir.exists() else []


def _half_written(ckpt_dir):
  return [p.name for p in ckpt_dir.glob("*") if "tmp" in p.name] if ckpt_dir.exists() else []


def _start(workdir, steps, cache_dir=None):
  """A training subprocess; restarts of the killed run share a compilation cache (they start faster)."""
  cache = {"JAX_COMPILATION_CACHE_DIR": str(cache_dir), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
  return subprocess.Popen([sys.executable, "-c", DRIVER, str(workdir), str(steps)], cwd=REPO,
                          env={**os.environ, **FAST_COMPILE, **(cache if cache_dir else {})},
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _wait_for(proc, condition, timeout=180):
  end = time.time() + timeout
  while not condition():
    if proc.poll() is not None:
      raise AssertionError(f"run ended early ({proc.returncode}): {proc.stderr.read().decode()[-2000:]}")
    if time.time() > end:
      raise AssertionError("timed out")
    time.sleep(0.002)


def _tree(path):
  """Every saved leaf of a training checkpoint by its path (the data stream is a function of the step)."""
  state = ocp.StandardCheckpointer().restore(path / "state")
  return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_flatten_with_path(state)[0]}


@pytest.mark.slow
def test_sigkill_at_random_moments_and_mid_save_resumes_bit_exactly(tmp_path):
  steps, rng = 10, random.Random(0)
  reference = _start(tmp_path / "reference", steps)
  run, ckpt = tmp_path / "killed", tmp_path / "killed" / "checkpoints"
  killed_mid_save, log = [], []
  for how in ("random", "mid_save", "random"):
    last = (_finalized(ckpt) or [0])[-1]
    proc = _start(run, steps, tmp_path / "cache")
    _wait_for(proc, lambda: (_finalized(ckpt) or [0])[-1] > last)  # progress since the last kill
    if how == "mid_save":
      _wait_for(proc, lambda: _half_written(ckpt))
    else:
      time.sleep(rng.uniform(0, 0.4))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    log.append(f"{how}: SIGKILL after step {_finalized(ckpt)[-1]}, half-written {_half_written(ckpt)}")
    if how == "mid_save":
      killed_mid_save = _half_written(ckpt)
      assert killed_mid_save and all(n.split(".")[0] not in map(str, _finalized(ckpt)) for n in killed_mid_save)
  assert _finalized(ckpt)[-1] < steps, "the kills came too late to interrupt the run"
  final = _start(run, steps, tmp_path / "cache")
  for proc in (final, reference):
    assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()[-2000:]
  assert not _half_written(ckpt)  # leftovers of the killed save were cleaned up
  resumed, straight = _tree(ckpt / str(steps)), _tree(tmp_path / "reference" / "checkpoints" / str(steps))
  assert sorted(resumed) == sorted(straight) and any("ema_params" in k for k in resumed)
  for k in straight:
    assert resumed[k].dtype == straight[k].dtype and np.array_equal(resumed[k], straight[k]), k
  print("; ".join(log), f"-> {len(straight)} arrays bit-identical at step {steps}")


def test_nan_loss_stops_at_its_step_and_keeps_the_last_good_checkpoint_then_corrupt_checkpoint_errors(tmp_path):
  # Warm-up makes step 1 a no-op (lr 0) and step 2 explode (lr 1e24).
  config = tiny_config(steps=5, **{"optimizer.learning_rate": 1e30, "optimizer.warmup_steps": 1_000_000})
  with pytest.raises(FloatingPointError, match="at step 2"):
    loop.train(config, tmp_path)
  ckpt = tmp_path / "checkpoints"
  assert _finalized(ckpt) == [1]
  good = _tree(ckpt / "1")
  assert all(np.isfinite(v).all() for v in good.values())

  for f in (ckpt / "1" / "state").rglob("*"):
    if f.is_file():
      f.write_bytes(b"not a checkpoint")
  with pytest.raises(CheckpointError, match=r"cannot restore training checkpoint step 1 from .*checkpoints/1"):
    loop.train(config, tmp_path)


MESH_DRIVER = """
import json, sys, jax, numpy as np
jax.config.update("jax_threefry_partitionable", True)
from tests.test_training_loop import tiny_config
from nag_jax.training import loop
out = {}
for name, mesh in (("data", {"data": 2}), ("fsdp", {"data": 1, "fsdp": 2})):
  state = loop.train(tiny_config(steps=3, **{"mesh": mesh}), f"{sys.argv[1]}/{name}")
  out[name] = {"leaves": [np.asarray(a).tolist() for a in jax.tree.leaves(state.params)],
               "shard": [list(a.sharding.shard_shape(a.shape)) for a in (
                   state.params["blocks_0"]["fc1"]["kernel"], state.opt_state[0].mu["blocks_0"]["fc1"]["kernel"],
                   state.ema_params["blocks_0"]["fc1"]["kernel"])]}
print(json.dumps(out))
"""


@pytest.mark.slow
def test_two_device_meshes_shard_the_state_and_agree(tmp_path):
  """Data-parallel vs FSDP on 2 CPU devices: params and Adam moments sharded by their logical axes."""
  env = {**os.environ, **FAST_COMPILE}
  env["XLA_FLAGS"] += " --xla_force_host_platform_device_count=2"
  proc = subprocess.run([sys.executable, "-c", MESH_DRIVER, str(tmp_path)], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out["data"]["shard"] == [[32, 128]] * 3  # replicated
  assert out["fsdp"]["shard"] == [[16, 128]] * 3  # params, Adam moments and EMA split over 'fsdp' on 'embed'
  for a, b in zip(out["data"]["leaves"], out["fsdp"]["leaves"]):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def converted(fixtures_dir, tmp_path_factory):
  """The shared tiny official checkpoint, converted with the CLI's code path."""
  from nag_jax import convert  # pylint: disable=import-outside-toplevel
  dst = tmp_path_factory.mktemp("finetune") / "dit"
  src = fixtures_dir / "dit_official" / "model.pt"
  assert convert.main(["--src", str(src), "--dst", str(dst), "--family", "dit", "--num-heads", "4"]) == 0
  return dst


def finetune_state(init_from, mode="finetune", **model):
  ema = 0.9999 if mode == "finetune" else 0.0
  config = tiny_config(**{"mode": mode, "init_from": str(init_from), "ema_decay": ema})
  config.model.update(dict(input_size=8, in_channels=4, hidden_size=64, depth=2, num_heads=4, **model))
  validate(config)
  initialize, _, _ = state_initializer(config, model_config_of(config), make_mesh({"data": -1}))
  return initialize(), model_config_of(config)


def nhwc(a):
  return np.transpose(a, (0, 2, 3, 1))


def _flat(tree):
  return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_finetune_starts_from_exactly_the_converted_checkpoint(converted, fixtures_dir):
  state, mc = finetune_state(converted)
  _, loaded, _ = checkpoints.load(converted)
  want = _flat(loaded)
  for tree in (state.params, state.ema_params):  # the official EMA weights become both
    got = _flat(tree)
    assert sorted(got) == sorted(want) and all(np.array_equal(got[k], want[k]) for k in want)
  io = np.load(fixtures_dir / "dit_official" / "io.npz")
  out = DiT(mc).apply({"params": state.params}, nhwc(io["x"]), io["t"].astype(np.float32), io["y"].astype(np.int32))
  assert np.abs(np.asarray(out) - nhwc(io["out"])).max() < 1e-4
  assert int(state.step) == 0 and all(not np.asarray(m).any() for m in jax.tree.leaves(state.opt_state))


def test_new_dataset_gets_fresh_class_rows_and_keeps_the_null_row(converted):
  state, _ = finetune_state(converted, num_classes=5)
  _, loaded, _ = checkpoints.load(converted)
  table = np.asarray(state.params["y_embedder"]["embedding_table"])
  old = np.asarray(loaded["y_embedder"]["embedding_table"])
  assert table.shape == (6, 64) and np.array_equal(table[5], old[10]) and not np.isclose(table[:5], old[:5]).any()
  got, want = _flat(state.params), _flat(loaded)
  assert all(np.array_equal(got[k], want[k]) for k in want if "y_embedder" not in k)
  no_null = merge_label_table(jnp.zeros((10, 2)), jnp.ones((11, 2)), 10, 10)  # same classes, no null row now
  assert np.array_equal(no_null, np.ones((10, 2)))


def test_noise_estimator_keeps_the_backbone_and_replaces_the_final_layer(converted):
  state, _ = finetune_state(converted, mode="noise_estimator")
  _, loaded, _ = checkpoints.load(converted)
  got, want = _flat(state.params), _flat(loaded)
  assert {k for k in want if k not in got} == {k for k in want if "final_layer" in k}
  assert all(np.array_equal(got[k], want[k]) for k in want if "final_layer" not in k)
  assert got["['head_fc1']['kernel']"].shape == (64, 32) and got["['head_fc2']['kernel']"].shape == (32, 1)
  assert state.ema_params is None


def test_finetune_config_must_match_the_checkpoint(converted):
  config = tiny_config(**{"mode": "finetune", "init_from": str(converted)})
  config.model.update(dict(input_size=8, in_channels=4, hidden_size=64, depth=3, num_heads=4))
  with pytest.raises(ConfigError, match=r"differs from the checkpoint .*depth=3 \(checkpoint: 2\)"):
    validate(config)


def test_finetune_may_change_how_the_model_is_computed(converted):
  """dtype, remat, the fence and the attention backend are computations, not weights: a hardware variant (bfloat16,
  splash) fine-tunes a checkpoint converted with other settings."""
  config = tiny_config(**{"mode": "finetune", "init_from": str(converted)})
  ckpt = checkpoints.model_dir.read_config(converted)
  config.model.update(dict(input_size=ckpt.input_size, in_channels=ckpt.in_channels, hidden_size=ckpt.hidden_size,
                           depth=ckpt.depth, num_heads=ckpt.num_heads, patch_size=ckpt.patch_size,
                           family=ckpt.family, learn_sigma=ckpt.learn_sigma, num_classes=ckpt.num_classes))
  config.model.update(dict(dtype="bfloat16", attention="splash" if ckpt.attention != "splash" else "xla",
                           remat=not ckpt.remat))
  validate(config)
