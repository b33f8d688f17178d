"""Sample a converted DiT with the paper's settings (250 DDPM steps; appendix B guidance weights).

  python -m nag_jax.sample --config configs/sample_dit.py:nag \
      --config.checkpoint=ckpt/dit-xl-2 --config.vae=ckpt/sd-vae-ft-ema --config.num_samples=50000

Presets after the colon: none | cfg (1.5) | nag (w=3.0) | nag_cfg (cfg 1.2 + w 2.0). Official checkpoints
need the NAG fine-tune (configs/imagenet_finetune_nag.py:DiT) before `nag`/`nag_cfg` help: without a trained
noise-unconditional branch the pseudo level is out of distribution.
"""
from nag_jax.hardware import split_config_arg
from nag_jax.sampling.config import apply_hardware, default_sample_config


def get_config(arg: str = "nag"):
  """`arg`: the guidance preset, optionally ",HARDWARE" (see the table above)."""
  preset, hardware_name = split_config_arg(arg, "nag")
  return apply_hardware(default_sample_config("dit", preset), hardware_name)
