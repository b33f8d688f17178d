"""Architecture configuration of DiT/SiT and the registry of the official sizes."""
from __future__ import annotations

import dataclasses
import re
from typing import Any


import jax.numpy as jnp

from nag_jax.process import FAMILIES, family_process
from nag_jax.errors import UserError

# Official size table (DiT models.py L328-369; SiT is identical): name -> (depth, hidden, heads).
SIZES = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}
PATCHES = (2, 4, 8)
# Attention backends (nag_jax.models.attention): "auto" (nag_jax.platform.resolve: "folded" on CPU, "xla" on GPU
# and TPU until a lent device measures the kernels), "folded", "xla", "cudnn" (GPU, bfloat16), and the Pallas
# kernels of KERNELS, which off their platform resolve to NAME-interpret (the Pallas interpreter, on CPU).
KERNELS = {"splash": "tpu", "flash": "gpu"}  # Pallas kernel -> the platform it compiles for
ATTENTION = ("auto", "folded", "xla", "cudnn", *KERNELS, *(f"{k}-interpret" for k in KERNELS))
# Gradient fence between blocks (nag_jax.models.layers.cotangent_fence): "auto" = on under XLA:CPU only
# (nag_jax.platform.resolve); unresolved, "auto" is off.
GRAD_FENCE = ("auto", "on", "off")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Constructor arguments of the official `DiT(...)`/`SiT(...)` plus the family, compute dtype and attention."""
  family: str = "dit"
  input_size: int = 32
  patch_size: int = 2
  in_channels: int = 4
  hidden_size: int = 1152
  depth: int = 28
  num_heads: int = 16
  mlp_ratio: float = 4.0
  class_dropout_prob: float = 0.1
  num_classes: int = 1000
  learn_sigma: bool = True
  time_scale: float = 1.0
  dtype: str = "float32"
  attention: str = "auto"
  remat: bool = False  # recompute each block's activations in the backward pass: less memory, ~1/3 more FLOPs
  grad_fence: str = "auto"  # materialise the residual-stream gradient between blocks (GRAD_FENCE)

  def __post_init__(self):
    problems = []
    if self.family not in FAMILIES:
      problems.append(f"family must be one of {FAMILIES}, got {self.family!r}")
    if self.input_size % self.patch_size:
      problems.append(f"input_size {self.input_size} is not divisible by patch_size {self.patch_size}")
    if self.hidden_size % self.num_heads:
      problems.append(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
    if self.hidden_size % 4:
      problems.append(f"hidden_size {self.hidden_size} must be divisible by 4 (2-D sin-cos table)")
    if self.dtype not in ("float32", "bfloat16"):
      problems.append(f"dtype must be 'float32' or 'bfloat16', got {self.dtype!r}")
    if self.attention not in ATTENTION:
      problems.append(f"attention must be one of {ATTENTION}, got {self.attention!r}")
    elif self.attention == "cudnn" and self.dtype != "bfloat16":
      problems.append("attention 'cudnn' needs dtype 'bfloat16' (the fused kernel has no float32 path)")
    if self.grad_fence not in GRAD_FENCE:
      problems.append(f"grad_fence must be one of {GRAD_FENCE}, got {self.grad_fence!r}")
    for name in ("input_size", "patch_size", "in_channels", "depth", "num_classes"):
      if getattr(self, name) < 1:
        problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
    if problems:
      raise UserError("invalid model config: " + "; ".join(problems))

  @property
  def out_channels(self) -> int:
    """Channels of the final linear layer (eps and variance when learn_sigma)."""
    return self.in_channels * 2 if self.learn_sigma else self.in_channels

  @property
  def output_channels(self) -> int:
    """Channels the model returns: SiT drops the (dead) sigma half as the official forward does."""
    return family_process(self.family).output_channels(self.in_channels, self.learn_sigma)

  @property
  def num_tokens(self) -> int:
    return (self.input_size // self.patch_size) ** 2

  @property
  def null_class(self) -> int:
    """Label id of the unconditional (dropped) class."""
    return self.num_classes

  @property
  def compute_dtype(self) -> Any:
    return jnp.dtype(self.dtype)

  @property
  def fenced(self) -> bool:
    """Whether the blocks' inputs go through cotangent_fence: grad_fence "on" (`platform.resolve` makes "auto"
    "on" for CPU devices)."""
    return self.grad_fence == "on"

  def replace(self, **kwargs) -> "ModelConfig":
    return dataclasses.replace(self, **kwargs)

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict) -> "ModelConfig":
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
      raise UserError(f"unknown model config keys: {unknown}")
    return cls(**d)


def get_model_config(name: str, *, image_size: int = 256, num_classes: int = 1000,
                     learn_sigma: bool = True, **overrides) -> ModelConfig:
  """Registry lookup: 'DiT-XL/2' or 'SiT-B/4' -> ModelConfig (latent size = image_size // 8)."""
  m = re.fullmatch(r"(DiT|SiT)-(S|B|L|XL)/(\d+)", name)
  if not m or int(m.group(3)) not in PATCHES:
    names = ", ".join(registry_names())
    raise UserError(f"unknown model {name!r}; known: {names}")
  family, size, patch = m.group(1).lower(), m.group(2), int(m.group(3))
  depth, hidden, heads = SIZES[size]
  if image_size % 8:
    raise UserError(f"image_size must be divisible by 8 (the VAE downsamples by 8), got {image_size}")
  return ModelConfig(family=family, input_size=image_size // 8, patch_size=patch, hidden_size=hidden,
                     depth=depth, num_heads=heads, num_classes=num_classes, learn_sigma=learn_sigma,
                     **overrides)


def registry_names() -> list[str]:
  """All names of the official registries, e.g. 'DiT-XL/2'."""
  return [f"{fam}-{s}/{p}" for fam in ("DiT", "SiT") for s in SIZES for p in PATCHES]


def heads_for_hidden(hidden_size: int) -> int | None:
  """num_heads of the official size with this hidden size, or None for a non-standard width."""
  for _, hidden, heads in SIZES.values():
    if hidden == hidden_size:
      return heads
  return None
