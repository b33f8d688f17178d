"""Writes the demo's report.md, results.json and PNGs (sample grids side by side, variants, loss curves)."""
from __future__ import annotations

import json
import pathlib

import matplotlib
import numpy as np

from nag_jax.demo import findings, template
from nag_jax.demo.config import DemoConfig, run_name
from nag_jax.sampling.images import grid, to_rgb_uint8

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position


def mean_std(values: list[float], digits: int = 3) -> str:
  """'mean ± std' over seeds (sample std, ddof 1)."""
  v = np.asarray(values, np.float64)
  std = v.std(ddof=1) if v.size > 1 else 0.0
  return f"{v.mean():.{digits}f} ± {std:.{digits}f}"


def _table(head: list[str], rows: list[list[str]]) -> str:
  lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
  return "\n".join(["\n".join(lines)] + ["| " + " | ".join(r) + " |" for r in rows])


def _fd_cell(cell: dict, base: dict | None) -> str:
  text = mean_std(cell["fd"])
  if base is not None:
    text += f" ({findings.change(cell['fd'], base['fd']):+.0%})"
  return text


def headline(results: dict) -> str:
  """Fréchet distance per guidance setting (rows) and sampler (columns), change vs unguided in brackets."""
  dc, main = DemoConfig.from_dict(results["config"]), results["grid"]["main"]
  runs = list(main)
  rows = [[s.label] + [_fd_cell(main[r][s.name], None if s.name == "none" else main[r]["none"]) for r in runs]
          for s in dc.settings]
  real = f"{mean_std(results['real']['fd'])} ({dc.num_samples} real digits vs all 1,797)"
  note = (f"Fréchet distance in the CNN classifier's {results['classifier']['feature_dim']}-d feature space, "
          f"{dc.num_samples} samples x {dc.num_seeds} seeds (mean ± std); floor: {real}")
  return _table(["setting"] + runs, rows) + "\n\n" + note


def detail_table(results: dict) -> str:
  """Every metric of the main model per sampler and setting, and the real-data floor."""
  dc, main = DemoConfig.from_dict(results["config"]), results["grid"]["main"]
  metrics = ("fd", "fd_mlp", "precision", "recall", "accuracy")
  rows = [[r, s.label] + [mean_std(main[r][s.name][m]) for m in metrics] for r in main for s in dc.settings]
  real = results["real"]
  rows.append(["real", f"{dc.num_samples} digits"] + [mean_std(real[m]) if m in real else "—" for m in metrics])
  return _table(["sampler", "setting", "FD (CNN)", "FD (MLP)", "precision", "recall", "class accuracy"], rows)


def variant_table(results: dict) -> str:
  """Unguided vs NAG FD of each trained variant, plus the embedding gap of the pseudo level."""
  dc = DemoConfig.from_dict(results["config"])
  runs = [run_name(*r) for r in dc.variant_runs]
  head = ["model", "‖emb(1.001)−emb(1)‖/‖emb(1)‖", "final loss"] + [
      f"{r} {dc.setting(s).label}" for r in runs for s in dc.variant_settings]
  rows = []
  for v in dc.variants:
    m, g = results["models"][v.name], results["grid"][v.name]
    rows.append([f"{v.name}: {v.label}", f"{m['embedding_gap']:.4f}", f"{m['losses'][-1][1]:.4f}"] + [
        _fd_cell(g[r][s], None if s == "none" else g[r]["none"]) for r in runs for s in dc.variant_settings])
  return _table(head, rows)


def branch_table(results: dict) -> str:
  rows = []
  for name, m in results["models"].items():
    b = m["branch"]
    rows.append([name] + [f"{c:.3f} / {p:.3f} / {g:.4f}" for c, p, g in zip(b["cond"], b["pseudo"], b["gap"])])
  times = next(iter(results["models"].values()))["branch"]["times"]
  return _table(["model"] + [f"t={t:g} (nu={1 - t:.2f})" for t in times], rows)


def shift_table(results: dict) -> str:
  """Per prior level: g_phi on forward states, and the shift vs forward of unguided and NAG sampling."""
  reports = results["noise_shift"]
  first = next(iter(reports.values()))
  head = ["prior nu", "g_phi on forward: mean ± std", "unguided: shift vs prior / vs forward"] + [
      f"NAG w={w[1:]}: shift vs prior / vs forward" for w in reports]
  rows = []
  for k, row in enumerate(first["selected"]):
    f, n = row["forward"], row["none"]
    rows.append([f"{row['level']:.3f}", f"{f['mean']:.4f} ± {f['std']:.4f}",
                 f"{n['shift']:+.4f} / {n['shift_vs_forward']:+.4f}"] + [
        f"{r['selected'][k]['nag']['shift']:+.4f} / {r['selected'][k]['nag']['shift_vs_forward']:+.4f}"
        for r in reports.values()])
  return _table(head, rows)


def _panel_figure(panels: list[tuple[str, np.ndarray]], path: pathlib.Path, title: str) -> str:
  """Panels side by side, each a grid of 10 samples per row (labels 0..9); returns the file name."""
  rows = -(-len(panels[0][1]) // 10)
  fig, axes = plt.subplots(1, len(panels), figsize=(2.8 * len(panels), 0.28 * rows + 0.9), squeeze=False)
  for ax, (label, x) in zip(axes[0], panels):
    ax.imshow(grid([to_rgb_uint8(x[i:i + 10]) for i in range(0, len(x), 10)]), interpolation="nearest")
    ax.set_title(label, fontsize=9)
    ax.axis("off")
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path.name


def pictures(out: pathlib.Path, dc: DemoConfig, pics: dict) -> dict[str, str]:
  """One side-by-side PNG per main-model sampler, and one of the variants; {title: file name}."""
  files = {}
  for method, steps in dc.runs:
    r = run_name(method, steps)
    panels = [(s.label, pics[("main", r, s.name)]) for s in dc.settings]
    files[r] = _panel_figure(panels, out / f"samples_{method}{steps}.png", f"main model, {r}, seed 0 (same noise)")
  r = run_name(*dc.variant_runs[0])
  for v in dc.variants:
    panels = [(dc.setting(s).label, pics[(v.name, r, s)]) for s in dc.variant_settings]
    files[f"{v.name} {r}"] = _panel_figure(panels, out / f"variant_{v.name}.png", f"{v.name}: {v.label}, {r}")
  return files


def loss_plot(out: pathlib.Path, results: dict) -> str:
  """losses.png: the logged training loss of every variant."""
  fig, ax = plt.subplots(figsize=(5, 3))
  for name, m in results["models"].items():
    steps, losses = zip(*m["losses"])
    ax.plot(steps, losses, label=name)
  ax.set_xlabel("step")
  ax.set_ylabel(f"velocity loss (mean of {steps[0]} steps)")
  ax.legend()
  fig.tight_layout()
  fig.savefig(out / "losses.png", dpi=100)
  plt.close(fig)
  return "losses.png"


def write(out: pathlib.Path, results: dict, pics: dict, command: str) -> str:
  """Writes results.json, the PNGs and report.md into `out`; returns the headline table."""
  dc = DemoConfig.from_dict(results["config"])
  (out / "results.json").write_text(json.dumps(results, indent=1))
  files = pictures(out, dc, pics)
  head = headline(results)
  md = template.markdown(results, dc, command=command, headline=head, details=detail_table(results),
                         variants=variant_table(results), branches=branch_table(results),
                         shift=shift_table(results), sample_files=files, loss_file=loss_plot(out, results),
                         shift_dir=next(iter(results["noise_shift"].values()))["dir"])
  (out / "report.md").write_text(md)
  return head
