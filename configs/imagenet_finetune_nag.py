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

Hardware variants, `:DiT,VARIANT` or `:SiT,VARIANT` (nag_jax.hardware.SETUPS: bfloat16 compute, batch 256):

  TPU_NAME=nag ZONE=us-east5-a ACCELERATOR=v5p-64 launch/tpu_pod.sh python -m nag_jax.main \
      --config configs/imagenet_finetune_nag.py:DiT,v5p-64 --workdir gs://BUCKET/runs/dit-xl-2-nag \
      --config.init_from=gs://BUCKET/ckpt/dit-xl-2 --config.data.path=data/imagenet256_latents
  python -m nag_jax.dry_run --config configs/imagenet_finetune_nag.py:DiT,v5p-64   # the verdict below, on a CPU

The TPU compiler's verdict per chip for the DiT-XL/2 train step (SiT-XL/2's: peaks within 0.03 GiB,
projections within 0.4%), and the roofline at 50% of the chip's peaks: projections, not measurements (the
HBM bound counts XLA's bytes accessed, an upper bound on the traffic). GPU rows are not compiler-checked.
50K steps at these rates: v4-32 3.7 h, v5e-64 2.5 h, v5p-64 52 min, v6e-32 90 min, 8xH100 38 min, 8xA100-80GB 2.0 h.

| variant | mesh | peak per chip | spare | step, img/s at 50% (projected) | bound | why this mesh |
|---|---|---|---|---|---|---|
| v4-32 | data 2 x fsdp 8 | 9.4 of 32.0 GiB | 71% | 269 ms, 952 img/s | HBM | 16 images per chip: the v5p-64 layout (fsdp 8 within each data group) |
| v5e-64 | data 8 x fsdp 8 | 5.3 of 14.9 GiB | 65% | 179 ms, 1,427 img/s | HBM | 4 images per chip, 16 GB: pure data parallelism holds the 10 GiB of state on every chip (peak 12.3 GiB, 18% spare, projected 332 ms per step); fsdp 8 shards it (5.3 GiB, 179 ms) |
| v5p-64 | data 4 x fsdp 8 | 5.4 of 95.0 GiB | 94% | 62 ms, 4,105 img/s | HBM | 8 images per chip: projected 62 ms per step, against 69 ms for pure fsdp 32 and 91 ms (and 14.1 GiB) for pure data parallelism |
| v6e-32 | data 4 x fsdp 8 | 5.0 of 29.8 GiB | 83% | 108 ms, 2,376 img/s | HBM | 8 images per chip: the v5p-64 layout |
| 8xH100 | fsdp 8 | not compiler-checked | | 46 ms, 5,558 img/s (FLOPs only) | compute | one NVLink node, 32 images per GPU: fsdp shards the state |
| 8xA100-80GB | fsdp 8 | not compiler-checked | | 146 ms, 1,754 img/s (FLOPs only) | compute | as 8xH100 |
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
