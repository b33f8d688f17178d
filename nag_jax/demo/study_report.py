"""The study's report: the two claims in one sentence each, tables with 95% t intervals, and its plots.

Intervals are two-sided 95% Student-t intervals over the (training seed, sampling seed) runs of a setting;
differences between settings are paired on the same runs. The best weights are chosen on all runs and,
with two or more training seeds, re-checked on the runs of the training seeds they were not chosen on.
"""
from __future__ import annotations

import json
import pathlib

import numpy as np

from nag_jax.demo.config import StudyConfig
from nag_jax.demo.study_cells import best
from nag_jax.demo.study_plots import fd_pr_plot, shift_plots
from nag_jax.demo.study_stats import t_interval


def ci(values, digits: int = 2) -> str:
  """'mean ± half-width' of the 95% t interval."""
  m, h = t_interval(values)
  return f"{m:.{digits}f} ± {h:.{digits}f}"


def paired(a: dict, b: dict, metric: str = "fd", runs: set | None = None) -> np.ndarray:
  """a - b of `metric` on the runs (training seed, sampling seed) both have (restricted to `runs`)."""
  vb = {tuple(r): v for r, v in zip(b["runs"], b[metric])}
  return np.array([v - vb[tuple(r)] for r, v in zip(a["runs"], a[metric])
                   if tuple(r) in vb and (runs is None or tuple(r) in runs)])


def on_runs(cell: dict, other: dict, metric: str = "fd") -> list[float]:
  """`cell`'s `metric` on the runs `other` has too (so a reference is shown on the runs it is compared on)."""
  theirs = {tuple(r) for r in other["runs"]}
  return [v for r, v in zip(cell["runs"], cell[metric]) if tuple(r) in theirs]


def diff_text(d: np.ndarray, base: float | None = None, digits: int = 2) -> str:
  """'+x.xx [lo, hi]' of a paired difference (and its size relative to `base`)."""
  m, h = t_interval(d)
  rel = f", {m / base:+.0%}" if base else ""
  return f"{m:+.{digits}f} [{m - h:+.{digits}f}, {m + h:+.{digits}f}{rel}]"


def _table(head: list[str], rows: list[list[str]]) -> str:
  lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
  return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def claim_nag_on_cfg(results: dict, run: str) -> dict:
  """Best NAG + CFG against the best CFG alone, both picked on the first training seed's runs, their paired
  FD difference there, and (when other training seeds ran them) the same two on the other seeds' runs."""
  cells = results["cells"][run]
  cfgs = [n for n in cells if n.startswith("cfg") and "+" not in n and "_" not in n]
  grid = [n for n in cells if n.startswith("cfg") and "+nag" in n]
  first = min(r[0] for r in cells["none"]["runs"])
  pick = {tuple(r) for r in cells["none"]["runs"] if r[0] == first}
  b_cfg, b_both = best(cells, cfgs, first), best(cells, grid, first)
  d = paired(cells[b_both], cells[b_cfg], runs=pick)
  out = {"best_cfg": b_cfg, "best_both": b_both, "diff": d.tolist(), "interval": t_interval(d),
         "base": float(np.mean([v for r, v in zip(cells[b_cfg]["runs"], cells[b_cfg]["fd"]) if tuple(r) in pick]))}
  test = {tuple(r) for r in cells[b_cfg]["runs"] if r[0] != first}
  dh = paired(cells[b_both], cells[b_cfg], runs=test)
  if dh.size:
    out["held_out"] = {"diff": dh.tolist(), "interval": t_interval(dh), "runs": int(dh.size)}
  return out


def claim_sentence(results: dict, run: str, c: dict) -> str:
  """One sentence: does the best NAG + CFG beat the best CFG alone at `run`, at which weights, with intervals."""
  labels = results["labels"]
  m, h = c["interval"]
  verdict = ("beats" if m + h < 0 else "is worse than" if m - h > 0 else "does not separate from")
  text = (f"{run}: the best NAG + CFG ({labels[c['best_both']]}) {verdict} the best CFG alone "
          f"({labels[c['best_cfg']]}): FD difference {diff_text(np.array(c['diff']), c['base'])} on the runs "
          "both were picked on")
  if "held_out" in c:
    text += (f"; on {c['held_out']['runs']} runs of the other training seed(s): "
             f"{diff_text(np.array(c['held_out']['diff']), c['base'])}")
  return text + "."


def steps_rows(results: dict) -> tuple[list[list[str]], list[str]]:
  """Per sampler and step count: NAG alone vs unguided and NAG on top of the best CFG vs that CFG (paired)."""
  rows, sentences = [], []
  best_cfg = f"cfg{results['best']['cfg']:g}"
  by_method: dict[str, list] = {}
  for run, cells in results["cells"].items():
    if "none" not in cells or best_cfg not in cells:
      continue
    nags = sorted(n for n in cells if n.startswith("nag") and "_" not in n)
    both = sorted(n for n in cells if n.startswith(best_cfg + "+nag") and "_" not in n)
    for n in nags:
      d = paired(cells[n], cells["none"])
      ref = on_runs(cells["none"], cells[n])
      rows.append([run, results["labels"][n], ci(ref), ci(cells[n]["fd"]), diff_text(d, float(np.mean(ref)))])
      by_method.setdefault(run.split()[0], []).append((int(run.split()[1]), n, t_interval(d)))
    for n in both:
      d = paired(cells[n], cells[best_cfg])
      ref = on_runs(cells[best_cfg], cells[n])
      rows.append([run, results["labels"][n], ci(ref), ci(cells[n]["fd"]), diff_text(d, float(np.mean(ref)))])
  for method, items in sorted(by_method.items()):
    steps = sorted({s for s, _, _ in items})
    gone = [s for s in steps if not any(m + h < 0 for s2, _, (m, h) in items if s2 == s)]
    kept = ", ".join(str(s) for s in steps if s not in gone)
    measured = ", ".join(map(str, steps))
    if not kept:
      sentences.append(f"{method}: NAG alone lowers FD separably (interval below 0) at none of the step counts "
                       f"measured ({measured}).")
      continue
    sentences.append(f"{method}: NAG alone lowers FD (interval below 0) at {kept} steps; its gain "
                     + (f"vanishes (interval reaches 0) at {', '.join(map(str, gone))} steps" if gone
                        else "holds at every step count") + f" measured ({measured}).")
  return rows, sentences


def setting_table(results: dict, run: str, names: list[str], ref: str = "none") -> str:
  cells = results["cells"][run]
  base = float(np.mean(cells[ref]["fd"]))
  rows = []
  for n in names:
    c = cells[n]
    d = "—" if n == ref else diff_text(paired(c, cells[ref]), base)
    rows.append([results["labels"][n], ci(c["fd"]), d, ci(c["precision"]), ci(c["recall"]), ci(c["accuracy"]),
                 str(results["rows"][n]), str(len(c["fd"]))])
  return _table(["setting", "FD", f"Δ FD vs {results['labels'][ref]} (paired)", "precision", "recall",
                 "class accuracy", "rows/step", "runs"], rows)


def grid_table(results: dict, run: str, sc: StudyConfig, suffix: str) -> str:
  """FD of CFG s (rows) x NAG w (columns), NAG 0 = CFG alone."""
  cells = results["cells"][run]
  head = ["CFG \\ NAG", "0"] + [f"{w:g}" for w in sc.nag]
  rows = []
  for s in sc.cfg:
    row = [f"{s:g}", ci(cells[f"cfg{s:g}"]["fd"])]
    row += [ci(cells[f"cfg{s:g}+nag{w:g}{suffix}"]["fd"]) if f"cfg{s:g}+nag{w:g}{suffix}" in cells else "—"
            for w in sc.nag]
    rows.append(row)
  return _table(head, rows)


def peer_table(results: dict, run: str) -> str:
  """Every peer on the same runs: alone vs unguided, on top of the best CFG vs that CFG."""
  cells = results["cells"][run]
  s = f"cfg{results['best']['cfg']:g}"
  w = f"nag{results['best']['nag']:g}"
  alone = ["none", w] + [n for n, c in cells.items() if c["phase"] == "peers" and not n.startswith(("cfg", "apg"))]
  ontop = [s, f"{s}+{w}"] + [n for n, c in cells.items() if c["phase"] == "peers" and n.startswith(("cfg", "apg"))
                             and n != s]
  rows = []
  for names, ref in ((alone, "none"), (ontop, s)):
    base = float(np.mean(cells[ref]["fd"]))
    for n in names:
      if n not in cells:
        continue
      c = cells[n]
      rows.append([results["labels"][n], ci(c["fd"]), "—" if n == ref else diff_text(paired(c, cells[ref]), base),
                   ci(c["precision"]), ci(c["recall"]), str(results["rows"][n]), str(len(c["runs"]))])
  return _table(["method", "FD", "Δ FD vs reference (paired)", "precision", "recall", "model rows/step", "runs"],
                rows)


def bf16_table(results: dict) -> str:
  """bfloat16 against float32 sampling of the same model on the same runs, and float32's own spread over seeds."""
  rows = []
  for run, cells in results["bfloat16"].items():
    for n, c in cells.items():
      f32 = on_runs(results["cells"][run][n], c)
      d, sd = paired(c, results["cells"][run][n]), float(np.std(f32, ddof=1))
      rows.append([run, results["labels"][n], ci(f32), ci(c["fd"]), diff_text(d, float(np.mean(f32))),
                   f"{sd:.2f}", "yes" if abs(np.mean(d)) <= sd else "no"])
  return _table(["sampler", "setting", "FD float32", "FD bfloat16", "Δ FD bf16 − f32 (paired)",
                 "float32 SD over the runs", "Δ within the SD"], rows)


def shift_table(shift: dict) -> tuple[str, list[str]]:
  """Per level: g_phi's forward bias, shifts vs forward, NAG's reduction (all ± 95%), and a verdict."""
  p = shift["per_level"]
  rows, verdicts = [], []
  f = lambda mh: f"{mh[0]:+.4f} ± {mh[1]:.4f}"
  for k, level in enumerate(p["level"]):
    (sn, hn), (r, hr) = p["none"][k], p["reduction"][k]
    if sn - hn > 0 and r - hr > 0:
      v = f"reduces it by {r:.4f} ± {hr:.4f} ({r / sn:.0%})"
    elif sn - hn > 0 and r + hr < 0:
      v = f"increases it by {-r:.4f} ± {hr:.4f}"
    elif sn - hn > 0:
      v = "no separable change"
    elif sn + hn < 0:
      v = "no positive shift to reduce (states look cleaner than forward ones)"
    else:
      v = "no shift separable from 0"
    rows.append([f"{level:.3f}", f(p["bias"][k]), f(p["none"][k]), f(p["nag"][k]), f(p["reduction"][k]), v])
    verdicts.append(v)
  head = ["ν", "g_phi bias on forward states", "unguided shift vs forward", f"NAG {shift['nag_scale']:g} shift vs forward",
          "reduction (unguided − NAG, paired)", "NAG"]
  return _table(head, rows), verdicts


def _sections(results: dict, sc: StudyConfig, out: pathlib.Path) -> tuple[list[str], list[str]]:
  """(report lines, printed sentences) of every part of the study that has run so far."""
  cells_by_run, lines, said = results["cells"], [], []
  runs = [r for r in (f"{m.upper()} {n}" for m, n in sc.sweep_runs) if r in cells_by_run]
  main = runs[0]
  best = results["best"]
  claim_runs = [r for r in runs + [r for r in cells_by_run if r not in runs]
                if "none" in cells_by_run[r] and any(n.startswith("cfg") and "+nag" in n for n in cells_by_run[r])]
  sentences = [claim_sentence(results, r, claim_nag_on_cfg(results, r)) for r in claim_runs]
  if len(claim_runs) > len(runs):
    sentences.append(f"Outside {', '.join(runs)} only CFG {best['cfg']:g} and NAG {', '.join(f'{w:g}' for w in sc.step_nag)} "
                     "on top of it ran, so 'best' there is among those.")
  lines += ["## Claim 1: NAG on top of the best CFG", "", *[f"- {x}" for x in sentences], ""]
  step_rows, step_sentences = steps_rows(results)
  lines += ["## Claim 2: NAG's gain as the steps grow", "", *[f"- {x}" for x in step_sentences], "",
            _table(["sampler", "setting", "reference FD", "FD", "Δ FD vs reference (paired)"], step_rows), "",
            "References: unguided for NAG alone, the best CFG for NAG on top of it, each on the runs of its row.", ""]
  said += sentences + step_sentences
  if "noise_shift" in results:
    shift = results["noise_shift"]
    shift_md, verdicts = shift_table(shift)
    curves, kde = shift_plots(out, shift)
    lines += ["## Noise shift with intervals", "",
              f"SDE {shift['steps']} steps: {shift['num_samples']} forward and {shift['num_samples']} sampled "
              f"trajectories; g_phi trained {shift['gphi_steps']} steps. Bias = mean g_phi estimate on forward "
              "states − ν (t interval); shifts = sampled − forward mean estimate (Welch interval), so g_phi's own "
              "bias cancels; the reduction is paired per trajectory (both samplers share the noise).", "",
              shift_md, "", f"![shift curves]({curves})", "", f"![densities]({kde})", ""]
    said += [f"noise shift at ν = {lv:.3f}: NAG {v}" for lv, v in zip(shift["per_level"]["level"], verdicts)]
  cells = cells_by_run[main]
  if "nag" in best and any(c["phase"] == "peers" for c in cells.values()):
    lines += ["## NAG beside its peers", "", f"{main}, on the same runs. Top: alone (reference unguided); bottom: "
              f"on top of the best CFG (reference CFG {best['cfg']:g}; CFG-Zero* and APG replace CFG's update at the "
              "same scale). Model rows per step count every row of the one batched call (autoguidance's weak model "
              "as one row). Δ is paired on the runs a row shares with its reference; peers with their own models "
              "(autoguidance, Input Perturbation) and the references also ran on the other training seed(s), "
              "hence their larger run counts.", "", peer_table(results, main), ""]
  if results.get("bfloat16"):
    lines += ["## bfloat16 sampling", "", "The same trained model sampled with `ModelConfig.dtype = \"bfloat16\"` "
              "(every dot's operands in bf16, accumulated in float32; biases, norms, softmax, the sampler state and "
              "the guidance algebra in float32) on the float32 settings' runs.", "", bf16_table(results), ""]
  nag_text = f"best NAG alone {best['nag']:g}" if "nag" in best else "NAG alone not finished"
  lines += ["## Weight sweep", "", f"Best CFG alone {best['cfg']:g}, {nag_text} (lowest mean FD at {main}, first "
            "training seed).", ""]
  for r in runs:
    here = cells_by_run[r]
    names = [n for n, c in here.items() if c["phase"] == "sweep" and "+" not in n]
    lines += [f"### {r}", "", setting_table(results, r, names), "", "NAG + CFG (three-branch), FD:", "",
              grid_table(results, r, sc, ""), ""]
    if any(n.endswith("_nested") for n in here):
      lines += ["NAG + CFG (nested), FD:", "", grid_table(results, r, sc, "_nested"), ""]
  interval_names = [n for n, c in cells.items() if c["phase"] == "intervals"]
  if interval_names:
    lines += ["## Guidance intervals", "", f"{main}; early = ν ∈ [{sc.early_late:g}, 1], late = ν ∈ "
              f"[0, {sc.early_late:g}].", "", setting_table(results, main, ["none", f"nag{best['nag']:g}",
                                                                        f"cfg{best['cfg']:g}"] + interval_names), ""]
  lines += ["## FD against precision and recall", "", f"![FD vs precision and recall]({fd_pr_plot(out, results, main)})",
            ""]
  return lines, said


def write(out: pathlib.Path, results: dict, sc: StudyConfig, command: str) -> str:
  """Writes results.json, the PNGs and report.md (of whatever has run) into `out`; returns the claims' sentences."""
  out.mkdir(parents=True, exist_ok=True)
  (out / "results.json").write_text(json.dumps(results, indent=1))
  t, machine = results["total"], results["machine"]
  runs = f" in {t['sessions']} runs (each resuming the last)" if t.get("sessions", 1) > 1 else ""
  status = "complete" if t.get("complete") else "PARTIAL (still running or cut short; phases so far: " + ", ".join(
      results["timing"]) + ")"
  lines = ["# NAG study: weights, NAG on top of CFG, intervals, step counts, peers, noise shift", "",
           f"`{command}`: {status}; {t['wall_s'] / 60:.1f} min wall, {t['cpu_s'] / 60:.1f} min CPU{runs} on "
           f"{machine['cpus']} cores (load average {machine['load_avg_start']:.2f} at the start, "
           f"{machine['load_avg']:.2f} now).", "",
           "Intervals: two-sided 95% Student-t over the runs (training seed × sampling seed) of a setting; Δ are "
           "paired differences on the same runs (same initial noise and SDE noise), [low, high, relative change]. "
           f"Training seeds {list(sc.train_seeds)} (sweeps on the first; the second re-tests the picked weights "
           f"and trains the peers' own models), {sc.num_seeds} sampling seeds, {results['num_samples']} samples "
           "each.", ""]
  body, said = _sections(results, sc, out)
  lines += body + ["## Timing", "", _table(["stage", "wall (s)", "CPU (s)"], [
      [k, f"{v['wall_s']:.0f}", f"{v['cpu_s']:.0f}"] for k, v in results["timing"].items()]), "",
      "Models reused from the output folder: " + ", ".join(
          f"{k} {'yes' if v else 'no (trained)'}" for k, v in results["models"]["reused"].items()) + "."]
  (out / "report.md").write_text("\n".join(lines) + "\n")
  return "\n".join(said)
