"""DiT's Gaussian diffusion (DDPM/DDIM steps, respacing, the variational bound) as pure functions."""
from nag_jax.diffusion.gaussian_diffusion import (NOISE_SCHEDULES, VARIANCE_TYPES, GaussianDiffusion,
                                                  create_diffusion, ddim_sample, extract,
                                                  get_named_beta_schedule, model_timesteps,
                                                  p_mean_variance, p_sample, predict_eps_from_xstart,
                                                  predict_xstart_from_eps, q_posterior_mean_variance,
                                                  q_sample)
from nag_jax.diffusion.losses import discretized_gaussian_log_likelihood, mean_flat, normal_kl, vb_terms_bpd
from nag_jax.diffusion.respacing import space_timesteps
