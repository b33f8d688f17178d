"""Static guidance configuration: which terms are on, their weights, channels and noise intervals.

Conventions are kept apart on purpose: `cfg_scale` and `dog_scale` use the CFG convention (1 = off,
`uncond + s (cond - uncond)`), `nag_scale` uses the paper's NAG convention (0 = off,
`(w + 1) s(x|t) - w s(x)`). Intervals are in noise fraction nu in [0, 1], 1 = pure noise.

Besides the branch terms, three per-step terms change the single guided output (0 = off for each):
classifier-based NAG (`classifier_nag_scale`, a Gaussian likelihood of width `classifier_nag_sigma`
around the scheduled level; `guidance/classifier_nag.py`) and the exposure-bias baselines of the
paper's Table 5, Epsilon Scaling (`eps_scaling`: the network output is divided by 1 + eps_scaling)
and Time Shift (`time_shift_window`: half-width, in noise fraction, of the searched window;
`guidance/baselines.py`). Time Shift's cutoff is its interval: `time_shift_interval=(cutoff, 1)`.

NAG's peers (formulas in `guidance/combine.py`): autoguidance (`autoguidance_scale`, CFG convention; the
weaker model is the second params tree that DoG also uses, so the two are exclusive), time-step guidance
(`tsg_scale`, NAG convention; `tsg_shift` in noise fraction), CFG-Zero* (`cfg_zero_scale`, CFG convention;
`cfg_zero_init_steps` zeroes the output of the sampler's first steps) and APG (`apg_scale`, CFG convention;
`apg_eta`, `apg_momentum` beta, `apg_norm_threshold` r, 0 = no clipping).
"""
from __future__ import annotations

import dataclasses

from nag_jax.checks import nonfinite_fields
from nag_jax.errors import UserError

NAG_FORMS = ("three_branch", "nested")
TERMS = ("cfg", "nag", "dog", "classifier_nag", "eps_scaling", "time_shift", "autoguidance", "tsg", "cfg_zero",
         "apg")
# Terms in the CFG convention (strength 1 = off); the others are off at 0.
CFG_CONVENTION = ("cfg", "dog", "autoguidance", "cfg_zero", "apg")
# The field holding each term's strength (> 0 = on).
STRENGTHS = {"cfg": "cfg_scale", "nag": "nag_scale", "dog": "dog_scale", "classifier_nag": "classifier_nag_scale",
             "eps_scaling": "eps_scaling", "time_shift": "time_shift_window",
             "autoguidance": "autoguidance_scale", "tsg": "tsg_scale", "cfg_zero": "cfg_zero_scale", "apg": "apg_scale"}


@dataclasses.dataclass(frozen=True)
class GuidanceConfig:
  """Guidance of one sampler; every field is static (a term that is off is never traced)."""
  cfg_scale: float = 1.0
  nag_scale: float = 0.0
  dog_scale: float = 1.0
  pseudo_level: float | None = None  # None: the family default (`Process.pseudo_level` resolves it)
  cfg_channels: int | None = None
  nag_form: str = "three_branch"
  cfg_interval: tuple[float, float] = (0.0, 1.0)
  nag_interval: tuple[float, float] = (0.0, 1.0)
  dog_interval: tuple[float, float] = (0.0, 1.0)
  classifier_nag_scale: float = 0.0
  classifier_nag_sigma: float = 0.1
  classifier_nag_interval: tuple[float, float] = (0.0, 1.0)
  eps_scaling: float = 0.0
  eps_scaling_interval: tuple[float, float] = (0.0, 1.0)
  time_shift_window: float = 0.0
  time_shift_data_var: float = 0.0
  time_shift_interval: tuple[float, float] = (0.0, 1.0)
  autoguidance_scale: float = 1.0
  autoguidance_interval: tuple[float, float] = (0.0, 1.0)
  tsg_scale: float = 0.0
  tsg_shift: float = 0.05
  tsg_interval: tuple[float, float] = (0.0, 1.0)
  cfg_zero_scale: float = 1.0
  cfg_zero_init_steps: int = 0
  cfg_zero_interval: tuple[float, float] = (0.0, 1.0)
  apg_scale: float = 1.0
  apg_eta: float = 0.0
  apg_momentum: float = 0.0
  apg_norm_threshold: float = 0.0
  apg_interval: tuple[float, float] = (0.0, 1.0)

  def __post_init__(self):
    for term in TERMS:  # configs give lists; tuples keep the dataclass hashable
      object.__setattr__(self, f"{term}_interval", tuple(getattr(self, f"{term}_interval")))
    nonfinite = nonfinite_fields(self)
    if nonfinite:
      raise UserError("invalid guidance: " + "; ".join(nonfinite))
    problems = []
    if self.cfg_scale < 1:
      problems.append(f"cfg_scale must be >= 1 (CFG convention, 1 = off), got {self.cfg_scale}")
    if self.dog_scale < 1:
      problems.append(f"dog_scale must be >= 1 (CFG convention, 1 = off), got {self.dog_scale}")
    if self.nag_scale < 0:
      problems.append(f"nag_scale must be >= 0 (NAG convention, 0 = off), got {self.nag_scale}")
    if self.nag_form not in NAG_FORMS:
      problems.append(f"nag_form must be one of {NAG_FORMS}, got {self.nag_form!r}")
    for name in ("classifier_nag_scale", "eps_scaling", "time_shift_data_var"):
      if getattr(self, name) < 0:
        problems.append(f"{name} must be >= 0 (0 = off), got {getattr(self, name)}")
    if self.classifier_nag_sigma <= 0:
      problems.append(f"classifier_nag_sigma must be > 0 (likelihood width), got {self.classifier_nag_sigma}")
    if not 0 <= self.time_shift_window < 1:
      problems.append(f"time_shift_window must be in [0, 1) (noise fraction, 0 = off), got {self.time_shift_window}")
    if self.cfg_channels is not None and self.cfg_channels < 1:
      problems.append(f"cfg_channels must be >= 1 or None (all latent channels), got {self.cfg_channels}")
    for term in TERMS:
      lo, hi = getattr(self, f"{term}_interval")
      if not 0 <= lo <= hi <= 1:
        problems.append(f"{term}_interval must satisfy 0 <= lo <= hi <= 1 (noise fraction, 1 = noise), "
                        f"got ({lo}, {hi})")
    problems += self._peer_problems()
    if problems:
      raise UserError("invalid guidance: " + "; ".join(problems))

  def _peer_problems(self) -> list[str]:
    """Range checks of the peer terms (autoguidance, TSG, CFG-Zero*, APG)."""
    problems = []
    for name in ("autoguidance_scale", "cfg_zero_scale", "apg_scale"):
      if not getattr(self, name) >= 1:
        problems.append(f"{name} must be >= 1 (CFG convention, 1 = off), got {getattr(self, name)}")
    for name in ("tsg_scale", "apg_eta", "apg_norm_threshold", "cfg_zero_init_steps"):
      if not getattr(self, name) >= 0:
        problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
    if not 0 < self.tsg_shift < 1:
      problems.append(f"tsg_shift must be in (0, 1) (noise fraction), got {self.tsg_shift}")
    if not -1 < self.apg_momentum < 1:
      problems.append(f"apg_momentum must be in (-1, 1), got {self.apg_momentum}")
    if self.dog_scale > 1 and self.autoguidance_scale > 1:
      problems.append("dog_scale and autoguidance_scale both use the second model (parent_params); use one")
    return problems

  def weight(self, term: str) -> float:
    """The term's weight (0 = off): `cond + weight (cond - branch)` for branch terms, else its strength."""
    offset = 1 if term in CFG_CONVENTION else 0
    return getattr(self, STRENGTHS[term]) - offset

  def active_terms(self, nu: float) -> frozenset:
    """Terms that act at noise fraction nu: weight > 0 and nu inside a non-empty interval."""
    def on(term):
      lo, hi = getattr(self, f"{term}_interval")
      return self.weight(term) > 0 and lo < hi and lo <= nu <= hi
    return frozenset(t for t in TERMS if on(t))
