"""The study's settings ("cells"): sweeps, intervals and peers, each a static GuidanceConfig and a model."""
from __future__ import annotations

import dataclasses

import numpy as np

from nag_jax.demo.config import StudyConfig
from nag_jax.guidance import GuidanceConfig
from nag_jax.guidance.denoiser import branch_inputs


@dataclasses.dataclass(frozen=True)
class Cell:
  """One setting of the study: its guidance, which trained model samples and whether the weak one guides."""
  name: str
  label: str
  guidance: GuidanceConfig
  model: str = "main"      # main | ip
  weak: bool = False       # autoguidance's bad model as the second params tree
  dtype: str = "float32"   # the model's compute dtype (ModelConfig.dtype)


def rows_per_step(g: GuidanceConfig, weak: bool) -> int:
  """Model rows per sample per step where every term is active (the weak model's row counted as one)."""
  active = frozenset(t for t in g.active_terms(0.5) | g.active_terms(0.25) | g.active_terms(0.75))
  return len(branch_inputs(g, active)) + int(weak)


def sweep_cells(sc: StudyConfig, nested: bool) -> list[Cell]:
  """Unguided, NAG alone, CFG alone and the NAG + CFG grid (three-branch; nested too where asked)."""
  cells = [Cell("none", "unguided", GuidanceConfig())]
  cells += [Cell(f"nag{w:g}", f"NAG {w:g}", GuidanceConfig(nag_scale=w)) for w in sc.nag]
  cells += [Cell(f"cfg{s:g}", f"CFG {s:g}", GuidanceConfig(cfg_scale=s)) for s in sc.cfg]
  cells += [Cell(f"cfg{s:g}+nag{w:g}", f"CFG {s:g} + NAG {w:g}", GuidanceConfig(cfg_scale=s, nag_scale=w))
            for s in sc.cfg for w in sc.grid_nag]
  if nested:
    cells += [Cell(f"cfg{s:g}+nag{w:g}_nested", f"CFG {s:g} + NAG {w:g} nested",
                   GuidanceConfig(cfg_scale=s, nag_scale=w, nag_form="nested")) for s in sc.cfg for w in sc.nested_nag]
  return cells


def interval_cells(sc: StudyConfig, best_cfg: float, best_nag: float) -> list[Cell]:
  """NAG and CFG on the early (noisy, nu >= split) or late (nu <= split) part of the steps only."""
  lo, hi = (0.0, sc.early_late), (sc.early_late, 1.0)
  return [Cell(f"nag{best_nag:g}_early", f"NAG {best_nag:g} early", GuidanceConfig(nag_scale=best_nag, nag_interval=hi)),
          Cell(f"nag{best_nag:g}_late", f"NAG {best_nag:g} late", GuidanceConfig(nag_scale=best_nag, nag_interval=lo)),
          Cell(f"cfg{best_cfg:g}_early", f"CFG {best_cfg:g} early", GuidanceConfig(cfg_scale=best_cfg, cfg_interval=hi)),
          Cell(f"cfg{best_cfg:g}_late", f"CFG {best_cfg:g} late", GuidanceConfig(cfg_scale=best_cfg, cfg_interval=lo))]


def peer_cells(sc: StudyConfig, cfg_scale: float) -> list[Cell]:
  """Every peer alone (cfg_scale 1) or on top of CFG `cfg_scale` (CFG-Zero* and APG replace CFG's update)."""
  on = cfg_scale > 1
  base = GuidanceConfig(cfg_scale=cfg_scale)
  tag, text = (f"cfg{cfg_scale:g}+", f"CFG {cfg_scale:g} + ") if on else ("", "")
  cells = [Cell(f"{tag}auto{w:g}", f"{text}autoguidance {w:g}", dataclasses.replace(base, autoguidance_scale=w),
                weak=True) for w in sc.autoguidance]
  cells += [Cell(f"{tag}tsg{w:g}", f"{text}TSG {w:g}", dataclasses.replace(base, tsg_scale=w, tsg_shift=sc.tsg_shift))
            for w in sc.tsg]
  cells += [Cell(f"{tag}es", f"{text}Epsilon Scaling {sc.eps_scaling:g}",
                 dataclasses.replace(base, eps_scaling=sc.eps_scaling)),
            Cell(f"{tag}ts", f"{text}Time Shift {sc.time_shift_window:g}",
                 dataclasses.replace(base, time_shift_window=sc.time_shift_window))]
  if sc.ip_gamma > 0:
    cells.append(Cell(f"{tag}ip", f"{text}Input Perturbation {sc.ip_gamma:g}", base, model="ip"))
  if on:  # the CFG variants at the same scale
    cells += [Cell(f"cfgzero{cfg_scale:g}", f"CFG-Zero* {cfg_scale:g}",
                   GuidanceConfig(cfg_zero_scale=cfg_scale, cfg_zero_init_steps=sc.cfg_zero_init_steps)),
              Cell(f"apg{cfg_scale:g}", f"APG {cfg_scale:g}",
                   GuidanceConfig(apg_scale=cfg_scale, apg_momentum=sc.apg_momentum,
                                  apg_norm_threshold=sc.apg_norm_threshold))]
  return cells


def best(results: dict, names: list[str], train_seed: int) -> str:
  """The name with the lowest mean FD among `names` (present in `results`) on the runs of `train_seed` only, so
  that the pick does not move when later phases add other training seeds' runs (a resumed study picks again)."""
  def mean(n):
    return np.mean([v for r, v in zip(results[n]["runs"], results[n]["fd"]) if r[0] == train_seed])
  return min((n for n in names if n in results), key=mean)
