"""What a model family's diffusion process provides to guidance, sampling, training and evaluation.

A process is the one place that knows a family's time: the model time t <-> noise fraction nu (1 =
noise), the forward coefficients (a_t, s_t) of x_t = a_t x0 + s_t eps, the trained range of t and the
pseudo level outside it, the g_phi regression target, what the network outputs, the sampler methods
and the training objective's draws and losses. Instances are static (hashed by identity, so they
can close over jitted code).
"""
from __future__ import annotations

import abc
from typing import ClassVar

import jax
import numpy as np

from nag_jax.errors import UserError


class Process(abc.ABC):
  """One family's diffusion process; subclasses live one per module in `nag_jax.process`."""
  family: ClassVar[str]
  default_pseudo_level: ClassVar[float]  # paper appendix B.1: fed instead of t to the noise-unconditional branch
  sampler_methods: ClassVar[tuple[str, ...]]  # the first is the default

  @property
  @abc.abstractmethod
  def time_range(self) -> tuple[float, float]:
    """The interval of t the network is trained on; a pseudo level must lie outside it."""

  @property
  @abc.abstractmethod
  def time_per_noise(self) -> float:
    """Signed model time per unit of noise fraction (how Time Shift and TSG step towards noise)."""

  @abc.abstractmethod
  def coefficients(self, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(a_t, s_t) of the forward process, elementwise in the model time t."""

  @abc.abstractmethod
  def level_to_time(self, nu: np.ndarray) -> np.ndarray:
    """Noise fraction -> model time (numpy, static grids)."""

  @abc.abstractmethod
  def estimator_target(self, t: jax.Array) -> jax.Array:
    """g_phi's regression target for float32 model time t (estimator units)."""

  @abc.abstractmethod
  def estimate_to_level(self, g: np.ndarray) -> np.ndarray:
    """g_phi output (estimator units) -> noise fraction."""

  @abc.abstractmethod
  def add_score(self, out: jax.Array, x: jax.Array, t: jax.Array, grad: jax.Array) -> jax.Array:
    """The network output (first x.shape[-1] channels) whose implied score is the score + grad."""

  @classmethod
  @abc.abstractmethod
  def output_channels(cls, in_channels: int, learn_sigma: bool) -> int:
    """Channels the network returns for `in_channels` latent channels."""

  @abc.abstractmethod
  def draw_time(self, key: jax.Array, batch: int) -> jax.Array:
    """Training times for a batch (the objective's t draw)."""

  @abc.abstractmethod
  def noisy_input(self, x0: jax.Array, t: jax.Array, noise: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(x_t from data x0 and noise at the drawn t, the model time the network sees)."""

  @abc.abstractmethod
  def losses(self, out: jax.Array, x0: jax.Array, x_t: jax.Array, t: jax.Array,
             noise: jax.Array) -> dict[str, jax.Array]:
    """Per-example training losses {'loss', ...} of the network output `out` at x_t."""

  def pseudo_level(self, level: float | None = None) -> float:
    """The pseudo level to use (None = the family default); refuses one inside the trained range of t."""
    level = self.default_pseudo_level if level is None else float(level)
    lo, hi = self.time_range
    if lo <= level <= hi:
      raise UserError(f"pseudo_level {level} lies inside the trained range {(lo, hi)} of {self.family} timesteps; "
                      "the noise-unconditional branch needs a level outside it (1001 for DiT, 1.001 for SiT)")
    return level
