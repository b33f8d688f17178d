"""Platform-specific choices, in one place, applied where programs are compiled; the model core has none.

Measured on 2-core CPUs and useful only under XLA:CPU (docs/benchmarks.md):
- the dot library: float32 dots of models with EIGEN_MIN_TOKENS tokens or more go to Eigen instead of XLA:CPU's
  default YNNPACK (`dot_compiler_options`);
- the gradient fence between blocks (`ModelConfig.grad_fence="auto"`, `resolve`): on under XLA:CPU, whose fusion
  otherwise recomputes the residual stream's gradient inside every block's backward.
Elsewhere both do nothing. The platform is read from the devices a program is compiled for (a mesh's), not from
`jax.default_backend()`, which says "cpu" while the TPU compiler builds a program for a TPU slice on a CPU host.
"""
from __future__ import annotations

import os
from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np

from nag_jax.models.config import ModelConfig

# XLA:CPU's choice of dot library: its default runs each dot and convolution in YNNPACK, "" leaves them to Eigen.
YNN_DOTS_OPTION = "xla_cpu_experimental_ynn_fusion_type"
XLA_DEFAULT_YNN = {YNN_DOTS_OPTION: "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION"}
# Below this many tokens Eigen's batched attention dots are slower than YNNPACK's (folded core forward, 2-core
# Xeon: 5.7x YNNPACK's time at 4 tokens, 1.8x at 16, 0.97x at 64, 0.79x at 256).
EIGEN_MIN_TOKENS = 64


def platform_of(devices: Iterable | None = None) -> str:
  """"cpu", "tpu" or "gpu" of the devices a program runs on (default: this process's)."""
  devices = list(np.asarray(jax.devices() if devices is None else devices, dtype=object).flat)
  name = devices[0].platform
  return "gpu" if name in ("cuda", "rocm", "gpu") else name


def resolve(config: ModelConfig, devices: Iterable | None = None) -> ModelConfig:
  """`config` with its platform-dependent fields decided for `devices`: grad_fence "auto" -> "on" on CPU, else "off"."""
  if config.grad_fence != "auto":
    return config
  return config.replace(grad_fence="on" if platform_of(devices) == "cpu" else "off")


def dot_compiler_options(config: ModelConfig, devices: Iterable | None = None) -> dict[str, str]:
  """XLA options for a program of this model (its dtype and token count) on `devices` (default: this process's).

  On CPU, float32 dots go to Eigen from EIGEN_MIN_TOKENS tokens on: its rate was 1.1-1.6x YNNPACK's at the dense
  layers' shapes (benchmarks/train.py prints both); bfloat16 ones, and the few-token attention of small models,
  stay in YNNPACK. Elsewhere, or when XLA_FLAGS sets the option itself, none.
  """
  if (platform_of(devices) != "cpu" or config.compute_dtype != jnp.float32
      or config.num_tokens < EIGEN_MIN_TOKENS
      or YNN_DOTS_OPTION in os.environ.get("XLA_FLAGS", "")):
    return {}
  return {YNN_DOTS_OPTION: ""}
