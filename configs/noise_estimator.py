"""Train the noise-level estimator g_phi (paper appendix B.2) from a converted SiT-XL/2 (or DiT-XL/2).

  python -m nag_jax.main --config configs/noise_estimator.py:SiT --workdir runs/g-phi-sit \
      --config.init_from=ckpt/sit-xl-2 --config.data.path=data/imagenet256_latents

The backbone keeps the pre-trained weights, its final layer is replaced by a two-layer MLP
(1152 -> 576, SiLU, -> 1) on the mean-pooled tokens, the noise-condition input is held at the pseudo
level (1.001 for SiT), and the L2 loss regresses t (SiT t in [0, 1], 1 = data; DiT t / 1000). No EMA.
Expected result: training loss about 0.0002 after 40 epochs (200K steps at batch 256) for SiT-XL/2.
Wall time (not measured here): 4x the steps of the XL/2 NAG fine-tune, at about the same cost per step.
"""
from nag_jax.training.base_config import get_xl2_finetune_config


def get_config(family: str = "SiT"):
  """The B.1 fine-tune hyperparameters (lr 1e-5, batch 256, AdamW) for 200K steps, no EMA, no sample grid."""
  config = get_xl2_finetune_config(family, mode="noise_estimator")
  config.num_train_steps = 200_000
  config.ema_decay = 0.0
  config.objective.noise_dropout = 0.0
  config.checkpoint.every_steps = 10_000
  config.sample.every_steps = 0
  return config
