"""The periodic sample grid: the same noise and labels sampled without NAG (top row) and with NAG (bottom)."""
from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from nag_jax import process
from nag_jax.guidance import GuidanceConfig
from nag_jax.models.config import ModelConfig
from nag_jax.models.vae import AutoencoderKL
from nag_jax.models.vae_io import decode_to_uint8
from nag_jax.sampling.images import grid, to_rgb_uint8
from nag_jax.sampling.pipeline import SamplerConfig, build_sampler
from nag_jax.sharding import replicated


def make_sample_grid_fn(model_config: ModelConfig, sc: ml_collections.ConfigDict, mesh: Mesh, param_shardings: Any,
                        pseudo_level: float | None = None, seed: int = 0,
                        vae: tuple[AutoencoderKL, Any] | None = None) -> Callable[[Any], np.ndarray]:
  """fn(params) -> uint8 grid of `sc.num_images` samples without and with NAG (`sc.nag_scale`).

  Uses the family's default sampler (DDPM for DiT, Euler-Maruyama SDE for SiT) with `sc.num_steps`.
  `vae` = (module, params) decodes latents to images inside the compiled call (else channels 0-2 are shown).
  The samples come back replicated, so every process (of a multi-host run) holds the whole grid.
  """
  sampler = SamplerConfig(method=process.family_process(model_config.family).sampler_methods[0],
                          num_steps=sc.num_steps)
  base = dict(cfg_scale=sc.cfg_scale, pseudo_level=pseudo_level)
  decode = None if vae is None else functools.partial(decode_to_uint8, vae[0])
  fns = [build_sampler(model_config, sampler, GuidanceConfig(nag_scale=w, **base), decode=decode, jit=False,
                       devices=mesh.devices)
         for w in (0.0, sc.nag_scale)]
  rep = replicated(mesh)
  vae_params = None if vae is None else jax.device_put(vae[1], rep)

  def both(params, decoder_params):
    labels = jnp.arange(sc.num_images, dtype=jnp.int32) % model_config.num_classes
    outs = [fn(params, jax.random.key(seed), labels, decoder_params=decoder_params) for fn in fns]
    return [o["latents"] if decode is None else o["images"] for o in outs]

  run = jax.jit(both, in_shardings=(param_shardings, rep), out_shardings=rep, compiler_options=fns[0].compiler_options)

  def sample_grid(params):
    return grid([to_rgb_uint8(x) if decode is None else np.asarray(x) for x in run(params, vae_params)])

  return sample_grid
