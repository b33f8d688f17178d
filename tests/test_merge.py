"""The 50,000-sample merge streams: `samples.npz` written part by part (a stored ZIP64 member), peak memory a small
multiple of one part, readable by numpy.load and by the evaluator's streaming reader, equal to the parts
concatenated in memory."""
import os
import pathlib
import threading
import time
import zipfile

import numpy as np

from nag_jax.evaluation import sample_io
from nag_jax.sampling import writer

TAG = "0123456789ab"
PARTS, ROWS, SIZE = 40, 200, 64  # 8,000 images of 64 x 64 x 3: a 98 MB array in parts of 2.5 MB


def _rss() -> int:
  return int(pathlib.Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_growth(fn) -> int:
  """The largest resident-set size seen (sampled every millisecond) while `fn` runs, minus the size before."""
  baseline, peak, done = _rss(), [0], threading.Event()

  def sample():
    while not done.is_set():
      peak[0] = max(peak[0], _rss())
      time.sleep(0.001)

  thread = threading.Thread(target=sample)
  thread.start()
  try:
    fn()
  finally:
    done.set()
    thread.join()
  return max(peak[0], _rss()) - baseline


def _write_parts(out: pathlib.Path) -> None:
  rng = np.random.default_rng(0)
  for b in range(PARTS):
    images = rng.integers(0, 256, (ROWS, SIZE, SIZE, 3), dtype=np.uint8)
    writer.write_part(out, b, b * ROWS, TAG, images, np.arange(b * ROWS, (b + 1) * ROWS) % 1000)


def test_merge_streams_with_bounded_memory(tmp_path):
  _write_parts(tmp_path)
  num_samples = PARTS * ROWS - 123  # the last batch is cut, as when num_samples is not a batch multiple
  parts = writer.part_files(tmp_path, TAG)
  path = tmp_path / "samples.npz"
  peak = peak_rss_growth(lambda: writer.write_merged_npz(path, parts, num_samples, {"images": "arr_0",
                                                                                    "labels": "labels"}))
  array_bytes = num_samples * SIZE * SIZE * 3
  part_bytes = ROWS * SIZE * SIZE * 3
  held = {}
  in_memory = peak_rss_growth(lambda: held.update(zip(("x", "y"), writer.merge_parts(tmp_path, num_samples, TAG))))
  print(f"merge of {array_bytes / 2**20:.1f} MiB in parts of {part_bytes / 2**20:.2f} MiB: peak RSS grew by "
        f"{peak / 2**20:.1f} MiB streaming ({peak / part_bytes:.1f} parts), {in_memory / 2**20:.1f} MiB in memory")
  assert in_memory >= array_bytes  # the measurement sees whole arrays ...
  assert peak <= 4 * part_bytes + 4 * 2**20  # ... and the streaming merge holds a few parts, never the array
  expected, labels = held["x"], held["y"]  # the in-memory merge is the reference
  with zipfile.ZipFile(path) as zf:
    infos = {i.filename: i for i in zf.infolist()}
    assert sorted(infos) == ["arr_0.npy", "labels.npy"]
    assert all(i.compress_type == zipfile.ZIP_STORED for i in infos.values())
  with np.load(path) as f:
    np.testing.assert_array_equal(f["arr_0"], expected)
    np.testing.assert_array_equal(f["labels"], labels)
  streamed = np.concatenate(list(sample_io.NpzImages(path).batches(1000)))
  np.testing.assert_array_equal(streamed, expected)


def test_zip64_member_is_written_when_the_array_is_large(tmp_path):
  """Every member carries ZIP64 sizes (force_zip64): members over 4 GiB need them, and small ones read alike."""
  out = tmp_path / "o"
  writer.write_part(out, 0, 0, TAG, np.zeros((2, 4, 4, 3), np.uint8), np.array([1, 2]))
  writer.write_merged_npz(tmp_path / "s.npz", writer.part_files(out, TAG), 2, {"images": "arr_0"})
  raw = (tmp_path / "s.npz").read_bytes()
  assert b"\x01\x00" in raw[:200]  # the ZIP64 extra field header id 0x0001 in the first local header
  with np.load(tmp_path / "s.npz") as f:
    assert f["arr_0"].shape == (2, 4, 4, 3)
