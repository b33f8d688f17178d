"""Builds the sampler's `denoise(x, t)`: every active branch stacked into ONE model call of batch k*B.

Per-step terms wrap that call: Time Shift picks the time the branches see, then Epsilon Scaling and
classifier-based NAG change the combined output (they need the forward `process`; the latter g_phi).
The pseudo level is `g.pseudo_level`, resolved to the family default once by the caller (the pipeline).
Peers: autoguidance evaluates the second model (`parent`) with the labels, TSG adds a branch at a shifted
time, CFG-Zero* and APG reuse the null-class branch; APG with momentum is a `segments.Stateful` denoiser.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from nag_jax.guidance import baselines
from nag_jax.guidance import segments as seg
from nag_jax.guidance.classifier_nag import Estimator, classifier_nag
from nag_jax.guidance.combine import combine
from nag_jax.guidance.config import GuidanceConfig
from nag_jax.process import Process
from nag_jax.errors import UserError

ApplyFn = Callable[[Any, jax.Array, jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class Branched:
  """A model as the guidance sees it: `apply(params, x, t, y)`, its null class and latent channels."""
  apply: ApplyFn
  params: Any
  null_class: int
  latent_channels: int


def branch_inputs(g: GuidanceConfig, active: frozenset) -> list[tuple[str, str, str]]:
  """(name, t source, y source) of each branch of the main model, the conditional one first."""
  branches = [("cond", "t", "y")]
  if active & {"cfg", "cfg_zero", "apg"}:
    branches.append(("cfg_uncond", "t", "null"))
  if "tsg" in active:
    branches.append(("tsg_uncond", "tsg", "y"))
  if "nag" in active:
    branches.append(("nag_uncond", "pseudo", "y"))
    if g.nag_form == "nested" and "cfg" in active:
      branches.append(("nag_cfg_uncond", "pseudo", "null"))
  return branches


def make_denoise(model: Branched, labels: jax.Array, g: GuidanceConfig, active: frozenset,
                 parent: Branched | None = None, *,
                 process: Process | None = None, estimator: Estimator | None = None) -> seg.Denoise:
  """denoise(x, t) -> guided output for the static set of active terms."""
  branches = branch_inputs(g, active)
  if "nag" in active and g.pseudo_level is None:
    raise UserError("nag_scale > 0 needs g.pseudo_level (the pipeline sets the family default: "
                    "process.pseudo_level(None))")
  if "dog" in active and parent is None:
    raise UserError("dog_scale > 1 needs the pre-trained parent model (Domain Guidance)")
  if active & {"classifier_nag", "time_shift"} and process is None:
    raise UserError(f"{sorted(active & {'classifier_nag', 'time_shift'})} needs the model's forward "
                    "process (process=nag_jax.process.create(family))")
  if "autoguidance" in active and parent is None:
    raise UserError("autoguidance_scale > 1 needs the weaker model (parent) as the bad branch")
  if "tsg" in active and process is None:
    raise UserError("tsg_scale > 0 needs the model's forward process (process=nag_jax.process.create(family))")
  if "classifier_nag" in active and estimator is None:
    raise UserError("classifier_nag_scale > 0 needs the noise-level estimator g_phi (estimator=...)")

  def core(x: jax.Array, t: jax.Array, prev: jax.Array | None) -> tuple[jax.Array, jax.Array | None]:
    b = x.shape[0]
    t_in = t
    if "time_shift" in active:
      t_in = baselines.time_shift(x, t, g.time_shift_window, process, g.time_shift_data_var)
    srcs = {"t": t_in, "y": labels, "null": jnp.full_like(labels, model.null_class)}
    if "nag" in active:
      srcs["pseudo"] = jnp.full_like(t, g.pseudo_level)
    if "tsg" in active:
      srcs["tsg"] = _towards_noise(t_in, g.tsg_shift, process)
    k = len(branches)
    xb = jnp.concatenate([x] * k) if k > 1 else x
    tb = jnp.concatenate([srcs[ts] for _, ts, _ in branches])
    yb = jnp.concatenate([srcs[ys] for _, _, ys in branches])
    out = model.apply(model.params, xb, tb, yb)
    outs = {name: out[i * b:(i + 1) * b] for i, (name, _, _) in enumerate(branches)}
    if "dog" in active:
      outs["dog"] = parent.apply(parent.params, x, t_in, jnp.full_like(labels, parent.null_class))
    if "autoguidance" in active:
      outs["autoguidance"] = parent.apply(parent.params, x, t_in, labels)
    if "apg" in active:
      c = model.latent_channels
      outs["apg_delta"] = outs["cond"][..., :c] - outs["cfg_uncond"][..., :c]
      if prev is not None:
        outs["apg_delta"] = outs["apg_delta"] + g.apg_momentum * prev
    out = combine(outs, g, active, model.latent_channels)
    if "zero_init" in active:
      out = out.at[..., :model.latent_channels].set(0.0)
    if "eps_scaling" in active:
      out = baselines.eps_scale(out, g.eps_scaling, model.latent_channels)
    if "classifier_nag" in active:
      out = classifier_nag(out, x, t, labels, estimator, process, g.classifier_nag_scale, g.classifier_nag_sigma)
    return out, outs.get("apg_delta")

  if "apg" in active and g.apg_momentum != 0:
    return seg.Stateful(core, lambda x: jnp.zeros(x.shape[:-1] + (model.latent_channels,), x.dtype))
  return lambda x, t: core(x, t, None)[0]


def _towards_noise(t: jax.Array, shift: float, process: Process) -> jax.Array:
  """The model time `shift` (noise fraction) noisier than t, clipped to the trained range (TSG's t~)."""
  lo, hi = process.time_range
  return jnp.clip(t + shift * process.time_per_noise, lo, hi)


def make_segments(model: Branched, labels: jax.Array, g: GuidanceConfig, nu: np.ndarray,
                  parent: Branched | None = None, *, process: Process | None = None,
                  estimator: Estimator | None = None) -> list[seg.Segment]:
  """One denoiser per run of steps with the same active terms (static per-step noise fraction nu).

  The first `g.cfg_zero_init_steps` steps are CFG-Zero*'s zero-init: the conditional branch only, output 0.
  """
  zero = min(g.cfg_zero_init_steps, len(nu))
  last_zero = float(np.asarray(nu, np.float64)[zero - 1]) if zero else np.inf  # nu decreases along the steps
  terms = lambda level: frozenset({"zero_init"}) if level >= last_zero else g.active_terms(level)
  return [(start, stop, make_denoise(model, labels, g, active, parent, process=process,
                                     estimator=estimator))
          for start, stop, active in seg.group_steps(nu, terms)]
