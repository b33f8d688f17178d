"""Platform-specific choices, in one place, applied where programs are compiled; the model core has none.

Measured on 2-core CPUs and useful only under XLA:CPU (docs/benchmarks.md):
- the dot library: float32 dots of models with EIGEN_MIN_TOKENS tokens or more go to Eigen instead of XLA:CPU's
  default YNNPACK (`dot_compiler_options`);
- the gradient fence between blocks (`ModelConfig.grad_fence="auto"`, `resolve`): on under XLA:CPU, whose fusion
  otherwise recomputes the residual stream's gradient inside every block's backward;
- the attention core (`ModelConfig.attention="auto"`, `resolve`): "folded" under XLA:CPU;
- the sampler's row passes (`rows_per_pass`): a single CPU device runs a step's rows a few at a time.
Elsewhere none of them applies: "auto" attention is XLA's on GPU and TPU (the splash and cuDNN kernels are
selectable; "auto" moves to them once a lent device measures that they pay), no fence, no option, one pass.
The platform is read from the devices a program is compiled for (a mesh's), not from `jax.default_backend()`,
which says "cpu" while the TPU compiler builds a program for a TPU slice on a CPU host.
"""
from __future__ import annotations

import os
from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np

from nag_jax.errors import UserError
from nag_jax.models.config import KERNELS, ModelConfig

# XLA:CPU's choice of dot library: its default runs each dot and convolution in YNNPACK, "" leaves them to Eigen.
YNN_DOTS_OPTION = "xla_cpu_experimental_ynn_fusion_type"
XLA_DEFAULT_YNN = {YNN_DOTS_OPTION: "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION"}
# Below this many tokens Eigen's batched attention dots are slower than YNNPACK's (folded core forward, 2-core
# Xeon: 5.7x YNNPACK's time at 4 tokens, 1.8x at 16, 0.97x at 64, 0.79x at 256).
EIGEN_MIN_TOKENS = 64
# One forward pass's MLP activations (rows x tokens x MLP width) on a single CPU device: those of 8 DiT-S/2
# rows at 256 px (12.6 MB), the fastest pass size measured by benchmarks.vs_torch with YNNPACK's dots (bfloat16;
# float32 before Eigen), whose rate falls with M; with float32 in Eigen no pass size was faster at every row count.
CPU_PASS_ACTIVATIONS = 8 * 256 * 1536


def platform_of(devices: Iterable | None = None) -> str:
  """"cpu", "tpu" or "gpu" of the devices a program runs on (default: this process's)."""
  devices = list(np.asarray(jax.devices() if devices is None else devices, dtype=object).flat)
  name = devices[0].platform
  return "gpu" if name in ("cuda", "rocm", "gpu") else name


def resolve(config: ModelConfig, devices: Iterable | None = None) -> ModelConfig:
  """`config` with its platform-dependent fields decided for `devices` (default: this process's).

  grad_fence "auto" -> "on" on CPU, else "off"; attention "auto" -> "folded" on CPU, else "xla"; a Pallas kernel
  (KERNELS: "splash" for TPU, "flash" for GPU) -> "NAME-interpret" on CPU (the Pallas interpreter: exact, slow);
  a kernel on the other accelerator, or "cudnn" off GPU, is refused in one line.
  """
  name = platform_of(devices)
  changes = {}
  if config.grad_fence == "auto":
    changes["grad_fence"] = "on" if name == "cpu" else "off"
  if config.attention == "auto":
    changes["attention"] = "folded" if name == "cpu" else "xla"
  elif config.attention in KERNELS and KERNELS[config.attention] != name:
    if name != "cpu":
      raise UserError(f"attention {config.attention!r} is a {KERNELS[config.attention].upper()} kernel; on {name} "
                      f"use 'xla' or {'splash' if name == 'tpu' else 'cudnn'!r}")
    changes["attention"] = f"{config.attention}-interpret"
  elif config.attention == "cudnn" and name != "gpu":
    raise UserError(f"attention 'cudnn' is a GPU kernel; on {name} use 'xla'")
  return config.replace(**changes) if changes else config


def rows_per_pass(config: ModelConfig, row_chunk: int, devices: Iterable | None = None) -> int | None:
  """Model rows per forward pass of the sampler: `row_chunk` if > 0; for 0, on a single CPU device as many rows
  as keep the MLP activations at CPU_PASS_ACTIVATIONS (XLA:CPU runs big passes out of cache), and elsewhere
  (None) all rows of a step in one pass."""
  if row_chunk:
    return row_chunk
  devices = list(np.asarray(jax.devices() if devices is None else devices, dtype=object).flat)
  if platform_of(devices) != "cpu" or len(devices) > 1:
    return None
  return max(1, CPU_PASS_ACTIVATIONS // (config.num_tokens * int(config.hidden_size * config.mlp_ratio)))


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
