"""The study's pictures: FD against precision and recall, and the noise-shift curves and KDEs with 95% bands."""
from __future__ import annotations

import pathlib

import matplotlib
import numpy as np

from nag_jax.demo.study_stats import t_interval

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position


def fd_pr_plot(out: pathlib.Path, results: dict, run: str) -> str:
  """FD against precision and against recall for every setting at `run` (bars: 95% intervals)."""
  cells = results["cells"][run]
  fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
  groups = {"unguided": "k", "NAG": "tab:blue", "CFG": "tab:orange", "CFG + NAG": "tab:green", "peer": "tab:red"}
  def group(n):
    if n == "none":
      return "unguided"
    if n.startswith("nag"):
      return "NAG"
    if n.startswith("cfg") and "+nag" in n:
      return "CFG + NAG"
    return "CFG" if n.startswith("cfg") and "+" not in n and cells[n]["phase"] == "sweep" else "peer"
  for ax, metric in zip(axes, ("precision", "recall")):
    seen = set()
    for n, c in cells.items():
      g = group(n)
      (x, hx), (y, hy) = t_interval(c[metric]), t_interval(c["fd"])
      ax.errorbar(x, y, xerr=hx, yerr=hy, fmt="o", ms=4, color=groups[g], alpha=0.8,
                  label=None if g in seen else g)
      seen.add(g)
    ax.set_xlabel(metric)
  axes[0].set_ylabel("FD (CNN features)")
  axes[0].legend(fontsize=8)
  fig.suptitle(f"{run}: every setting, mean ± 95% t interval")
  fig.tight_layout()
  fig.savefig(out / "fd_precision_recall.png", dpi=100)
  plt.close(fig)
  return "fd_precision_recall.png"


def shift_plots(out: pathlib.Path, shift: dict) -> tuple[str, str]:
  """shift_curves.png (bias and shifts with 95% bands) and kde.png (densities with bootstrap 95% bands)."""
  p = shift["per_level"]
  level = np.array(p["level"])
  fig, ax = plt.subplots(figsize=(6, 4))
  for key, label, color in (("bias", "g_phi bias on forward states", "k"), ("none", "unguided − forward", "tab:orange"),
                            ("nag", f"NAG {shift['nag_scale']:g} − forward", "tab:blue")):
    m, h = np.array(p[key]).T
    ax.plot(level, m, color=color, label=label)
    ax.fill_between(level, m - h, m + h, color=color, alpha=0.25)
  ax.axhline(0, color="grey", lw=0.5)
  ax.invert_xaxis()
  ax.set_xlabel("prior noise fraction ν (sampling goes right)")
  ax.set_ylabel("estimated − reference noise fraction")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(out / "shift_curves.png", dpi=100)
  plt.close(fig)
  fig, axes = plt.subplots(1, len(shift["kde"]), figsize=(3.2 * len(shift["kde"]), 3), squeeze=False)
  for ax, row in zip(axes[0], shift["kde"]):
    grid = np.array(row["grid"])
    for key, color in (("forward", "k"), ("none", "tab:orange"), ("nag", "tab:blue")):
      ax.plot(grid, row[key]["density"], color=color, label=key)
      ax.fill_between(grid, row[key]["lo"], row[key]["hi"], color=color, alpha=0.25)
    ax.axvline(row["level"], color="grey", lw=0.8)
    ax.set_title(f"ν = {row['level']:.3f}")
  axes[0][0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(out / "kde.png", dpi=100)
  plt.close(fig)
  return "shift_curves.png", "kde.png"
