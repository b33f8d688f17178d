"""Training-batch throughput of the grain pipeline by reader, alternated in one run.

  python -m benchmarks.input_pipeline [--batch 64,256] [--batches 20] [--repeats 3]

Times `nag_jax.data.make_train_iterator` on two sources: the digits in memory (16x16, as the demo trains)
and array_record latents (2 x 32 x 32 x 4 float32 per record, as ImageNet 256 trains; 2048 records written
to a temporary folder, read from the page cache), each in-thread (`nag_jax.data.pipeline.IN_THREAD`, the
default for in-memory arrays), with grain's default threaded reader (16 threads, 500 records ahead, the
default for files) and with 2 threads reading 64 ahead: ms per batch, median of `--repeats` rounds of
`--batches` batches each (a fresh iterator each time, after one warm-up batch; `benchmarks.common.alternated`
reuses one call per command, and a threaded iterator left alive would read ahead while the others are timed),
and the ratio to the in-thread reader.
"""
from __future__ import annotations

import argparse
import gc
import os
import statistics
import tempfile
import time

import grain
import jax
import jax.numpy as jnp
import numpy as np

from nag_jax import data

READERS = {"in-thread": data.pipeline.IN_THREAD, "grain default, 16 threads": grain.ReadOptions(),
           "2 threads, 64 ahead": grain.ReadOptions(num_threads=2, prefetch_buffer_size=64)}


def latent_source(folder: str, n: int = 2048) -> data.LatentSource:
  """n records of ImageNet-256-shaped latent pairs, written by write_latents with a stand-in encoder."""
  rng = np.random.default_rng(0)
  images = data.ArraySource(rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8), rng.integers(0, 10, n))
  encode = lambda x, key: jnp.broadcast_to(x[:, :32, :32, :1].astype(jnp.float32), (x.shape[0], 32, 32, 4))
  return data.LatentSource(data.write_latents(images, encode, folder, key=jax.random.key(0), batch_size=256))


def run(batch_sizes: list[int], batches: int, repeats: int, folder: str
        ) -> tuple[dict[tuple[str, int, str], float], list[float]]:
  """Median ms per batch of each (source, batch size, reader), alternated within each round; the loads."""
  x, y = data.digits_arrays(16)
  sources = {"digits, in memory": data.ArraySource(x, y, num_classes=10),
             "latents, array_record": latent_source(folder)}
  times: dict[tuple[str, int, str], list[float]] = {(src, b, name): [] for src in sources for b in batch_sizes
                                                     for name in READERS}
  loads = []
  for _ in range(repeats):
    loads.append(os.getloadavg()[0])
    for src, b, name in times:  # a fresh iterator each time: no other reader's threads run meanwhile
      it = data.make_train_iterator(sources[src], global_batch_size=b, seed=0, flip=False,
                                    read_options=READERS[name])
      next(it)
      t0 = time.perf_counter()
      for _ in range(batches):
        next(it)
      times[(src, b, name)].append(1e3 * (time.perf_counter() - t0) / batches)
      del it
      gc.collect()
  return {k: statistics.median(v) for k, v in times.items()}, loads


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batch", default="64,256", help="comma-separated global batch sizes")
  p.add_argument("--batches", type=int, default=20)
  p.add_argument("--repeats", type=int, default=3)
  args = p.parse_args()
  batch_sizes = [int(b) for b in args.batch.split(",")]
  with tempfile.TemporaryDirectory() as folder:
    ms, loads = run(batch_sizes, args.batches, args.repeats, folder)
  print(f"{os.cpu_count()} CPUs; load average per round: " + ", ".join(f"{v:.2f}" for v in loads))
  print("\n| source | batch | reader | ms/batch | time / in-thread's |")
  print("|---|---|---|---|---|")
  for src, b in dict.fromkeys(k[:2] for k in ms):
    base = ms[(src, b, "in-thread")]
    for name in READERS:
      print(f"| {src} | {b} | {name} | {ms[(src, b, name)]:.1f} | {ms[(src, b, name)] / base:.2f} |")


if __name__ == "__main__":
  main()
