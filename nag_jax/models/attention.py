"""The attention core softmax(q k^T / sqrt(d)) v of DiT/SiT, by backend (`ModelConfig.attention`).

- "xla": `jax.nn.dot_product_attention`'s XLA path, the official computation; what "auto" means off CPU and what
  an unresolved "auto" runs (`nag_jax.platform.resolve` decides "auto" for the devices a program is compiled for).
- "folded": heads folded into the batch, 3-D dots, the softmax sum divided after the value product: 2-3x faster
  than "xla" under XLA:CPU, which is where "auto" picks it.
- "cudnn": the fused cuDNN kernel through `jax.nn.dot_product_attention` (GPU, bfloat16).
- "splash": the Pallas splash-attention kernel of `jax.experimental.pallas.ops.tpu` (TPU). A Mosaic kernel is
  not partitioned by XLA: under a mesh it runs inside `jax.shard_map` over the batch axes (and the heads over
  `tensor`), as maxdiffusion does. It needs sequence blocks of 128 and a lane-sized head dimension: tokens are
  padded to a multiple of 128 with the padded keys masked out by segment ids, head dimensions (72 for XL) padded
  with zeros to a multiple of 128 (the dot products and the values are unchanged).
- "flash": the Pallas flash-attention kernel of `jax.experimental.pallas.ops.gpu` (GPU, Triton), partitioned the
  same way; it pads head dimensions to a power of two itself.
- "splash-interpret", "flash-interpret": the same kernels run by the Pallas interpreter, what "splash" and "flash"
  become on CPU (tests).
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from nag_jax.models.layers import mixed_einsum
from nag_jax.sharding.rules import logical_spec

SPLASH_BLOCK = 128  # sequence block (and lane) size of the TPU kernel
ACTIVATION_NAMES = ("batch", "length", "heads", None)  # logical names of a (B, T, heads, head_dim) array


def attention(q: jax.Array, k: jax.Array, v: jax.Array, implementation: str) -> jax.Array:
  """Attention on (B, T, heads, head_dim) arrays in their dtype, logits and softmax in float32."""
  if implementation == "folded":
    return folded(q, k, v)
  kernel = implementation.removesuffix("-interpret")
  if kernel in KERNEL_FNS:
    run = functools.partial(KERNEL_FNS[kernel], interpret=implementation.endswith("-interpret"))
    return per_device(run, q, k, v)
  if implementation == "auto":  # not resolved for a platform (a model applied directly): the official graph
    implementation = "xla"
  return jax.nn.dot_product_attention(q, k, v, implementation=implementation)


def folded(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
  """Each product as one dot batched over B * heads; divides by the softmax sum after the value product (one
  pass fewer over the T x T probabilities)."""
  b, t, h, d = q.shape
  q, k, v = (jnp.transpose(a, (0, 2, 1, 3)).reshape(b * h, t, d) for a in (q * d ** -0.5, k, v))
  logits = mixed_einsum("nqd,nkd->nqk", q, k, v.dtype)
  p = jnp.exp(logits - jax.lax.stop_gradient(logits.max(-1, keepdims=True)))
  out = mixed_einsum("nqk,nkd->nqd", p, v, v.dtype)
  out = out / p.sum(-1, keepdims=True)
  return jnp.transpose(out.reshape(b, h, t, d), (0, 2, 1, 3)).astype(v.dtype)


def _round_up(n: int, m: int) -> int:
  return -(-n // m) * m


@functools.lru_cache(maxsize=None)
def _splash_kernel(heads: int, tokens: int, interpret: bool):
  """The splash kernel for `heads` heads over `tokens` (a multiple of SPLASH_BLOCK) tokens, full attention."""
  from jax.experimental.pallas.ops.tpu.splash_attention import (  # pylint: disable=import-outside-toplevel
      splash_attention_kernel as kernel, splash_attention_mask as mask)
  block = next(b for b in (512, 256, SPLASH_BLOCK) if tokens % b == 0)
  sizes = kernel.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                            block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
  heads_mask = mask.MultiHeadMask([mask.FullMask((tokens, tokens)) for _ in range(heads)])
  with jax.ensure_compile_time_eval():  # its mask tables concrete, not tracers of the first trace (cached)
    return kernel.make_splash_mha(heads_mask, block_sizes=sizes, head_shards=1, q_seq_shards=1,
                                  interpret=interpret)


def splash(q: jax.Array, k: jax.Array, v: jax.Array, *, interpret: bool = False) -> jax.Array:
  """The splash kernel on one device's (B, T, heads, head_dim) arrays: padded to the kernel's blocks, masked."""
  from jax.experimental.pallas.ops.tpu.splash_attention import (  # pylint: disable=import-outside-toplevel
      splash_attention_kernel as kernel)
  b, t, h, d = q.shape
  tp, dp = _round_up(t, SPLASH_BLOCK), _round_up(d, SPLASH_BLOCK)
  pad = lambda a: jnp.pad(jnp.transpose(a, (0, 2, 1, 3)), ((0, 0), (0, 0), (0, tp - t), (0, dp - d)))
  q, k, v = pad((q.astype(jnp.float32) * d ** -0.5).astype(q.dtype)), pad(k), pad(v)
  run = _splash_kernel(h, tp, interpret)
  if tp == t:
    out = jax.vmap(run)(q, k, v)
  else:  # padded keys in their own segment: no real query attends to them
    ids = (jnp.arange(tp) >= t).astype(jnp.int32)
    segments = kernel.SegmentIds(q=ids, kv=ids)
    out = jax.vmap(lambda q, k, v: run(q, k, v, segment_ids=segments))(q, k, v)
  return jnp.transpose(out[:, :, :t, :d], (0, 2, 1, 3)).astype(v.dtype)


def flash(q: jax.Array, k: jax.Array, v: jax.Array, *, interpret: bool = False) -> jax.Array:
  """The Pallas GPU flash-attention kernel on one device's (B, T, heads, head_dim) arrays (its default blocks of 128,
  or the whole sequence when shorter)."""
  from jax.experimental.pallas.ops.gpu import attention as kernel  # pylint: disable=import-outside-toplevel
  return kernel.mha(q, k, v, None, sm_scale=q.shape[-1] ** -0.5, interpret=interpret).astype(v.dtype)


KERNEL_FNS = {"splash": splash, "flash": flash}  # the Pallas kernels of config.KERNELS


def per_device(run, q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
  """`run(q, k, v)` (a Pallas kernel, which XLA cannot partition) per device inside `jax.shard_map` over the context
  mesh (`jax.set_mesh`): batch over the batch axes, heads over `tensor` (the logical rules), where they divide;
  without a mesh, or on one device, directly."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or math.prod(mesh.shape.values()) == 1:
    return run(q, k, v)
  spec = logical_spec(ACTIVATION_NAMES, q.shape, mesh)
  return jax.shard_map(run, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec, check_vma=False)(q, k, v)
