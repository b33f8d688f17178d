"""One process of the two-process test (tests/test_multiprocess.py): a few SiT training steps, then sampling.

  python tests/multihost_worker.py OUT_DIR NUM_PROCESSES PROCESS_ID PORT

With NUM_PROCESSES > 1 it joins `jax.distributed` on 127.0.0.1:PORT and uses a hybrid mesh (data split
across the processes, fsdp within each); with 1 it runs the reference on one device. Process 0 writes
the trained params, all processes export them as a model directory and make the training loop's
sample grid; every process writes its own sample rows.
"""
import pathlib
import sys

import jax
import numpy as np
from jax.experimental import multihost_utils

from nag_jax import sharding
from nag_jax.checkpoints import model_dir
from nag_jax.guidance import GuidanceConfig
from nag_jax.models import ModelConfig
from nag_jax.sampling import writer
from nag_jax.sampling.pipeline import SamplerConfig, build_sampler
from nag_jax.sharding import multihost
from nag_jax.training import create_objective, get_base_config, init_state, jit_train_step, samples

BATCH, STEPS = 8, 3
TAG = "0123456789ab"  # the protocol hash of the parts (the sampling CLI derives it from run.json)


def config():
  c = get_base_config()
  c.model.update(dict(family="sit", input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=1,
                      num_heads=2, num_classes=10))
  c.global_batch_size, c.num_train_steps, c.ema_decay = BATCH, 10, 0.5
  c.optimizer.learning_rate = 1e-3
  return c


def global_array(mesh, rows: slice, full: np.ndarray) -> jax.Array:
  """The global batch-sharded array of which this process holds `full[rows]`."""
  return jax.make_array_from_process_local_data(sharding.batch_sharding(mesh, full.ndim), full[rows])


def main(out_dir: pathlib.Path, num_processes: int, process_id: int, port: int) -> None:
  if num_processes > 1:
    multihost.initialize({"NAG_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "NAG_NUM_PROCESSES": str(num_processes),
                          "NAG_PROCESS_ID": str(process_id)}, timeout_s=60)
    mesh = sharding.make_mesh({"data": -1, "fsdp": 2, "dcn": {"data": num_processes}})
  else:
    mesh = sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])
  jax.config.update("jax_default_matmul_precision", "highest")
  c = config()
  model_cfg = ModelConfig.from_dict(c.model.to_dict())
  rows = multihost.process_rows(mesh, BATCH)
  rng = np.random.default_rng(0)  # the same global data in every process; each feeds its rows
  with jax.set_mesh(mesh):
    initialize, abstract, schedule = init_state.state_initializer(c, model_cfg, mesh)
    state = initialize()
    step = jit_train_step(jax.tree.map(lambda s: s.sharding, abstract), mesh, model_config=model_cfg,
                          objective=create_objective(model_cfg, c.objective), learning_rate_fn=schedule)
    for _ in range(STEPS):
      x = rng.standard_normal((BATCH, 8, 8, 4)).astype(np.float32)
      y = rng.integers(0, 10, BATCH).astype(np.int32)
      state, _ = step(state, {"x": global_array(mesh, rows, x), "y": global_array(mesh, rows, y)})
    params = multihost_utils.process_allgather(state.params, tiled=True)
    if jax.process_index() == 0:
      np.savez(out_dir / "params.npz", **{jax.tree_util.keystr(p): v for p, v in
                                          jax.tree_util.tree_flatten_with_path(params)[0]})
    # What the training loop does at the end and every sample.every_steps: export and the sample grid.
    model_dir.save(out_dir / "model", state.params, model_cfg)
    c.sample.update(dict(num_images=4, num_steps=4, nag_scale=2.0))
    grid = samples.make_sample_grid_fn(model_cfg, c.sample, mesh, jax.tree.map(lambda s: s.sharding,
                                                                                abstract.params))(state.params)
    np.save(out_dir / f"grid_{jax.process_index()}.npy", grid)

    sample = build_sampler(model_cfg, SamplerConfig(method="sde", num_steps=4),
                           GuidanceConfig(cfg_scale=1.5, nag_scale=2.0), jit=False)
    run = sharding.shard_sampler(sample, mesh, jax.tree.map(lambda s: s.sharding, abstract.params))
    labels = np.arange(BATCH, dtype=np.int32) % 10
    out = run(state.params, jax.random.key(7), global_array(mesh, rows, labels))
    for r, data in multihost.owned_shards(out["latents"]):
      writer.write_part(out_dir / "samples", 0, r.start or 0, TAG, data, labels[r])
  print(f"process {jax.process_index()} of {jax.process_count()}: rows {rows.start}:{rows.stop} done")


if __name__ == "__main__":
  main(pathlib.Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
