"""SiT transport with velocity prediction: intervals and the SDE drift (pure functions).

Follows the official `transport/` package (`create_transport`, `check_interval`, `sde_drift`) for
`prediction="velocity"`, the only one SiT checkpoints use; the training loss is the process layer's
(`nag_jax/process/transport.py`).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import jax

from nag_jax.flow.paths import Path


@dataclasses.dataclass(frozen=True)
class Transport:
  """A path plus the train/sample epsilons that keep the intervals away from singular endpoints."""
  path: Path = Path()
  train_eps: float = 0.0
  sample_eps: float = 0.0


def create_transport(path_type: str = "Linear", train_eps: Optional[float] = None,
                     sample_eps: Optional[float] = None) -> Transport:
  """The official `create_transport(path_type, "velocity", ...)`: VP gets eps 1e-5 / 1e-3, else 0.

  Unlike upstream (which picks sample_eps by testing train_eps), each eps defaults on its own.
  """
  path = Path(path_type)
  if path_type == "VP":
    return Transport(path, 1e-5 if train_eps is None else train_eps,
                     1e-3 if sample_eps is None else sample_eps)
  return Transport(path, 0.0, 0.0)  # velocity on Linear/GVP is stable everywhere (upstream ignores eps)


def check_interval(transport: Transport, *, sde: bool = False, diffusion_form: str = "SBDM",
                   sampling: bool = False, last_step_size: float = 0.0) -> tuple[float, float]:
  """(t0, t1) of the official `check_interval` for velocity prediction (`sampling` = upstream `eval`)."""
  eps = transport.sample_eps if sampling else transport.train_eps
  t0, t1 = 0.0, 1.0
  if transport.path.kind == "VP":
    t1 = 1 - eps if (not sde or last_step_size == 0) else 1 - last_step_size
  elif sde:
    t0 = eps if diffusion_form == "SBDM" else 0.0
    t1 = 1 - eps if last_step_size == 0 else 1 - last_step_size
  return t0, t1


def sde_drift(path: Path, velocity: jax.Array, x: jax.Array, t: jax.Array, *,
              diffusion_form: str = "sigma", diffusion_norm: float = 1.0) -> tuple[jax.Array, jax.Array]:
  """(drift, w_t) of the sampling SDE: drift = v + w_t * score(v), reusing one velocity evaluation."""
  w = path.diffusion(x, t, diffusion_form, diffusion_norm)
  return velocity + w * path.score_from_velocity(velocity, x, t), w
