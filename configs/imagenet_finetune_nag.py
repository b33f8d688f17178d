"""Fine-tune the released DiT-XL/2 or SiT-XL/2 (1400 epochs) to add the noise-unconditional branch (Table 1).

  python -m nag_jax.convert --src DiT-XL-2-256x256.pt --dst ckpt/dit-xl-2 --family dit
  python -m nag_jax.main --config configs/imagenet_finetune_nag.py:DiT --workdir runs/dit-xl-2-nag \
      --config.init_from=ckpt/dit-xl-2 --config.data.path=data/imagenet256_latents \
      --config.sample.vae=ckpt/sd-vae-ft-ema   # optional: TensorBoard sample grids as images

The converted weights are the official EMA weights; they become both the params and the EMA.
Expected result (paper Table 1, FID-50K): DiT-XL/2 9.62 -> 2.59 with NAG alone (w_nag 3.0, 250 DDPM
steps); with CFG 2.27 -> 2.14 (w_cfg 1.2, w_nag 2.0). SiT-XL/2 (`:SiT`, Euler-Maruyama SDE, 250 steps):
8.61 -> 2.26, with CFG 2.06 -> 1.72. 50K steps at batch 256 = 10 epochs (0.7% of the pre-training);
at the 0.84 steps/s quoted for fast-DiT on one A100 (DiT README; not measured here) about 17 hours.
"""
from nag_jax.hardware import split_config_arg
from nag_jax.training.base_config import apply_hardware, get_xl2_finetune_config


def get_config(arg: str = "DiT"):
  """Table 4, fine-tuning: 50K steps, batch 256, lr 1e-5, noise dropout 20%, pseudo level 1001 / 1.001.
  `arg`: "DiT" or "SiT", optionally ",HARDWARE" (see the table above)."""
  family, hardware_name = split_config_arg(arg, "DiT")
  config = get_xl2_finetune_config(family)
  config.num_train_steps = 50_000
  config.objective.noise_dropout = 0.2
  config.checkpoint.every_steps = 5_000
  config.sample.every_steps = 10_000
  return apply_hardware(config, hardware_name)
