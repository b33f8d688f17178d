"""The demo's presets: what is trained, which samplers and guidance settings are compared, how many samples.

`FULL` fits about 15 minutes on 2 idle CPU cores; `QUICK` (CI) trims every budget to finish in < 3.
"""
from __future__ import annotations

import dataclasses

from nag_jax.guidance import GuidanceConfig
from nag_jax.models.config import ModelConfig
from nag_jax.sampling.pipeline import SamplerConfig


@dataclasses.dataclass(frozen=True)
class Setting:
  """One guidance setting of the grid (CFG convention 1 = off, NAG convention 0 = off)."""
  name: str
  label: str
  cfg_scale: float = 1.0
  nag_scale: float = 0.0

  def guidance(self, pseudo_level: float) -> GuidanceConfig:
    return GuidanceConfig(cfg_scale=self.cfg_scale, nag_scale=self.nag_scale, pseudo_level=pseudo_level)


@dataclasses.dataclass(frozen=True)
class Variant:
  """A trained SiT: its time scaling and noise-condition dropout (the rest is shared)."""
  name: str
  label: str
  time_scale: float
  noise_dropout: float


SETTINGS = (Setting("none", "unguided"), Setting("cfg", "CFG 1.5", cfg_scale=1.5),
            Setting("nag1", "NAG w=1", nag_scale=1.0), Setting("nag2", "NAG w=2", nag_scale=2.0),
            Setting("nag_cfg", "NAG w=2 + CFG 1.2", cfg_scale=1.2, nag_scale=2.0))
# The main model embeds t like DiT (1000 t, so the pseudo level 1.001 embeds like 1001); "paper" keeps
# SiT's unscaled t (official checkpoints); "nodrop" is the main model trained without noise dropout.
VARIANTS = (Variant("main", "t x 1000, noise dropout 0.1", 1000.0, 0.1),
            Variant("paper", "t x 1 (SiT default), noise dropout 0.1", 1.0, 0.1),
            Variant("nodrop", "t x 1000, no noise dropout", 1000.0, 0.0))


@dataclasses.dataclass(frozen=True)
class DemoConfig:
  """Every budget of one demo run; `seed` drives training, sampling and the classifier."""
  seed: int = 0
  image_size: int = 16
  patch_size: int = 8
  hidden_size: int = 96
  depth: int = 4
  num_heads: int = 4
  train_steps: int = 2000
  batch_size: int = 64
  learning_rate: float = 1e-3
  warmup_steps: int = 100
  ema_decay: float = 0.995
  label_dropout: float = 0.1
  pseudo_level: float = 1.001
  gphi_steps: int = 500
  gphi_learning_rate: float = 3e-4
  classifier_steps: int = 600
  num_samples: int = 500
  num_seeds: int = 3
  runs: tuple[tuple[str, int], ...] = (("sde", 20), ("sde", 50), ("ode", 20), ("ode", 50))
  settings: tuple[Setting, ...] = SETTINGS
  variants: tuple[Variant, ...] = VARIANTS
  variant_runs: tuple[tuple[str, int], ...] = (("sde", 50),)
  variant_settings: tuple[str, ...] = ("none", "nag1", "nag2")
  shift_samples: int = 256
  shift_steps: int = 20
  shift_t: tuple[float, ...] = (0.9, 0.7, 0.5, 0.3, 0.1)
  shift_nag: tuple[float, ...] = (1.0, 2.0)
  grid_per_class: int = 6

  def model_config(self, variant: Variant) -> ModelConfig:
    """The SiT of a variant: pixel space (1 channel, [-1, 1]), no sigma half, a null class for CFG."""
    return ModelConfig(family="sit", input_size=self.image_size, patch_size=self.patch_size, in_channels=1,
                       hidden_size=self.hidden_size, depth=self.depth, num_heads=self.num_heads,
                       num_classes=10, learn_sigma=False, class_dropout_prob=self.label_dropout,
                       time_scale=variant.time_scale)

  @classmethod
  def from_dict(cls, d: dict) -> "DemoConfig":
    """Inverse of `dataclasses.asdict` (as stored in results.json)."""
    d = {k: tuple(map(tuple, v)) if k in ("runs", "variant_runs") else v for k, v in d.items()}
    d["settings"] = tuple(Setting(**s) for s in d["settings"])
    d["variants"] = tuple(Variant(**v) for v in d["variants"])
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

  def setting(self, name: str) -> Setting:
    return next(s for s in self.settings if s.name == name)

  def variant(self, name: str) -> Variant:
    return next(v for v in self.variants if v.name == name)


def sampler_config(method: str, num_steps: int) -> SamplerConfig:
  """SDE: Euler-Maruyama with SiT's defaults (sigma diffusion, Mean last step 0.04); ODE: fixed-grid Euler."""
  return SamplerConfig(method=method, num_steps=num_steps, ode_method="euler")


def run_name(method: str, num_steps: int) -> str:
  return f"{method.upper()} {num_steps}"


FULL = DemoConfig()
QUICK = dataclasses.replace(FULL, hidden_size=64, depth=2, train_steps=200, ema_decay=0.98, gphi_steps=100,
                            classifier_steps=250, num_samples=200, runs=(("sde", 20),), variant_runs=(("sde", 20),),
                            shift_samples=64, shift_t=(0.7, 0.5, 0.3), shift_nag=(1.0,), grid_per_class=4)


@dataclasses.dataclass(frozen=True)
class StudyConfig:
  """The `--study` grid: weight sweeps, guidance intervals, step counts, peers, and the powered noise shift.

  Sweeps, step counts and intervals run on the first of `train_seeds` x `num_seeds` sampling seeds; the
  other training seeds re-test the weights picked on the first and train the peers' own models (the weak
  model of autoguidance: the main model trained `weak_steps`; Input Perturbation's). Phases run most
  important first (`study.Study.phases`), so a run cut short keeps the answers to the two claims.
  """
  train_seeds: tuple[int, ...] = (0, 1)
  num_seeds: int = 5
  nag: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0, 1.5)
  cfg: tuple[float, ...] = (1.25, 1.5, 2.0)  # CFG 1 is the unguided row
  grid_nag: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0, 1.5)  # NAG weights of the NAG + CFG grid
  nested_nag: tuple[float, ...] = (0.25, 0.5)  # ... and of its nested form
  sweep_runs: tuple[tuple[str, int], ...] = (("sde", 50),)
  nested_runs: tuple[tuple[str, int], ...] = (("sde", 50),)  # where the nested NAG + CFG form also runs
  step_runs: tuple[tuple[str, int], ...] = (("sde", 20), ("ode", 20), ("ode", 50), ("sde", 250), ("ode", 250))
  step_seeds: int = 5  # sampling seeds at step_runs (first training seed)
  step_nag: tuple[float, ...] = (0.5, 1.0)
  early_late: float = 0.5  # intervals: early = nu in [0.5, 1], late = nu in [0, 0.5]
  weak_steps: int = 400
  ip_gamma: float = 0.1
  peers_alone: bool = True  # the peers without CFG too (else only on top of the best CFG)
  autoguidance: tuple[float, ...] = (1.5, 2.0)
  tsg: tuple[float, ...] = (0.5, 1.0)
  tsg_shift: float = 0.05
  cfg_zero_init_steps: int = 1
  apg_momentum: float = -0.5
  apg_norm_threshold: float = 4.0
  eps_scaling: float = 0.01
  time_shift_window: float = 0.02
  gphi_steps: int = 1000
  shift_samples: int = 2000
  shift_nag: float = 1.0
  bootstrap: int = 200  # KDE bands
  bf16: tuple[str, ...] = ("none", "cfg", "nag", "both")  # picked settings re-sampled with a bfloat16 model


STUDY = StudyConfig()
# CI: the quick demo's models and g_phi, one training seed, a 10-step SDE and ODE, peers on CFG only, no Input
# Perturbation model.
STUDY_QUICK = StudyConfig(train_seeds=(0,), num_seeds=2, nag=(1.0,), cfg=(1.5,), grid_nag=(1.0,), nested_nag=(1.0,),
                          sweep_runs=(("sde", 10),),
                          nested_runs=(("sde", 10),), step_runs=(("ode", 10),), step_seeds=2, step_nag=(1.0,),
                          weak_steps=50, ip_gamma=0.0, peers_alone=False, autoguidance=(1.5,), tsg=(1.0,), gphi_steps=0,
                          shift_samples=64, bootstrap=20, bf16=("both",))
