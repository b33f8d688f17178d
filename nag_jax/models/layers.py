"""Layers of the DiT/SiT backbone: the mixed-precision dot, Dense (float32 params, dots in the compute dtype
accumulated in float32) and the gradient fence between blocks (whether it is used is `nag_jax.platform`'s choice).

A bfloat16 dot that returns bfloat16 (or has its bias add fused in) runs no faster than float32 on
XLA:CPU; one with `preferred_element_type=float32` and the bias added afterwards in float32 does, and is
the usual mixed-precision recipe on GPU/TPU too.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from nag_jax.models import initializers as init
from nag_jax.models.config import ModelConfig

def mixed_einsum(spec: str, a: jax.Array, b: jax.Array, dtype: Any) -> jax.Array:
  """Two-operand einsum (every index in two of a, b, out) on operands cast to `dtype`, accumulated and returned in
  float32. In a low-precision dtype its gradients are the same kind of dot on the cotangent cast to `dtype`:
  JAX's own rule would run them on float32 operands, at the float32 rate."""
  if jnp.dtype(dtype) == jnp.float32:
    return _dot(spec, a, b, dtype)
  return _low_precision_einsum(spec, jnp.dtype(dtype), a.dtype, b.dtype)(a, b)


def _dot(spec: str, a: jax.Array, b: jax.Array, dtype) -> jax.Array:
  """The einsum on operands cast to `dtype`, accumulated in float32."""
  return jnp.einsum(spec, a.astype(dtype), b.astype(dtype), preferred_element_type=jnp.float32)


@functools.lru_cache(maxsize=None)
def _low_precision_einsum(spec: str, dtype, a_dtype, b_dtype) -> Callable:
  """mixed_einsum's custom_vjp for one (spec, dtypes): da = einsum(out,b->a), db = einsum(a,out->b)."""
  inputs, out = spec.split("->")
  sa, sb = inputs.split(",")

  @jax.custom_vjp
  def einsum(a, b):
    return _dot(spec, a, b, dtype)

  def forward(a, b):
    a, b = a.astype(dtype), b.astype(dtype)  # saved in `dtype`: half the residual memory
    return _dot(spec, a, b, dtype), (a, b)

  def backward(residuals, g):
    a, b = residuals
    return (_dot(f"{out},{sb}->{sa}", g, b, dtype).astype(a_dtype),
            _dot(f"{sa},{out}->{sb}", a, g, dtype).astype(b_dtype))

  einsum.defvjp(forward, backward)
  return einsum


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
    if jnp.dtype(self.dtype) != jnp.float32:  # its kernel gradient copies x transposed: faster in bfloat16
      lead = "abcdefgh"[:x.ndim - 1]
      return mixed_einsum(f"{lead}k,kn->{lead}n", x, kernel, self.dtype) + bias
    # float32 as one 2-D dot: its kernel gradient contracts the rows in place, 1.4x faster on XLA:CPU than
    # on the transposed copy XLA makes for a dot contracting several leading axes (benchmarks/train.py)
    y = mixed_einsum("mk,kn->mn", x.reshape(-1, x.shape[-1]), kernel, self.dtype)
    return y.reshape(*x.shape[:-1], self.features) + bias


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


FENCE_SCOPE = "grad_fence"  # the named scope of the fence's conditional (find it in a compiled program)


def _fence_backward(_, cotangent):
  # A data-dependent predicate, so the cond is not folded away; both branches return the cotangent unchanged.
  with jax.named_scope(FENCE_SCOPE):
    pred = jnp.isnan(jnp.sum(jax.tree.leaves(cotangent)[-1]))
    return (jax.lax.cond(pred, lambda g: jax.tree.map(lambda a: a + 0, g), lambda g: g, cotangent),)


cotangent_fence.defvjp(lambda tree: (tree, None), _fence_backward)
