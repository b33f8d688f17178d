"""Sample a converted SiT with the paper's settings (250-step Euler-Maruyama SDE, sigma diffusion, Mean last step).

  python -m nag_jax.sample --config configs/sample_sit.py:nag_cfg \
      --config.checkpoint=ckpt/sit-xl-2 --config.vae=ckpt/sd-vae-ft-ema

Presets after the colon: none | cfg (1.5) | nag (w=3.0) | nag_cfg (cfg 1.2 + w 2.0).
ODE instead: --config.sampler.method=ode --config.sampler.ode_method=dopri5.
"""
from nag_jax.hardware import split_config_arg
from nag_jax.sampling.config import apply_hardware, default_sample_config


def get_config(arg: str = "nag"):
  """`arg`: the guidance preset, optionally ",HARDWARE" (see the table above)."""
  preset, hardware_name = split_config_arg(arg, "nag")
  return apply_hardware(default_sample_config("sit", preset), hardware_name)
