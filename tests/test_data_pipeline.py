"""Tests of the grain training pipeline: seeded order, process shards, resume, flips, bad configs."""
from absl import flags
import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

from nag_jax import data

N = 24
# Few read-ahead threads: the default (16 threads, 500 records ahead) is slow to start on 2 cores.
SMALL_READS = grain.ReadOptions(num_threads=2, prefetch_buffer_size=8)


def _id_images(n=N, size=6):
  """Random distinct uint8 images whose label is their index, so every record can be traced."""
  images = np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
  return data.ArraySource(images, np.arange(n)), images


def _make(source, shard_options=None, read_options=SMALL_READS, **kwargs):
  """An iterator for one simulated process out of `shard_options` (default: the only one)."""
  return data.make_train_iterator(source, shard_options=shard_options or _shard(0, 1),
                                  read_options=read_options, **kwargs)


def _take(iterator, k):
  return [next(iterator) for _ in range(k)]


def _assert_same(batches_a, batches_b):
  assert len(batches_a) == len(batches_b)
  for a, b in zip(batches_a, batches_b):
    np.testing.assert_array_equal(a["y"], b["y"])
    np.testing.assert_array_equal(a["x"], b["x"])


def _shard(index, count=2):
  return grain.sharding.ShardOptions(index, count, drop_remainder=True)


def test_same_seed_same_stream_and_different_seed_differs():
  source, _ = _id_images()
  make = lambda seed: _make(source, global_batch_size=4, seed=seed)
  first = _take(make(3), 12)
  _assert_same(first, _take(make(3), 12))
  other = _take(make(4), 12)
  assert any((a["y"] != b["y"]).any() for a, b in zip(first, other))


def test_two_processes_get_disjoint_shards_covering_each_epoch():
  source, _ = _id_images()
  steps = data.steps_per_epoch(N, global_batch_size=8, process_count=2)
  assert steps == 3
  iterators = [_make(source, global_batch_size=8, seed=0, shard_options=_shard(i))
               for i in range(2)]
  for _ in range(2):  # two epochs
    per_process = [np.concatenate([b["y"] for b in _take(it, steps)]) for it in iterators]
    assert all(len(ids) == N // 2 for ids in per_process)
    assert not set(per_process[0]) & set(per_process[1])
    assert sorted(np.concatenate(per_process)) == list(range(N))


def test_finite_epochs_visit_every_record_once_then_stop():
  source, _ = _id_images()
  iterator = _make(source, global_batch_size=6, seed=1, num_epochs=2)
  ids = np.concatenate([b["y"] for b in iterator])
  assert sorted(ids) == sorted(list(range(N)) * 2)
  assert sorted(ids[:N]) == list(range(N))


def test_restored_state_continues_exactly_like_the_uninterrupted_stream():
  source, _ = _id_images()
  make = lambda: _make(source, global_batch_size=4, seed=7, shard_options=_shard(1))
  uninterrupted = make()
  _take(uninterrupted, 5)
  state = uninterrupted.get_state()
  expected = _take(uninterrupted, 6)  # crosses the epoch boundary (6 batches per shard epoch)
  restored = make()
  restored.set_state(state)
  _assert_same(_take(restored, 6), expected)


def test_orbax_checkpoint_manager_saves_and_restores_the_iterator(tmp_path):
  source, _ = _id_images()
  make = lambda: _make(source, global_batch_size=4, seed=2)
  iterator = make()
  _take(iterator, 4)
  with ocp.CheckpointManager(tmp_path) as manager:
    manager.save(4, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(iterator)))
  expected = _take(iterator, 3)
  fresh = make()
  with ocp.CheckpointManager(tmp_path) as manager:
    manager.restore(4, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
  _assert_same(_take(fresh, 3), expected)


def test_image_flips_are_fliplr_of_the_record_and_normalised():
  source, images = _id_images()
  batches = _take(_make(source, global_batch_size=8, seed=0), 6)
  flipped = 0
  for batch in batches:
    assert batch["x"].dtype == np.float32 and batch["y"].dtype == np.int32
    for x, i in zip(batch["x"], batch["y"]):
      plain = images[i].astype(np.float32) / 127.5 - 1.0
      mirror = np.fliplr(images[i]).astype(np.float32) / 127.5 - 1.0
      is_plain, is_mirror = np.array_equal(x, plain), np.array_equal(x, mirror)
      assert is_plain or is_mirror
      flipped += is_mirror and not is_plain
  assert 0 < flipped < 48
  for batch in _take(_make(source, global_batch_size=8, seed=0, flip=False), 3):
    for x, i in zip(batch["x"], batch["y"]):
      np.testing.assert_array_equal(x, images[i].astype(np.float32) / 127.5 - 1.0)


def test_latent_pairs_give_one_stored_flip_at_random():
  pairs = np.random.default_rng(0).normal(size=(N, 2, 4, 4, 3)).astype(np.float32)
  source = data.ArraySource(pairs, np.arange(N), kind="latent")
  picks = []
  for batch in _take(_make(source, global_batch_size=8, seed=0), 6):
    assert batch["x"].shape == (8, 4, 4, 3)
    for x, i in zip(batch["x"], batch["y"]):
      matches = [k for k in range(2) if np.array_equal(x, pairs[i, k])]
      assert len(matches) == 1
      picks.append(matches[0])
  assert 0 < sum(picks) < len(picks)
  for batch in _take(_make(source, global_batch_size=8, seed=0, flip=False), 3):
    np.testing.assert_array_equal(batch["x"], pairs[batch["y"], 0])


def test_digits_through_the_pipeline():
  x, y = data.digits_arrays(16)
  batch = next(_make(data.ArraySource(x, y), global_batch_size=32, seed=0))
  assert batch["x"].shape == (32, 16, 16, 1) and batch["x"].dtype == np.float32
  assert batch["x"].min() >= -1.0 and batch["x"].max() <= 1.0
  for xi, yi in zip(batch["x"], batch["y"]):  # each image is a digit of its label, maybe mirrored
    assert any(np.array_equal(xi, c) or np.array_equal(xi, c[:, ::-1]) for c in x[y == yi])


@pytest.mark.parametrize("kwargs,match", [
    ({"global_batch_size": 6}, "multiple of the number of processes"),
    ({"global_batch_size": 0}, "multiple of the number of processes"),
    ({"global_batch_size": 40}, "fewer than its batch"),
    ({"global_batch_size": 8, "seed": -1}, "seed"),
    ({"global_batch_size": 8, "num_epochs": 0}, "num_epochs"),
    ({"global_batch_size": 8, "worker_count": -1}, "worker_count"),
])
def test_invalid_config_values_raise_one_clear_error(kwargs, match):
  source, _ = _id_images()
  kwargs = {"seed": 0, **kwargs}
  with pytest.raises(ValueError, match=match):
    _make(source, shard_options=_shard(0, 4), **kwargs)


def test_worker_process_gives_the_same_batches_as_in_process():
  # Grain starts worker processes only once absl flags are parsed (absl.app.run does it in main).
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  source, _ = _id_images()
  make = lambda workers: _make(source, global_batch_size=4, seed=5, worker_count=workers)
  with_worker = make(1)
  _assert_same(_take(with_worker, 4), _take(make(0), 4))


def test_in_memory_records_read_in_thread_give_the_threaded_readers_batches_and_state():
  # The default for an ArraySource (data.pipeline.IN_THREAD) against grain's threaded reader, with flips,
  # across an epoch boundary; a state saved by one continues the other's stream.
  source, _ = _id_images()
  make = lambda reads: _make(source, global_batch_size=4, seed=3, read_options=reads)
  in_thread, threaded = make(None), make(SMALL_READS)
  _assert_same(_take(in_thread, 8), _take(threaded, 8))
  restored = make(SMALL_READS)
  restored.set_state(in_thread.get_state())
  _assert_same(_take(restored, 5), _take(in_thread, 5))
  # config data.read_threads: -1 automatic, 0 in-thread, n threads
  assert data.read_options(-1) is None and data.read_options(0) is data.pipeline.IN_THREAD
  assert data.read_options(3).num_threads == 3
  with pytest.raises(ValueError, match=r"^read_threads must be an integer >= -1, got -2$"):
    data.read_options(-2)
