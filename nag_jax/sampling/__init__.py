"""Samplers that see a denoiser (DDPM/DDIM for DiT, SDE/ODE for SiT), each step loop a `lax.scan`."""
from nag_jax.sampling.common import SampleOutput, linspace_f32
from nag_jax.sampling.ddpm_sampler import DIFFUSION_SAMPLERS, diffusion_noise_levels, sample_diffusion
from nag_jax.sampling.ode_sampler import ODE_SAMPLERS, ode_noise_levels, ode_time_grid, sample_ode
from nag_jax.sampling.sde_sampler import (LAST_STEPS, SDE_SAMPLERS, sample_sde, sde_noise_levels,
                                          sde_time_grid)
