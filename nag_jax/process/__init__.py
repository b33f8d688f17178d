"""The diffusion-process layer: one module per model family, the registry that maps a family to it.

Below guidance, sampling, training and evaluation, above the pure math of `diffusion/` and `flow/`.
Adding a family means adding one `Process` subclass module and one line in `REGISTRY`.
"""
from __future__ import annotations

from nag_jax.process.base import Process
from nag_jax.process.ddpm import DDPMProcess
from nag_jax.process.transport import TransportProcess
from nag_jax.errors import UserError

REGISTRY: dict[str, type[Process]] = {"dit": DDPMProcess, "sit": TransportProcess}
FAMILIES = tuple(REGISTRY)


def family_process(family: str) -> type[Process]:
  """The process class of `family` (its class-level defaults: pseudo level, sampler methods)."""
  if family not in REGISTRY:
    raise UserError(f"family must be one of {FAMILIES}, got {family!r}")
  return REGISTRY[family]


def create(family: str, **options) -> Process:
  """The process of `family`; options of other families are ignored (DiT: noise_schedule, diffusion_steps,
  learn_sigma; SiT: path_type)."""
  return family_process(family)(**options)


__all__ = ["DDPMProcess", "FAMILIES", "Process", "REGISTRY", "TransportProcess", "create", "family_process"]
