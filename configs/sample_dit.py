"""Sample a converted DiT with the paper's settings (250 DDPM steps; appendix B guidance weights).

  python -m nag_jax.sample --config configs/sample_dit.py:nag \
      --config.checkpoint=ckpt/dit-xl-2 --config.vae=ckpt/sd-vae-ft-ema --config.num_samples=50000

Presets after the colon: none | cfg (1.5) | nag (w=3.0) | nag_cfg (cfg 1.2 + w 2.0). Official checkpoints
need the NAG fine-tune (configs/imagenet_finetune_nag.py:DiT) before `nag`/`nag_cfg` help: without a trained
noise-unconditional branch the pseudo level is out of distribution.

Hardware variants, `:PRESET,VARIANT` (nag_jax.hardware.SETUPS: bfloat16 compute, data parallel, 32 images per
chip per call, 16 on v5e):

  TPU_NAME=nag ZONE=us-east5-a ACCELERATOR=v5p-64 launch/tpu_pod.sh python -m nag_jax.sample \
      --config configs/sample_dit.py:nag_cfg,v5p-64 --config.checkpoint=gs://BUCKET/ckpt/dit-xl-2-nag \
      --config.vae=gs://BUCKET/ckpt/sd-vae-ft-ema --config.out_dir=gs://BUCKET/samples/dit-nag-cfg \
      --config.num_samples=50000
  python -m nag_jax.dry_run --config configs/sample_dit.py:nag_cfg,v5p-64   # the verdict below, on a CPU

The TPU compiler's verdict per chip for one DiT-XL/2 NAG+CFG sampler call (250 steps, 750 network rows per
image, SD-VAE decoding included; SiT-XL/2's peaks within 0.04 GiB), and the FLOP roofline at 50% of the
chip's peak: projections, not measurements; GPU rows not compiler-checked. 50,000 images at these rates:
v4-32 68 min, v5e-64 24 min, v5p-64 20 min, v6e-32 10 min, 8xH100 38 min, 8xA100-80GB 2.0 h.

| variant | mesh | images per call | peak per chip | spare | call, img/s at 50% (projected) | bound |
|---|---|---|---|---|---|---|
| v4-32 | data 16 | 512 | 7.8 of 32.0 GiB | 76% | 41,409 ms, 12 img/s | compute |
| v5e-64 | data 64 | 1024 | 5.3 of 14.9 GiB | 65% | 28,902 ms, 35 img/s | compute |
| v5p-64 | data 32 | 1024 | 7.7 of 95.0 GiB | 92% | 24,809 ms, 41 img/s | compute |
| v6e-32 | data 32 | 1024 | 7.8 of 29.8 GiB | 74% | 12,405 ms, 83 img/s | compute |
| 8xH100 | data 8 | 256 | not compiler-checked | | 11,514 ms, 22 img/s (FLOPs only) | compute |
| 8xA100-80GB | data 8 | 256 | not compiler-checked | | 36,498 ms, 7 img/s (FLOPs only) | compute |
"""
from nag_jax.hardware import split_config_arg
from nag_jax.sampling.config import apply_hardware, default_sample_config


def get_config(arg: str = "nag"):
  """`arg`: the guidance preset, optionally ",HARDWARE" (see the table above)."""
  preset, hardware_name = split_config_arg(arg, "nag")
  return apply_hardware(default_sample_config("dit", preset), hardware_name)
