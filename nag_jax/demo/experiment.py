"""The demo experiment: classifier, SiT variants, the sampling grid with its metrics, g_phi and the noise shift.

Every sampler configuration is compiled once (`build_sampler`, cached) and called with each seed's key,
so every guidance setting sees the same initial noise and SDE noises for a given seed.
"""
from __future__ import annotations

import contextlib
import dataclasses
import pathlib
import time
from typing import Any

import jax
import numpy as np
import tqdm

from nag_jax.data import digits_arrays
from nag_jax.demo import classifier, models
from nag_jax.demo.config import DemoConfig, Setting, run_name, sampler_config
from nag_jax.evaluation import fid, precision_recall, shift_analysis
from nag_jax.evaluation.features import extract_features
from nag_jax.sampling.pipeline import build_sampler

METRICS = ("fd", "fd_mlp", "accuracy", "precision", "recall")
BRANCH_TIMES = (0.1, 0.3, 0.5, 0.7, 0.9, 0.99)  # SiT time, 1 = data


class Timer:
  """Wall-clock and process CPU seconds per named stage (CPU counts every thread of this process)."""

  def __init__(self):
    self.stages: dict[str, dict[str, float]] = {}

  @contextlib.contextmanager
  def __call__(self, name: str):
    wall, cpu = time.perf_counter(), time.process_time()
    yield
    self.stages[name] = {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}


class Evaluator:
  """Classifier features of all real digits (the reference) and the metrics of a set of samples.

  FD, precision / recall (k = 3) and class accuracy use the CNN; "fd_mlp" is the FD in the MLP's features.
  """

  def __init__(self, params: dict[str, Any], real: np.ndarray):
    self.params, self.fns = params, {k: classifier.apply_fn(k) for k in params}
    self.reference = {k: self.features(k, real)["features"] for k in params}
    self.stats = {k: fid.compute_statistics(f) for k, f in self.reference.items()}
    self.radii = precision_recall.manifold_radii(self.reference["cnn"])

  def features(self, kind: str, images: np.ndarray) -> dict[str, np.ndarray]:
    return extract_features(self.fns[kind], self.params[kind], images, batch_size=500, progress=False)

  def _fd(self, kind: str, features: np.ndarray) -> float:
    return fid.frechet_distance(*fid.compute_statistics(features), *self.stats[kind])

  def __call__(self, images: np.ndarray, labels: np.ndarray, pr: bool = True) -> dict[str, float]:
    cnn = self.features("cnn", images)
    m = {"fd": self._fd("cnn", cnn["features"]), "fd_mlp": self._fd("mlp", self.features("mlp", images)["features"]),
         "accuracy": classifier.accuracy(cnn["logits"], labels)}
    if pr:
      m["precision"], m["recall"] = precision_recall.precision_recall(self.reference["cnn"], cnn["features"],
                                                                      reference_radii=self.radii)
    return m


class Grid:
  """Samples and scores (model, sampler, guidance) settings over the seeds; one compile per configuration."""

  def __init__(self, dc: DemoConfig, evaluator: Evaluator, bar: tqdm.tqdm):
    self.dc, self.evaluator, self.bar = dc, evaluator, bar
    self.labels = np.arange(dc.num_samples, dtype=np.int32) % 10
    self.samplers: dict[tuple, Any] = {}
    self.pictures: dict[tuple[str, str, str], np.ndarray] = {}

  def key(self, i: int) -> jax.Array:
    return jax.random.fold_in(jax.random.key(self.dc.seed), 1000 + i)

  def score(self, variant: str, model_config, params, method: str, steps: int, s: Setting) -> dict:
    """{metric: [value per seed]}; keeps seed 0's first samples for the picture grids."""
    spec = (model_config, sampler_config(method, steps), s.guidance(self.dc.pseudo_level))
    if spec not in self.samplers:
      self.samplers[spec] = build_sampler(*spec)
    out = {m: [] for m in METRICS}
    for i in range(self.dc.num_seeds):
      self.bar.set_description(f"{variant} {run_name(method, steps)} {s.label}")
      x = np.clip(np.asarray(self.samplers[spec](params, self.key(i), self.labels)["latents"]), -1, 1)
      if i == 0:
        self.pictures[(variant, run_name(method, steps), s.name)] = x[:10 * self.dc.grid_per_class]
      for k, v in self.evaluator(x, self.labels).items():
        out[k].append(v)
      self.bar.update()
    return out


def classifiers(dc: DemoConfig, images: np.ndarray, labels: np.ndarray, folder: pathlib.Path, *,
                progress: bool = True, reuse: bool = False) -> tuple[Evaluator, dict]:
  """(evaluator, held-out accuracies): the CNN and MLP trained on 80% of the digits, saved into `folder`.

  With `reuse`, classifiers already in `folder` from the same seed and steps are loaded instead.
  """
  key = jax.random.key(dc.seed)
  train_idx, test_idx = classifier.split(len(images), jax.random.fold_in(key, 1))
  meta = {"seed": dc.seed, "steps": dc.classifier_steps, "image_size": dc.image_size}
  clf = classifier.load(folder, meta, images.shape[1:]) if reuse else None
  if clf is None:
    clf = {k: classifier.train(k, images[train_idx], labels[train_idx], jax.random.fold_in(key, 2),
                               steps=dc.classifier_steps, progress=progress) for k in classifier.KINDS}
    classifier.save(folder, clf, meta)
  evaluator = Evaluator(clf, images)
  acc = {k: classifier.accuracy(evaluator.features(k, images[test_idx])["logits"], labels[test_idx]) for k in clf}
  return evaluator, {"test_accuracy": acc["cnn"], "test_accuracy_mlp": acc["mlp"], "train_size": len(train_idx),
                     "test_size": len(test_idx), "feature_dim": classifier.FEATURES}


def real_baseline(dc: DemoConfig, evaluator: Evaluator, images: np.ndarray, labels: np.ndarray) -> dict:
  """FD and classifier accuracy of random real subsets of the sample size (the floor at this N)."""
  out = {"fd": [], "fd_mlp": [], "accuracy": []}
  for i in range(dc.num_seeds):
    idx = np.asarray(jax.random.permutation(jax.random.fold_in(jax.random.key(dc.seed), 2000 + i),
                                            len(images)))[:dc.num_samples]
    for k, v in evaluator(images[idx], labels[idx], pr=False).items():
      out[k].append(v)
  return out


def noise_shift(dc: DemoConfig, model: pathlib.Path, estimator: pathlib.Path, out: pathlib.Path) -> dict:
  """The noise-shift CLI (unguided and NAG at each w of `shift_nag`) into out/w*; {f"w{w:g}": its report}.

  The reports' "dir" is relative to the demo's output folder (out's parent), so the folder can move.
  """
  reports = {}
  for w in dc.shift_nag:
    report = shift_analysis.run(out / f"w{w:g}", model, estimator, "digits", sampler="sde",
                                num_steps=dc.shift_steps, settings=("none", "nag"),
                                strengths=shift_analysis.Strengths(nag_scale=w), num_samples=dc.shift_samples,
                                batch_size=dc.shift_samples, t_values=dc.shift_t, seed=dc.seed)
    reports[f"w{w:g}"] = {
        "dir": f"{out.name}/w{w:g}", "num_samples": report["num_samples"], "levels": report["levels"],
        "mean_shift": report["mean_shift"],
        "per_step": {n: {k: s[k] for k in ("mean", "std", "shift", "shift_vs_forward")}
                     for n, s in report["per_step"].items()},
        "selected": [{k: ({f: c[f] for f in c if f != "density"} if isinstance(c, dict) else c)
                      for k, c in row.items()} for row in report["selected"]]}
  return reports


def run(dc: DemoConfig, out: pathlib.Path, *, progress: bool = True) -> tuple[dict, dict]:
  """Runs everything into `out`; returns (JSON-able results, {(variant, run, setting): sample images})."""
  timer, key = Timer(), jax.random.key(dc.seed)
  images, labels = digits_arrays(dc.image_size)
  results: dict[str, Any] = {"config": dataclasses.asdict(dc), "models": {}, "grid": {}}
  with timer("classifier"):
    evaluator, results["classifier"] = classifiers(dc, images, labels, out / "runs" / "classifier", progress=progress)
    results["real"] = real_baseline(dc, evaluator, images, labels)
  trained = {}
  for v in dc.variants:
    with timer(f"train {v.name}"):
      model_config, params, losses = models.train_variant(dc, v, out / "runs" / v.name, progress=progress)
      branch = models.branch_errors(model_config, params, images[:512], labels[:512], jax.random.fold_in(key, 3),
                                    BRANCH_TIMES, dc.pseudo_level)
    trained[v.name] = (model_config, params)
    results["models"][v.name] = {
        "label": v.label, "time_scale": v.time_scale, "noise_dropout": v.noise_dropout,
        "params": int(sum(p.size for p in jax.tree.leaves(params))), "losses": losses,
        "embedding_gap": models.embedding_gap(v.time_scale, dc.pseudo_level),
        "branch": {"times": list(BRANCH_TIMES), **branch}}
  jobs = len(dc.runs) * len(dc.settings) + (len(dc.variants) - 1) * len(dc.variant_runs) * len(dc.variant_settings)
  with timer("sampling + metrics"), tqdm.tqdm(total=jobs * dc.num_seeds, unit="run", disable=not progress,
                                               leave=False) as bar:
    grid = Grid(dc, evaluator, bar)
    for v in dc.variants:
      todo = [(r, dc.settings) for r in dc.runs] if v is dc.variants[0] else [
          (r, [dc.setting(s) for s in dc.variant_settings]) for r in dc.variant_runs]
      results["grid"][v.name] = {run_name(*r): {s.name: grid.score(v.name, *trained[v.name], *r, s) for s in ss}
                                 for r, ss in todo}
  with timer("g_phi"):
    main_dir = out / "runs" / dc.variants[0].name / "model"
    estimator, gphi_losses = models.train_estimator(dc, trained[dc.variants[0].name][0], main_dir,
                                                    out / "runs" / "gphi", progress=progress)
  with timer("noise shift"):
    results["noise_shift"] = noise_shift(dc, main_dir, estimator, out / "noise_shift")
  results["gphi_losses"] = gphi_losses
  results["timing"] = timer.stages
  return results, grid.pictures
