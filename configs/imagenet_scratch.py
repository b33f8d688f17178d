"""DiT or SiT (S/B/L/XL, patch 2) from scratch on ImageNet 256x256 latents with 10% noise dropout (paper Table 4).

  python -m nag_jax.main --config configs/imagenet_scratch.py:DiT-XL/2 --workdir runs/dit-xl-2-scratch \
      --config.data.path=data/imagenet256_latents

`data.path` is an array_record latents folder of the ImageNet train set (SD-VAE latents x 0.18215, both
flips stored; see nag_jax.data.write_latents). Any of DiT-{S,B,L,XL}/2 and SiT-{S,B,L,XL}/2 works.
Expected result: the FID-10K bars of the paper's Figure 3 after 400K steps (80 epochs; values only in
the figure). Without NAG, the DiT README's 400K-step check gives FID-50K 19.5 for XL/2 (cfg 1, mse VAE,
250 DDPM steps). Wall time (not measured here), XL/2: at the 0.84 steps/s the DiT README quotes for fast-DiT on one
A100 (batch not stated), 400K steps take about 5.5 days; S/2 needs 20x fewer FLOPs (6.0 vs 118.6 GFLOPs).

Hardware variants for XL/2, `:DiT-XL/2,VARIANT` or `:SiT-XL/2,VARIANT` (nag_jax.hardware.SETUPS: bfloat16
compute, batch 256):

  TPU_NAME=nag ZONE=us-east5-a ACCELERATOR=v6e-32 launch/tpu_pod.sh python -m nag_jax.main \
      --config configs/imagenet_scratch.py:DiT-XL/2,v6e-32 --workdir gs://BUCKET/runs/dit-xl-2-scratch \
      --config.data.path=data/imagenet256_latents
  python -m nag_jax.dry_run --config configs/imagenet_scratch.py:DiT-XL/2,v6e-32   # the verdict below, on a CPU

The from-scratch step is the fine-tune's program (the TPU compiler gives the same per-chip peak and projection).
Per chip, with the roofline at 50% of the chip's peaks (projections, not measurements; GPU rows not
compiler-checked). 400K steps at these rates: v4-32 29.9 h, v5e-64 19.9 h, v5p-64 6.9 h, v6e-32 12.0 h,
8xH100 5.1 h, 8xA100-80GB 16.2 h.

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
