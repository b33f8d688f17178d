"""The `--study`: NAG's weights, NAG on top of CFG, intervals, step counts and peers, with 95% intervals.

Models come from the demo's output folder when they are there with the same training budget (else they
are trained and saved there): the main SiT of every training seed, its weak version (autoguidance's bad
model: the same network trained `weak_steps`), an Input Perturbation model and a longer-trained g_phi.
Every setting is sampled with the same sampling seeds on every training seed, so settings are compared
pairwise on the same (training seed, sampling seed) runs.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import time
from typing import Any

import jax
import numpy as np
import tqdm

from nag_jax.data import digits_arrays
from nag_jax.demo import experiment, models, study_report
from nag_jax.demo.config import DemoConfig, StudyConfig, run_name, sampler_config
from nag_jax.demo.study_cells import Cell, best, interval_cells, peer_cells, rows_per_step, sweep_cells
from nag_jax.demo.study_stats import shift_summary
from nag_jax.errors import UserError
from nag_jax.evaluation import shift_analysis
from nag_jax.guidance import GuidanceConfig
from nag_jax.sampling.pipeline import build_sampler

METRICS = experiment.METRICS


class Trained:
  """The study's models per training seed, loaded from `out/runs` or trained there."""

  def __init__(self, dc: DemoConfig, sc: StudyConfig, out: pathlib.Path, progress: bool):
    self.dc, self.sc, self.runs, self.progress = dc, sc, out / "runs", progress
    self.models: dict[tuple[str, int], tuple[Any, Any]] = {}
    self.reused: dict[str, bool] = {}
    self.losses: dict[str, list] = {}

  def folder(self, kind: str, seed: int) -> pathlib.Path:
    """runs/main is the demo's own main model (seed 0 there); other seeds and kinds get their own folder."""
    if kind == "main" and seed == self.dc.seed:
      return self.runs / self.dc.variants[0].name
    return self.runs / f"{kind}_seed{seed}"

  def get(self, kind: str, seed: int) -> tuple[Any, Any]:
    """(model config, params) of kind main | weak | ip at training seed `seed`."""
    if (kind, seed) not in self.models:
      dc = dataclasses.replace(self.dc, seed=seed)
      if kind == "weak":
        dc = dataclasses.replace(dc, train_steps=self.sc.weak_steps, warmup_steps=min(dc.warmup_steps,
                                                                                     self.sc.weak_steps // 4))
      gamma = self.sc.ip_gamma if kind == "ip" else 0.0
      config, params, losses, reused = models.load_or_train(dc, self.dc.variants[0], self.folder(kind, seed),
                                                            progress=self.progress, input_perturbation=gamma)
      self.models[(kind, seed)] = (config, params)
      self.reused[f"{kind} seed {seed}"], self.losses[f"{kind} seed {seed}"] = reused, losses
    return self.models[(kind, seed)]


class Scorer:
  """Samples and scores cells; one compile per (model, sampler, guidance); seeds shared by every cell."""

  def __init__(self, dc: DemoConfig, trained: Trained, evaluator: experiment.Evaluator, bar: tqdm.tqdm):
    self.dc, self.trained, self.evaluator, self.bar = dc, trained, evaluator, bar
    self.labels = np.arange(dc.num_samples, dtype=np.int32) % 10
    self.samplers: dict[tuple, Any] = {}

  def key(self, i: int) -> jax.Array:
    return jax.random.fold_in(jax.random.key(self.dc.seed), 1000 + i)

  def __call__(self, cell: Cell, run: tuple[str, int], train_seeds: tuple[int, ...], num_seeds: int,
               out: dict | None = None) -> dict:
    """{"runs": [[train seed, sampling seed]...], metric: [value per run]}, extending `out`'s runs."""
    out = out or {"runs": [], **{m: [] for m in METRICS}}
    done = {tuple(r) for r in out["runs"]}
    for ts in train_seeds:
      if all((ts, i) in done for i in range(num_seeds)):
        continue
      config, params = self.trained.get(cell.model, ts)
      config = dataclasses.replace(config, dtype=cell.dtype)
      parent_config, parent_params = self.trained.get("weak", ts) if cell.weak else (None, None)
      g = dataclasses.replace(cell.guidance, pseudo_level=self.dc.pseudo_level)
      spec = (config, sampler_config(*run), g, parent_config)
      if spec not in self.samplers:
        self.samplers[spec] = build_sampler(config, spec[1], g, parent_config=parent_config)
      for i in (i for i in range(num_seeds) if (ts, i) not in done):
        self.bar.set_description(f"{run_name(*run)} {cell.label} (train seed {ts})")
        x = self.samplers[spec](params, self.key(i), self.labels, parent_params=parent_params)["latents"]
        for k, v in self.evaluator(np.clip(np.asarray(x), -1, 1), self.labels).items():
          out[k].append(float(v))
        out["runs"].append([ts, i])
        self.bar.update()
    return out


class Study:
  """Runs the phases in order (later ones use the best weights found by earlier ones) into one results dict."""

  def __init__(self, dc: DemoConfig, sc: StudyConfig, out: pathlib.Path, progress: bool):
    self.dc, self.sc, self.out, self.progress = dc, sc, out, progress
    self.trained = Trained(dc, sc, out, progress)
    self.results: dict[str, Any] = {"cells": {}, "labels": {}, "rows": {}, "num_samples": dc.num_samples,
                                    "config": dataclasses.asdict(sc)}
    self.scorer: Scorer | None = None
    self.after = None  # called after every scored cell (saves partial results and the report so far)
    self.earlier_timing: dict[str, dict] = {}  # stage times of the runs this one resumed

  def run_cells(self, phase: str, run: tuple[str, int], cells: list[Cell], train_seeds, num_seeds,
                section: str = "cells") -> None:
    """Scores the cells' missing (training seed, sampling seed) runs at `run` into results[section] (a cell keeps
    its first phase)."""
    store = self.results.setdefault(section, {}).setdefault(run_name(*run), {})
    for c in cells:
      old = store.get(c.name)
      before = len(old["runs"]) if old else 0
      store[c.name] = {**self.scorer(c, run, tuple(train_seeds), num_seeds, old), "phase": (old or {}).get(
          "phase", phase)}
      self.results["labels"][c.name] = c.label
      self.results["rows"][c.name] = rows_per_step(c.guidance, c.weak)
      if self.after is not None and len(store[c.name]["runs"]) > before:
        self.after()

  def step_cells(self, s_best: float, w_best: float, long: bool) -> list[Cell]:
    """The settings repeated at other step counts (fewer at the long runs)."""
    sc = self.sc
    nags = (w_best,) if long else sc.step_nag
    cells = [Cell("none", "unguided", GuidanceConfig()), Cell(f"cfg{s_best:g}", f"CFG {s_best:g}",
                                                               GuidanceConfig(cfg_scale=s_best))]
    cells += [Cell(f"nag{w:g}", f"NAG {w:g}", GuidanceConfig(nag_scale=w)) for w in nags]
    return cells + [Cell(f"cfg{s_best:g}+nag{w:g}", f"CFG {s_best:g} + NAG {w:g}",
                         GuidanceConfig(cfg_scale=s_best, nag_scale=w)) for w in nags]

  def phases(self, s_best: float, w_best: float, both_best: str) -> list[tuple[str, tuple[str, int], list[Cell], tuple, int]]:
    """(phase, run, cells, training seeds, sampling seeds) after the sweep, most important first."""
    sc, first, seeds = self.sc, self.sc.sweep_runs[0], self.sc.train_seeds
    refs = self.step_cells(s_best, w_best, True)[:3]
    both = next(c for c in sweep_cells(sc, True) if c.name == both_best)
    out = [("noise shift", first, [], (), 0), ("held out", first, refs + [both], seeds, sc.num_seeds)]
    peers = (peer_cells(sc, 1.0) if sc.peers_alone else []) + peer_cells(sc, s_best)
    out.append(("peers", first, peers, seeds[:1], sc.num_seeds))
    out.append(("peers (own models, every training seed)", first, [c for c in peers if c.weak or c.model != "main"],
                seeds, sc.num_seeds))
    out.append(("intervals", first, interval_cells(sc, s_best, w_best), seeds[:1], sc.num_seeds))
    out += [("steps", r, self.step_cells(s_best, w_best, True), seeds[:1], sc.step_seeds)
            for r in sc.step_runs if r[1] > 100]
    out += [("sweep", r, sweep_cells(sc, r in sc.nested_runs), seeds[:1], sc.num_seeds) for r in sc.sweep_runs[1:]]
    picked = {"none": refs[0], "cfg": refs[1], "nag": refs[2], "both": both}
    out.append(("bfloat16", first, [dataclasses.replace(picked[k], dtype="bfloat16") for k in sc.bf16],
                seeds[:1], sc.num_seeds))
    return out

  def run(self, report=None) -> dict:
    """Everything, most important first; `report(results)` after each cell; resumes a matching partial.json.

    Order: unguided, CFG and NAG alone at the first sweep run (they fix the best weights), the short step
    counts, the NAG + CFG grid (small NAG weights first), then `phases`.
    """
    dc, sc = self.dc, self.sc
    partial = self.out / "study" / "partial.json"
    if partial.is_file():
      old = json.loads(partial.read_text())
      now = json.loads(json.dumps(self.results["config"]))
      # a field added to StudyConfig since that run counts as its default value there
      defaults = json.loads(json.dumps(dataclasses.asdict(StudyConfig())))
      if {**defaults, **old.get("config", {})} == now and old.get("num_samples") == dc.num_samples:
        self.results.update({k: old[k] for k in ("cells", "bfloat16", "labels", "rows", "noise_shift") if k in old})
        self.results["resumed"] = old.get("total", old.get("resumed"))  # cumulative time of the runs before
        self.earlier_timing = old.get("timing", {})
    images, labels = digits_arrays(dc.image_size)
    timer = experiment.Timer()
    self.after = lambda: self.save(timer, report)
    with timer("classifier"):
      evaluator, self.results["classifier"] = experiment.classifiers(
          dc, images, labels, self.out / "runs" / "classifier", progress=self.progress, reuse=True)
    first, seed0 = sc.sweep_runs[0], sc.train_seeds[:1]
    sweep = {c.name: c for c in sweep_cells(sc, first in sc.nested_runs)}
    short = [r for r in sc.step_runs if r[1] <= 100]
    with tqdm.tqdm(unit="run", disable=not self.progress, leave=False) as bar:
      self.scorer = Scorer(dc, self.trained, evaluator, bar)
      self.check_resumed(partial, sweep["none"], first)
      main = self.results["cells"].setdefault(run_name(*first), {})
      with timer(f"unguided and CFG {run_name(*first)}"):
        self.run_cells("sweep", first, [sweep["none"]] + [sweep[f"cfg{s:g}"] for s in sc.cfg], seed0, sc.num_seeds)
      s_best = float(best(main, [f"cfg{s:g}" for s in sc.cfg], seed0[0])[3:])
      self.results["best"] = {"cfg": s_best}
      with timer(f"first NAG and NAG + CFG {s_best:g} {run_name(*first)}"):  # the two claims' first answers
        cells = [sweep[f"nag{w:g}"] for w in sc.step_nag if f"nag{w:g}" in sweep]
        cells += [sweep[n] for n in (f"cfg{s_best:g}+nag{w:g}" for w in sc.grid_nag[:3]) if n in sweep]
        self.run_cells("sweep", first, cells, seed0, sc.num_seeds)
      if short:
        with timer(f"steps {run_name(*short[0])}"):
          self.run_cells("steps", short[0], self.step_cells(s_best, sc.step_nag[0], False), seed0, sc.step_seeds)
      with timer(f"NAG alone {run_name(*first)}"):
        self.run_cells("sweep", first, [sweep[f"nag{w:g}"] for w in sc.nag], seed0, sc.num_seeds)
      w_best = float(best(main, [f"nag{w:g}" for w in sc.nag], seed0[0])[3:])
      self.results["best"]["nag"] = w_best
      for run in short[1:]:
        with timer(f"steps {run_name(*run)}"):
          self.run_cells("steps", run, self.step_cells(s_best, w_best, False), seed0, sc.step_seeds)
      with timer(f"NAG + CFG grid {run_name(*first)}"):
        grid = sorted((c for c in sweep.values() if "+" in c.name),
                      key=lambda c: (c.guidance.nag_form != "three_branch", c.guidance.nag_scale))
        self.run_cells("sweep", first, grid, seed0, sc.num_seeds)
      both_best = best(main, [n for n in main if n.startswith("cfg") and "+nag" in n], seed0[0])
      self.results["best"]["both"] = both_best
      for phase, run, cells, seeds, n in self.phases(s_best, w_best, both_best):
        with timer(f"{phase} {run_name(*run)}" if cells else phase):
          if phase == "noise shift":
            if "noise_shift" not in self.results:  # (resumed results keep theirs: the numerics were checked)
              self.results["noise_shift"] = self.noise_shift()
              self.after()
          else:  # bfloat16 results apart: every other part of the report reads float32 cells only
            self.run_cells(phase, run, cells, seeds, n, "bfloat16" if phase == "bfloat16" else "cells")
    self.after = None
    self.save(timer)
    return self.results

  def check_resumed(self, partial: pathlib.Path, cell: Cell, run: tuple[str, int]) -> None:
    """Re-scores the first sampling seed of a resumed `cell`; other numerics (another CPU, XLA or jax) give other
    numbers, and mixing them would bias the paired differences, so a mismatch is an error."""
    old = self.results["cells"].get(run_name(*run), {}).get(cell.name)
    if not old:
      return
    ts = old["runs"][0][0]
    was, now = old["fd"][old["runs"].index([ts, 0])], self.scorer(cell, run, (ts,), 1)["fd"][0]
    if not np.isclose(now, was, rtol=1e-6, atol=0):
      raise UserError(f"{partial} was computed with other numerics ({cell.label} {run_name(*run)} FD {was:.6g} "
                      f"there, {now:.6g} here: another CPU, jax or XLA); move it away to start over, or resume "
                      "where it was made")

  def save(self, timer: experiment.Timer, report=None) -> None:
    """Writes the results so far to study/partial.json and, with `report`, the report of what is done."""
    both = (self.earlier_timing, timer.stages)
    self.results["timing"] = {k: {m: sum(t.get(k, {}).get(m, 0.0) for t in both) for m in ("wall_s", "cpu_s")}
                              for k in {**self.earlier_timing, **timer.stages}}
    self.results["models"] = {"reused": self.trained.reused, "losses": self.trained.losses}
    (self.out / "study" / "partial.json").write_text(json.dumps(self.results))
    if report is not None and "best" in self.results:
      report(self.results)

  def noise_shift(self) -> dict:
    """g_phi's bias on forward states and the shift of unguided and NAG sampling per level, with 95% intervals."""
    dc, sc = self.dc, self.sc
    main_dir = self.trained.folder("main", dc.seed) / "model"
    config, _ = self.trained.get("main", dc.seed)
    if sc.gphi_steps:
      gdc = dataclasses.replace(dc, gphi_steps=sc.gphi_steps)
      work = self.out / "runs" / f"gphi_{sc.gphi_steps}"
      found = models.reusable_estimator(work, main_dir, sc.gphi_steps)
      estimator, losses = found or models.train_estimator(gdc, config, main_dir, work, progress=self.progress)
    else:  # the demo's own g_phi
      found = models.reusable_estimator(self.out / "runs" / "gphi", main_dir, dc.gphi_steps)
      if found is None:
        raise UserError(f"--study with gphi_steps 0 needs the demo's g_phi in {self.out / 'runs' / 'gphi'}")
      estimator, losses = found
    levels, est, _ = shift_analysis.measure(
        main_dir, estimator, "digits", sampler="sde", num_steps=dc.shift_steps, settings=("none", "nag"),
        strengths=shift_analysis.Strengths(nag_scale=sc.shift_nag), num_samples=sc.shift_samples,
        batch_size=min(sc.shift_samples, 500), t_values=dc.shift_t, seed=dc.seed)
    np.savez(self.out / "study" / "shift_estimates.npz", levels=levels, **est)
    return {**shift_summary(levels, est, dc.shift_t, sc.bootstrap, sc.shift_nag, losses),
            "steps": dc.shift_steps, "gphi_steps": sc.gphi_steps or dc.gphi_steps}


def run_study(dc: DemoConfig, sc: StudyConfig, out: pathlib.Path, command: str, *, progress: bool = True) -> str:
  """The whole study into `out` (models in out/runs, report in out/study); returns the claims' sentences."""
  wall, cpu, load = time.perf_counter(), time.process_time(), os.getloadavg()[0]
  (out / "study").mkdir(parents=True, exist_ok=True)

  def report(results: dict, done: bool = False) -> str:
    before = results.get("resumed") or {"wall_s": 0.0, "cpu_s": 0.0, "sessions": 0}  # the runs this one resumed
    results["total"] = {"wall_s": time.perf_counter() - wall + before["wall_s"], "complete": done,
                        "cpu_s": time.process_time() - cpu + before["cpu_s"], "sessions": before.get("sessions", 1) + 1}
    results["machine"] = {"cpus": os.cpu_count(), "load_avg_start": load, "load_avg": os.getloadavg()[0]}
    return study_report.write(out / "study", results, sc, command)
  return report(Study(dc, sc, out, progress).run(report), done=True)
