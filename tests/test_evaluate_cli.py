"""`python -m nag_jax.evaluate` on tiny inputs with a random-weight Inception saved in pytorch-fid's
layout, the sample readers, and one clear error per kind of bad input."""
import json
import re

import flax
import jax
import numpy as np
import pytest
from PIL import Image

from nag_jax import evaluate
from nag_jax.evaluation import fid, inception_convert, precision_recall, sample_io
from nag_jax.evaluation.inception import InceptionV3, adm_logits

torch = pytest.importorskip("torch")


def _random_variables(seed=0):
  """Random Flax variables keeping activations O(1): He-scaled kernels, BN near identity."""
  rng = np.random.default_rng(seed)
  flat = {}
  for key, shape in inception_convert.expected_shapes().items():
    leaf = key[-1]
    if leaf == "kernel":
      v = rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[:-1]))
    elif leaf in ("scale", "var"):
      v = rng.uniform(0.5, 1.5, shape)
    else:
      v = 0.1 * rng.standard_normal(shape)
    flat[key] = v.astype(np.float32)
  return flax.traverse_util.unflatten_dict(flat)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  """Weights (.pth), samples and reference (.npz) in ADM's formats."""
  d = tmp_path_factory.mktemp("eval")
  variables = _random_variables()
  state = {k: torch.from_numpy(v) for k, v in inception_convert.to_state_dict(variables).items()}
  torch.save(state, d / "pt_inception.pth")
  rng = np.random.default_rng(0)
  samples = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
  ref_images = rng.integers(0, 256, (7, 32, 32, 3), dtype=np.uint8)
  a = rng.standard_normal((2048, 64))
  mu, sigma = rng.standard_normal(2048), a @ a.T / 64 + 0.1 * np.eye(2048)
  np.savez(d / "samples.npz", arr_0=samples)
  np.savez(d / "ref.npz", arr_0=ref_images, mu=mu, sigma=sigma)
  return {"dir": d, "weights": str(d / "pt_inception.pth"), "samples": str(d / "samples.npz"),
          "ref": str(d / "ref.npz"), "variables": variables, "images": samples,
          "ref_images": ref_images, "mu": mu, "sigma": sigma}


def _expect_error(capsys, code, pattern):
  """The CLI returned 2 with exactly one `error: ...` line on stderr matching `pattern`."""
  err = capsys.readouterr().err
  assert code == 2 and len(err.splitlines()) == 1 and re.search(f"^error: .*{pattern}", err), err


def _argv(files, **overrides):
  args = {"samples": files["samples"], "reference": files["ref"], "inception": files["weights"]}
  args.update(overrides)
  return [x for k, v in args.items() for x in (f"--{k}", v)] + ["--no-progress"]


def test_cli_end_to_end(files, capsys):
  out = files["dir"] / "metrics.json"
  with pytest.warns(UserWarning, match="FID from 6 samples < feature dimension 2048"):
    evaluate.main(_argv(files, out=str(out)) + ["--batch-size", "4"])  # 6 = 4 + padded 2
  printed = capsys.readouterr().out
  assert "fid" in printed and "precision" in printed
  metrics = json.loads(out.read_text())
  assert metrics["protocol"]["num_samples"] == 6 and metrics["protocol"]["resize"] == "pytorch_fid"
  assert "pytorch-fid's resizing (the default)" in metrics["protocol"]["resize_reason"]

  # The same metrics from one unbatched, unsharded forward of the network on all 13 images.
  variables, model = files["variables"], InceptionV3()
  images = np.concatenate([files["images"], files["ref_images"]])
  all_pool, _ = jax.jit(model.apply)(variables, images)
  pool, ref_pool = all_pool[:6], all_pool[6:]
  # FID with the 6x6 Gram form: S = C^T C (rank 5), so tr sqrt(S R) = sum sqrt(eig(C R C^T)).
  x = np.asarray(pool, np.float64)
  c = (x - x.mean(0)) / np.sqrt(len(x) - 1)
  ev = np.clip(np.linalg.eigvalsh(c @ files["sigma"] @ c.T), 0, None)
  diff = x.mean(0) - files["mu"]
  want_fid = diff @ diff + np.sum(c * c) + np.trace(files["sigma"]) - 2 * np.sqrt(ev).sum()
  want_is = fid.inception_score(np.asarray(adm_logits(variables, pool)))
  want_pr = precision_recall.precision_recall(np.asarray(ref_pool), np.asarray(pool))
  assert metrics["fid"] == pytest.approx(want_fid, rel=1e-5)
  assert metrics["inception_score"] == pytest.approx(want_is, rel=1e-5)
  assert (metrics["precision"], metrics["recall"]) == pytest.approx(want_pr)


def _save(files, name, **arrays):
  path = files["dir"] / name
  np.savez(path, **arrays)
  return str(path)


@pytest.mark.parametrize("kind,match", [
    ("float", "must be uint8 pixel values in \\[0, 255\\], got dtype float32"),
    ("nchw", "looks like NCHW"),
    ("range", "pixel values must lie in \\[0, 255\\], found \\[-3, 300\\]"),
])
def test_cli_rejects_bad_samples(files, kind, match, capsys):
  images = files["images"].astype(np.int16)
  if kind == "float":
    images = images.astype(np.float32) / 255
  elif kind == "nchw":
    images = images.transpose(0, 3, 1, 2)
  else:
    images[0, 0, 0, 0], images[1, 0, 0, 0] = -3, 300
  path = _save(files, f"bad_{kind}.npz", arr_0=images)
  _expect_error(capsys, evaluate.main(_argv(files, samples=path)), match)


def test_cli_rejects_reference_without_statistics(files, capsys):
  path = _save(files, "ref_no_stats.npz", arr_0=files["ref_images"], mu=files["mu"])
  _expect_error(capsys, evaluate.main(_argv(files, reference=path)),
                "has no 'mu' and 'sigma' reference statistics")


def test_cli_rejects_missing_weights(files, capsys):
  _expect_error(capsys, evaluate.main(_argv(files, inception=str(files["dir"] / "missing.pth"))),
                "weight file .* not found; .*nothing is downloaded")


def test_npz_reader_streams_plain_and_compressed(files):
  images = np.random.default_rng(1).integers(0, 256, (7, 5, 4, 3), dtype=np.uint8)
  for save in (np.savez, np.savez_compressed):
    path = files["dir"] / f"stream_{save.__name__}.npz"
    save(path, arr_0=images, other=np.zeros(3))
    source = sample_io.open_images(path)
    batches = list(source.batches(3))
    assert len(source) == 7 and [len(b) for b in batches] == [3, 3, 1]
    np.testing.assert_array_equal(np.concatenate(batches), images)


def test_folder_reader(files):
  folder = files["dir"] / "pngs"
  folder.mkdir()
  images = np.random.default_rng(2).integers(0, 256, (3, 6, 5, 3), dtype=np.uint8)
  for i, im in enumerate(images):
    Image.fromarray(im).save(folder / f"{i:03d}.png")
  Image.fromarray(images[0, :, :, 0]).save(folder / "003.png")  # greyscale -> RGB
  source = sample_io.open_images(folder)
  got = np.concatenate(list(source.batches(2)))
  np.testing.assert_array_equal(got[:3], images)
  np.testing.assert_array_equal(got[3], np.repeat(images[0, :, :, :1], 3, axis=2))
  Image.fromarray(images[0, :4]).save(folder / "004.png")
  with pytest.raises(ValueError, match="004.png: size 5x4 differs .* 5x6"):
    sample_io.open_images(folder)
  (folder / "004.png").unlink()
  reference = sample_io.open_reference(folder)
  assert reference.mu is None and len(reference.images) == 4


def test_reference_without_images_keeps_statistics(files, capsys):
  path = _save(files, "ref_stats_only.npz", mu=files["mu"][:4], sigma=np.eye(4))
  reference = sample_io.open_reference(path)
  assert reference.images is None and reference.sigma.shape == (4, 4)
  _expect_error(capsys, evaluate.main(_argv(files, reference=path)), "reference statistics have dimension 4, .* 2048")
  _expect_error(capsys, evaluate.main(_argv(files, reference=path) + ["--recompute-reference-stats"]),
                "--recompute-reference-stats needs reference images")


def test_adm_reference_batch_defaults_to_adm_resizing_and_refuses_pytorch_fid(files, capsys, monkeypatch):
  """An ADM reference batch (mu_s/sigma_s beside mu/sigma) was made with ADM's TF1 resizing: the CLI builds its
  Inception with that resizing by default, refuses pytorch-fid's against the file's statistics, and allows it when
  both sides are recomputed. (The numerics of both resizings are tests/test_inception.py's.)"""
  adm = files["dir"] / "adm_ref.npz"
  np.savez(adm, arr_0=files["ref_images"], mu=files["mu"], sigma=files["sigma"], mu_s=files["mu"][:16],
           sigma_s=files["sigma"][:16, :16])
  asked = []

  def load_inception(path, resize):  # records what the command asks for, then stops before the compile
    asked.append(resize)
    raise evaluate.UserError("stopped after choosing the resizing")

  monkeypatch.setattr(evaluate.inception_convert, "load_inception", load_inception)
  for extra, want in (([], "tf1"), (["--resize", "tf1"], "tf1"), (["--recompute-reference-stats"], "pytorch_fid"),
                      (["--resize", "pytorch_fid", "--recompute-reference-stats"], "pytorch_fid")):
    _expect_error(capsys, evaluate.main(_argv(files, reference=str(adm)) + extra), "stopped after choosing")
    assert asked.pop() == want, extra
  _expect_error(capsys, evaluate.main(_argv(files, reference=str(adm), resize="pytorch_fid")),
                "--resize pytorch_fid against an ADM reference batch")
  assert not asked  # refused before any weights were read
  _expect_error(capsys, evaluate.main(_argv(files)), "stopped after choosing")  # a plain mu/sigma file
  assert asked.pop() == "pytorch_fid"
  ref = sample_io.open_reference(str(adm))
  assert ref.adm and evaluate.choose_resize(None, ref, False)[1].startswith("ADM reference batch")
