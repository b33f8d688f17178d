"""PNG plots of a noise-shift report (matplotlib, Agg): the paper's Figures 1/7/8, 4 and 5.

- `plot_densities`: KDE of the estimated level per chosen prior t, one curve per setting, the prior marked.
- `plot_shift_curves`: mean shift along the trajectory, vs the prior (a) and vs the forward estimate (b).
- `plot_guidance_shift`: mean shift of each setting at each chosen t, as grouped bars.
"""
from __future__ import annotations

import pathlib

import matplotlib
import numpy as np

from nag_jax.evaluation.noise_shift import FORWARD

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position

COLORS = {FORWARD: "tab:orange", "none": "gold", "cfg": "tab:blue", "nag": "darkkhaki", "nag_cfg": "tab:green"}


def _color(name: str, k: int) -> str:
  return COLORS.get(name, f"C{(k + 4) % 10}")


def _save(fig, path: str | pathlib.Path) -> pathlib.Path:
  path = pathlib.Path(path)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def plot_densities(report: dict, path: str | pathlib.Path) -> pathlib.Path:
  """One panel per chosen t: the estimated-level density of every setting; black line = prior t."""
  rows = report["selected"]
  fig, axes = plt.subplots(1, len(rows), figsize=(4 * len(rows), 3.2), squeeze=False)
  for ax, row in zip(axes[0], rows):
    for k, name in enumerate(report["settings"]):
      ax.plot(row["grid"], row[name]["density"], color=_color(name, k), label=name)
    ax.axvline(row["level"], color="black", linewidth=1.5)
    ax.set_title(f"prior t = {row['level']:.3f}")
    ax.set_xlabel("estimated t (noise fraction)")
  axes[0][0].set_ylabel("density")
  axes[0][-1].legend(fontsize="small")
  return _save(fig, path)


def plot_shift_curves(report: dict, path: str | pathlib.Path) -> pathlib.Path:
  """(a) mean estimate - prior and (b) mean estimate - forward estimate, along the trajectory."""
  levels = np.asarray(report["levels"])
  fig, (ax_a, ax_b) = plt.subplots(1, 2, figsize=(9, 3.4))
  for k, name in enumerate(report["settings"]):
    s = report["per_step"][name]
    ax_a.plot(levels, s["shift"], marker=".", color=_color(name, k), label=name)
    if name != FORWARD:
      ax_b.plot(levels, s["shift_vs_forward"], marker=".", color=_color(name, k), label=name)
  for ax, title in ((ax_a, "(a) shift vs prior t"), (ax_b, "(b) shift vs forward estimate")):
    ax.axhline(0, color="black", linewidth=0.8)
    ax.invert_xaxis()  # sampling runs from noise (1) to data (0)
    ax.set_xlabel("prior t (noise fraction), sampling direction ->")
    ax.set_title(title)
  ax_a.set_ylabel("mean shift")
  ax_a.legend(fontsize="small")
  return _save(fig, path)


def plot_guidance_shift(report: dict, path: str | pathlib.Path) -> pathlib.Path:
  """Grouped bars: the mean shift of every setting at each chosen t."""
  rows, names = report["selected"], report["settings"]
  width = 0.8 / len(names)
  fig, ax = plt.subplots(figsize=(1.2 + 1.5 * len(rows), 3.4))
  x = np.arange(len(rows))
  for k, name in enumerate(names):
    ax.bar(x + (k - (len(names) - 1) / 2) * width, [r[name]["shift"] for r in rows], width,
           color=_color(name, k), label=name)
  ax.axhline(0, color="black", linewidth=0.8)
  ax.set_xticks(x, [f"{r['level']:.3f}" for r in rows])
  ax.set_xlabel("prior t (noise fraction)")
  ax.set_ylabel("mean shift")
  ax.legend(fontsize="small")
  return _save(fig, path)


def plot_all(report: dict, out_dir: str | pathlib.Path) -> list[pathlib.Path]:
  """Writes densities.png, shift_curves.png and guidance_shift.png into `out_dir`."""
  out_dir = pathlib.Path(out_dir)
  return [plot_densities(report, out_dir / "densities.png"), plot_shift_curves(report, out_dir / "shift_curves.png"),
          plot_guidance_shift(report, out_dir / "guidance_shift.png")]
