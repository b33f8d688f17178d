"""FID, Inception Score, precision and recall of a sample batch, as ADM's evaluator reports them.

  python -m nag_jax.evaluate --samples S.npz --reference VIRTUAL_imagenet256_labeled.npz \
      --inception pt_inception-2015-12-05-6726825d.pth [--resize tf1|pytorch_fid] [--out m.json [--overwrite]]

Resizing: against an ADM reference batch (it holds `mu_s`/`sigma_s` beside `mu`/`sigma`) the default is ADM's
TF1 resizing (`tf1`), so the FID is comparable with published numbers; pytorch-fid's resizing there is refused
unless the reference statistics are recomputed with it (--recompute-reference-stats). Against anything else
(self-made references, pytorch-fid statistics) the default is `pytorch_fid`. The report names the choice.

FID uses the reference file's `mu`/`sigma` (or, with --recompute-reference-stats, statistics of its
images through this network, and then the file needs no mu/sigma); precision/recall need reference
images (`arr_0` or a folder). Every input and --out are checked before any compute.
"""
import argparse
import json
import os
import sys
from collections.abc import Sequence

import jax
import numpy as np

from nag_jax import cli, destination, paths
from nag_jax.errors import UserError
from nag_jax.sharding import multihost
from nag_jax.evaluation import fid, inception_convert, precision_recall, sample_io
from nag_jax.evaluation.features import extract_features
from nag_jax.evaluation.inception import RESIZE_MODES, adm_logits


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  p = cli.ArgumentParser(prog="python -m nag_jax.evaluate", description=__doc__.split("\n")[0])
  p.add_argument("--samples", required=True, help="ADM .npz (arr_0 uint8 NHWC) or image folder")
  p.add_argument("--reference", required=True,
                 help="ADM reference .npz (mu, sigma, optional arr_0) or image folder")
  p.add_argument("--inception", required=True, help="pytorch-fid pt_inception-2015-12-05-*.pth")
  p.add_argument("--resize", choices=RESIZE_MODES, default=None,
                 help="resize/normalisation before Inception (tf1 = ADM's legacy TF graph alignment); default: tf1 "
                      "against an ADM reference batch, else pytorch_fid")
  p.add_argument("--batch-size", type=int, default=200, help="global batch, split over devices")
  p.add_argument("--recompute-reference-stats", action="store_true",
                 help="ignore the file's mu/sigma; compute them from its images with this network")
  p.add_argument("--k", type=int, default=3, help="neighbourhood size for precision/recall")
  p.add_argument("--out", help="write the metrics and protocol as JSON here")
  p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
  p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
  return p.parse_args(argv)


def _load_inception(path: str, resize: str):
  """The Inception network and variables; a file torch cannot read is a UserError naming --inception."""
  try:
    return inception_convert.load_inception(path, resize)
  except (UserError, ImportError):
    raise
  except Exception as e:  # torch.load raises several types for a truncated or foreign file
    first = str(e).splitlines()[0] if str(e) else ""
    raise UserError(f"--inception {path} is not a readable PyTorch weight file ({type(e).__name__}: {first})") from e


def _open_inputs(args: argparse.Namespace):
  """Opens and validates every input (and --out) before any compute; errors are UserErrors."""
  if args.batch_size < 1 or args.k < 1:
    raise UserError("--batch-size and --k must be positive")
  if args.out:
    destination.check_file(args.out, what="metrics JSON", overwrite=args.overwrite)
  samples = sample_io.open_images(args.samples)
  if args.recompute_reference_stats:  # only the images are used: the file needs no mu/sigma
    if not paths.path(args.reference).is_dir() and not _npz_has(args.reference, "arr_0"):
      raise UserError("--recompute-reference-stats needs reference images (arr_0 or a folder)")
    reference = sample_io.Reference(None, None, sample_io.open_images(args.reference))
  else:
    reference = sample_io.open_reference(args.reference)
  args.resize, args.resize_reason = choose_resize(args.resize, reference, args.recompute_reference_stats)
  model, variables = _load_inception(args.inception, args.resize)
  pool_dim = variables["params"]["fc"]["kernel"].shape[0]
  if reference.mu is not None and reference.mu.shape[0] != pool_dim:
    raise UserError(f"reference statistics have dimension {reference.mu.shape[0]}, "
                    f"Inception pool features have {pool_dim}")
  sizes = [len(samples)] + ([] if reference.images is None else [len(reference.images)])
  if min(sizes) <= max(args.k, 1):
    raise UserError(f"need more than max(k, 1) = {max(args.k, 1)} images per set, got {sizes}")
  return model, variables, samples, reference


def choose_resize(asked: str | None, reference: sample_io.Reference, recompute: bool) -> tuple[str, str]:
  """(resize mode, why): ADM's tf1 against an ADM reference batch's statistics, pytorch_fid otherwise; refuses
  pytorch_fid against ADM's statistics (they were computed with tf1: the FID would not be comparable)."""
  adm_stats = reference.adm and not recompute
  if asked is None:
    if adm_stats:
      return "tf1", "ADM reference batch: ADM's TF1 resizing, as its statistics were computed (the default)"
    return "pytorch_fid", "statistics computed here or by pytorch-fid: pytorch-fid's resizing (the default)"
  if asked == "pytorch_fid" and adm_stats:
    raise UserError("--resize pytorch_fid against an ADM reference batch: its mu/sigma were computed with ADM's TF1 "
                    "resizing, so the FID would not be comparable; use --resize tf1 (the default), or "
                    "--recompute-reference-stats to compute both sides with pytorch-fid's")
  return asked, "asked for with --resize"


def _npz_has(path: str, key: str) -> bool:
  """True when the .npz at `path` holds `key` (False for anything unreadable: open_images then says why)."""
  try:
    with paths.path(path).open("rb") as raw, np.load(raw) as f:
      return key in f.files
  except (OSError, ValueError):
    return True


def evaluate(args: argparse.Namespace) -> dict:
  """Runs the evaluation; prints a table, writes JSON if `--out` (atomically), returns the metrics dict."""
  model, variables, samples, reference = _open_inputs(args)

  def features(v, images):
    pool, _ = model.apply(v, images)
    return pool, adm_logits(v, pool)

  def run(images, desc):
    with jax.default_matmul_precision("highest"):  # Full float32 convs: no TF32 on GPUs.
      return extract_features(features, variables, images, args.batch_size,
                              progress=not args.no_progress and multihost.is_primary(), desc=desc)

  pool, logits = run(samples, "samples")
  ref_pool = run(reference.images, "reference")[0] if reference.images is not None else None
  if reference.mu is not None:
    ref_mu, ref_sigma = reference.mu, reference.sigma
  else:
    ref_mu, ref_sigma = fid.compute_statistics(ref_pool)
  mu, sigma = fid.compute_statistics(pool)

  metrics = {"fid": fid.frechet_distance(mu, sigma, ref_mu, ref_sigma),
             "inception_score": fid.inception_score(logits),
             "precision": None, "recall": None}
  if ref_pool is not None:
    metrics["precision"], metrics["recall"] = precision_recall.precision_recall(
        ref_pool, pool, k=args.k)
  metrics["protocol"] = {
      "samples": os.fspath(args.samples), "num_samples": len(samples),
      "reference": os.fspath(args.reference),
      "reference_statistics": (
          "file mu/sigma" if reference.mu is not None else "computed from reference images"),
      "num_reference_images": None if ref_pool is None else len(ref_pool),
      "inception_weights": os.path.basename(args.inception), "resize": args.resize,
      "resize_reason": args.resize_reason,
      "feature_extractor": "pytorch-fid FID InceptionV3 (Flax port), pool_3 2048-d",
      "inception_score": "softmax(pool @ fc.kernel), no bias, splits of 5000 (ADM)",
      "precision_recall_k": args.k, "matmul_precision": "highest (float32)",
      "batch_size": args.batch_size,
      "devices": f"{jax.device_count()} x {jax.devices()[0].platform}",
      "processes": jax.process_count()}
  if not multihost.is_primary():  # every process computed the same metrics; process 0 reports them
    return metrics
  print(f"{'metric':<16}value")
  for name in ("fid", "inception_score", "precision", "recall"):
    value = metrics[name]
    print(f"{name:<16}{'n/a (no reference images)' if value is None else f'{value:.4f}'}")
  print(f"({len(samples)} samples, resize={args.resize}, reference stats: "
        f"{metrics['protocol']['reference_statistics']})")
  if args.out:
    destination.write_file(args.out, lambda p: p.write_text(json.dumps(metrics, indent=2), encoding="utf-8"),
                           what="metrics JSON", overwrite=args.overwrite)
  return metrics


@cli.entry_point
def main(argv: Sequence[str] | None = None) -> int:
  """The command: an expected failure is one `error:` line and code 2."""
  args = parse_args(argv)
  multihost.start()  # before any other JAX call
  evaluate(args)
  return 0


if __name__ == "__main__":
  sys.exit(main())
