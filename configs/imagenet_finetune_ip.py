"""Input Perturbation baseline (paper Table 5): fine-tune DiT-XL/2 or SiT-XL/2 with x_t built from noise + 0.1 xi.

  python -m nag_jax.main --config configs/imagenet_finetune_ip.py:DiT --workdir runs/dit-xl-2-ip \
      --config.init_from=ckpt/dit-xl-2 --config.data.path=data/imagenet256_latents

The same 10-epoch fine-tune as configs/imagenet_finetune_nag.py, with input perturbation (gamma 0.1,
Ning et al. 2023: the network sees x_t from eps + gamma xi but regresses eps) instead of noise dropout.
Expected result (Table 5, FID-50K w/o / w/ CFG): DiT-XL/2 10.20 / 2.19, SiT-XL/2 8.06 / 1.95.
Wall time: as the NAG fine-tune (not measured here).
"""
from nag_jax.training.base_config import get_xl2_finetune_config


def get_config(family: str = "DiT"):
  """Table 4's fine-tune (50K steps, batch 256, lr 1e-5) with noise dropout off and gamma = 0.1."""
  config = get_xl2_finetune_config(family)
  config.num_train_steps = 50_000
  config.objective.noise_dropout = 0.0
  config.objective.input_perturbation = 0.1
  config.checkpoint.every_steps = 5_000
  config.sample.every_steps = 0  # no noise-unconditional branch to guide with
  return config
