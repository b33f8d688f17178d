"""DiT or SiT (S/B/L/XL, patch 2) from scratch on ImageNet 256x256 latents with 10% noise dropout (paper Table 4).

  python -m nag_jax.main --config configs/imagenet_scratch.py:DiT-XL/2 --workdir runs/dit-xl-2-scratch \
      --config.data.path=data/imagenet256_latents

`data.path` is an array_record latents folder of the ImageNet train set (SD-VAE latents x 0.18215, both
flips stored; see nag_jax.data.write_latents). Any of DiT-{S,B,L,XL}/2 and SiT-{S,B,L,XL}/2 works.
Expected result: the FID-10K bars of the paper's Figure 3 after 400K steps (80 epochs; values only in
the figure). Without NAG, the DiT README's 400K-step check gives FID-50K 19.5 for XL/2 (cfg 1, mse VAE,
250 DDPM steps). Wall time (not measured here), XL/2: at the 0.84 steps/s the DiT README quotes for fast-DiT on one
A100 (batch not stated), 400K steps take about 5.5 days; S/2 needs 20x fewer FLOPs (6.0 vs 118.6 GFLOPs).
"""
from nag_jax.hardware import split_config_arg
from nag_jax.training.base_config import apply_hardware, get_base_config, model_fields


def get_config(arg: str = "DiT-XL/2"):
  """Table 4, from scratch: 400K steps, batch 256, AdamW lr 1e-4 (0.9, 0.999), noise dropout 10%, EMA 0.9999.
  `arg`: the model, optionally ",HARDWARE" (laid out for XL/2; see the table above)."""
  model, hardware_name = split_config_arg(arg, "DiT-XL/2")
  config = get_base_config()
  config.model = model_fields(model, image_size=256, num_classes=1000)
  config.num_train_steps = 400_000
  config.global_batch_size = 256
  config.optimizer.learning_rate = 1e-4
  config.objective.noise_dropout = 0.1
  config.data.kind = "latents"
  config.checkpoint.every_steps = 50_000
  config.sample.every_steps = 50_000
  return apply_hardware(config, hardware_name)
