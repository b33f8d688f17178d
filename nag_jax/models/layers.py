"""Layers of the DiT/SiT backbone: Dense (float32 params, dots in the compute dtype accumulated in float32) and
the gradient fence between blocks.

A bfloat16 dot that returns bfloat16 (or has its bias add fused in) runs no faster than float32 on
XLA:CPU; one with `preferred_element_type=float32` and the bias added afterwards in float32 does, and is
the usual mixed-precision recipe on GPU/TPU too.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from nag_jax.models import initializers as init


class Dense(nn.Module):
  """y = x @ kernel + bias with params named as nn.Dense's; operands cast to `dtype`, result float32."""
  features: int
  dtype: Any = jnp.float32
  kernel_init: Callable = init.xavier
  bias_init: Callable = init.zeros

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features), jnp.float32)
    bias = self.param("bias", self.bias_init, (self.features,), jnp.float32)
    y = jax.lax.dot_general(x.astype(self.dtype), kernel.astype(self.dtype),
                            (((x.ndim - 1,), (0,)), ((), ())), preferred_element_type=jnp.float32)
    return y + bias.astype(jnp.float32)


def dense(features: int, names: tuple, dtype, kernel_init=init.xavier, name: str | None = None) -> Dense:
  """Dense with logical axis names on kernel and bias (bias zero-initialised as officially)."""
  return Dense(features, dtype=dtype, name=name, kernel_init=init.partitioned(kernel_init, names),
               bias_init=init.partitioned(init.zeros, names[-1:]))


@jax.custom_vjp
def cotangent_fence(tree):
  """Identity whose cotangent is materialised: the backward passes it through a `lax.cond`, which XLA cannot fuse
  across (XLA:CPU drops optimization barriers before fusion). Without it, XLA:CPU's fusion recomputes the residual
  stream's gradient of every later block inside each block's backward: quadratic in depth, about 1.6x slower
  DiT-S/2 train steps at batch 8 (benchmarks/train.py)."""
  return tree


def _fence_backward(_, cotangent):
  # A data-dependent predicate, so the cond is not folded away; both branches return the cotangent unchanged.
  pred = jnp.isnan(jnp.sum(jax.tree.leaves(cotangent)[-1]))
  return (jax.lax.cond(pred, lambda g: jax.tree.map(lambda a: a + 0, g), lambda g: g, cotangent),)


cotangent_fence.defvjp(lambda tree: (tree, None), _fence_backward)
