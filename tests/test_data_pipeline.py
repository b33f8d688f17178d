"""Tests of the grain training pipeline: seeded order, per-process rows, resume, flips, bad configs."""
from absl import flags
import grain
import numpy as np
import pytest

from nag_jax import data

N = 24
# Few read-ahead threads: the default (16 threads, 500 records ahead) is slow to start on 2 cores.
SMALL_READS = grain.ReadOptions(num_threads=2, prefetch_buffer_size=8)


def _id_images(n=N, size=6):
  """Random distinct uint8 images whose label is their index, so every record can be traced."""
  images = np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
  return data.ArraySource(images, np.arange(n)), images


def _make(source, read_options=SMALL_READS, **kwargs):
  """An iterator for one simulated process (its `rows` of each global batch; default all of them)."""
  return data.make_train_iterator(source, read_options=read_options, **kwargs)


def _take(iterator, k):
  return [next(iterator) for _ in range(k)]


def _assert_same(batches_a, batches_b):
  assert len(batches_a) == len(batches_b)
  for a, b in zip(batches_a, batches_b):
    np.testing.assert_array_equal(a["y"], b["y"])
    np.testing.assert_array_equal(a["x"], b["x"])


def test_same_seed_same_stream_and_different_seed_differs():
  source, _ = _id_images()
  make = lambda seed: _make(source, global_batch_size=4, seed=seed)
  first = _take(make(3), 12)
  _assert_same(first, _take(make(3), 12))
  other = _take(make(4), 12)
  assert any((a["y"] != b["y"]).any() for a, b in zip(first, other))


@pytest.mark.parametrize("splits", [(0, 4, 8), (0, 2, 4, 6, 8), (0, 1, 8)])
def test_processes_read_their_rows_of_the_one_process_global_batch(splits):
  source, images = _id_images()
  steps = data.steps_per_epoch(N, global_batch_size=8)
  assert steps == 3
  one = _take(_make(source, global_batch_size=8, seed=0), 2 * steps)
  parts = [_take(_make(source, global_batch_size=8, seed=0, rows=slice(a, b)), 2 * steps)
           for a, b in zip(splits[:-1], splits[1:])]
  for k, batch in enumerate(one):  # records and flips alike, across the epoch boundary
    np.testing.assert_array_equal(np.concatenate([p[k]["y"] for p in parts]), batch["y"])
    np.testing.assert_array_equal(np.concatenate([p[k]["x"] for p in parts]), batch["x"])
  for epoch in range(2):  # each epoch visits every record once
    ids = np.concatenate([b["y"] for b in one[epoch * steps:(epoch + 1) * steps]])
    assert sorted(ids) == list(range(N))


def test_finite_epochs_visit_every_record_once_then_stop():
  source, _ = _id_images()
  iterator = _make(source, global_batch_size=6, seed=1, num_epochs=2)
  ids = np.concatenate([b["y"] for b in iterator])
  assert sorted(ids) == sorted(list(range(N)) * 2)
  assert sorted(ids[:N]) == list(range(N))


@pytest.mark.parametrize("rows", [slice(0, 4), slice(2, 4)])
def test_a_stream_started_at_a_batch_continues_the_uninterrupted_stream(rows):
  """What a resume does (on any number of processes): start the stream at the step's batch."""
  source, _ = _id_images()
  uninterrupted = _take(_make(source, global_batch_size=4, seed=7, rows=rows), 11)
  resumed = _take(_make(source, global_batch_size=4, seed=7, rows=rows, start_batch=5), 6)
  _assert_same(resumed, uninterrupted[5:])  # crosses the epoch boundary (6 batches per epoch)


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
    ({"global_batch_size": 8, "rows": slice(4, 12)}, "rows 4:12 are not rows of a global batch of 8"),
    ({"global_batch_size": 0}, "global_batch_size must be a positive integer"),
    ({"global_batch_size": 40}, "fewer than one global batch of 40"),
    ({"global_batch_size": 8, "start_batch": -1}, "start_batch"),
    ({"global_batch_size": 8, "seed": -1}, "seed"),
    ({"global_batch_size": 8, "num_epochs": 0}, "num_epochs"),
    ({"global_batch_size": 8, "worker_count": -1}, "worker_count"),
])
def test_invalid_config_values_raise_one_clear_error(kwargs, match):
  source, _ = _id_images()
  kwargs = {"seed": 0, **kwargs}
  with pytest.raises(ValueError, match=match):
    _make(source, **kwargs)


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
