"""DiT samplers: DDPM ancestral (`p_sample_loop`) and DDIM, each step loop a `lax.scan`."""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from nag_jax.diffusion import gaussian_diffusion as gd
from nag_jax.guidance import segments as seg
from nag_jax.sampling import common

DIFFUSION_SAMPLERS = ("ddpm", "ddim")


def diffusion_noise_levels(diffusion: gd.GaussianDiffusion) -> np.ndarray:
  """Static noise fraction of each step in loop order: original t / (original steps - 1), 1 = noise."""
  return diffusion.timestep_map[::-1] / (diffusion.original_num_steps - 1)


def sample_diffusion(diffusion: gd.GaussianDiffusion, denoise: seg.DenoiseSpec, x: jax.Array,
                     key: Optional[jax.Array] = None, *, method: str = "ddpm", eta: float = 0.0,
                     clip_denoised: bool = False, noises: Optional[jax.Array] = None,
                     return_trajectory: bool = False) -> common.SampleOutput:
  """Runs indices N-1 .. 0 from x (NHWC noise); step k (index N-1-k) calls denoise(x, timestep_map).

  Step k draws normal(fold_in(key, k)) unless `noises[k]` is injected (shape (N, *x.shape); the last
  one is multiplied by 0, as upstream). DDIM with eta = 0 draws nothing (and ignores `noises`).
  `clip_denoised` defaults to False, as DiT's `sample.py`; `eta` and the other keywords are static.
  """
  common.check_choice("diffusion sampler", method, DIFFUSION_SAMPLERS)
  n = diffusion.num_timesteps
  segments = seg.as_segments(denoise, n)
  noisy = method == "ddpm" or eta != 0
  common.check_noises(noises, key, n, x, draws=noisy)
  index = np.arange(n - 1, -1, -1, dtype=np.int32)
  xs = {"k": np.arange(n, dtype=np.int32), "i": index,
        "t": diffusion.timestep_map[index].astype(np.float32)}
  if noisy and noises is not None:
    xs["noise"] = noises

  def step(fn, x, s):
    out = fn(x, jnp.broadcast_to(s["t"], x.shape[:1]))
    noise = common.step_noise(key, s["k"], x, s.get("noise")) if noisy else None
    if method == "ddpm":
      x, _ = gd.p_sample(diffusion, out, x, s["i"], noise, clip_denoised)
    else:
      x, _ = gd.ddim_sample(diffusion, out, x, s["i"], noise, eta, clip_denoised)
    return x, (x if return_trajectory else None)

  x, trajectory = seg.scan_segments(step, x, xs, segments, seg.state_cell(segments, x))
  return common.SampleOutput(x, trajectory, n)
