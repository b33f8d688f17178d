"""Every key a training config may set, with the official DiT/SiT defaults; configs/*.py start from it.

Key reference (validated by `config_validation.validate` before any compute):
  mode: "scratch" | "finetune" (init_from a converted model dir; its EMA weights become params and
    EMA) | "noise_estimator" (g_phi of appendix B.2, backbone from init_from, no EMA).
  model: the fields of `nag_jax.models.ModelConfig` (in finetune modes they must match the checkpoint,
    except num_classes (a new label table; 0 = the data's class count), dtype and remat).
  objective: label_dropout (to the null class), noise_dropout (to the pseudo level; pseudo_level
    None = 1001 DiT / 1.001 SiT), input_perturbation gamma (0 = off), diffusion / flow settings.
  optimizer: AdamW; schedule constant | cosine | linear after warmup_steps; grad_clip_norm 0 = off.
  data.kind: digits | folder (path) | tfds (tfds_name, data_dir) | latents (path of array_record latents).
  sample: the periodic grid (every_steps 0 = off), without and with NAG; vae = a converted SD-VAE folder
    that decodes latent samples to images (latent models only).
  tensorboard: write TensorBoard events into workdir (process 0); False: the console only.
  log_batch_digests: process 0 writes each step's global-batch digest to workdir/batch_digests.txt (a check
    that runs on other numbers of processes, or resumed, train on the same data; exact under any sharding).
"""
from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from nag_jax.models.config import get_model_config
from nag_jax import hardware
from nag_jax.sharding.mesh import default_mesh_config
from nag_jax.errors import UserError


def model_fields(name: str, **overrides) -> ml_collections.ConfigDict:
  """The ModelConfig fields of a registry model ('DiT-XL/2', 'SiT-S/2', ...) as a ConfigDict."""
  return ml_collections.ConfigDict(get_model_config(name, **overrides).to_dict())


def get_base_config() -> ml_collections.ConfigDict:
  """DiT-XL/2 from scratch on ImageNet-256 latents: the official train.py hyperparameters plus NAG."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.mode = "scratch"
  c.init_from = ""
  c.model = model_fields("DiT-XL/2")
  c.num_train_steps = 400_000
  c.global_batch_size = 256
  c.ema_decay = 0.9999
  c.objective = ml_collections.ConfigDict(dict(
      label_dropout=0.1, noise_dropout=0.1, pseudo_level=config_dict.placeholder(float),
      input_perturbation=0.0, noise_schedule="linear", diffusion_steps=1000, path_type="Linear"))
  c.optimizer = ml_collections.ConfigDict(dict(
      learning_rate=1e-4, weight_decay=0.0, b1=0.9, b2=0.999, eps=1e-8, schedule="constant",
      warmup_steps=0, end_learning_rate_factor=0.0, grad_clip_norm=0.0, accumulation_steps=1))
  c.data = ml_collections.ConfigDict(dict(
      kind="latents", path="", tfds_name="", data_dir="", split="train", image_size=256, flip=True,
      shuffle=True, worker_count=0, read_threads=-1))  # read_threads: see nag_jax.data.pipeline.read_options
  c.mesh = ml_collections.ConfigDict(default_mesh_config())
  c.hardware = ""  # the hardware variant the config was laid out for (nag_jax.hardware.SETUPS), "" none
  c.checkpoint = ml_collections.ConfigDict(dict(every_steps=50_000, keep=3, async_save=True))
  c.log_every_steps = 100
  c.log_batch_digests = False
  c.tensorboard = True
  c.sample = ml_collections.ConfigDict(dict(every_steps=0, num_images=8, num_steps=50, nag_scale=3.0,
                                            cfg_scale=1.0, vae=""))  # vae: converted SD-VAE dir to decode latents
  return c


def get_xl2_finetune_config(family: str, mode: str = "finetune") -> ml_collections.ConfigDict:
  """Appendix B.1's fine-tune of the released DiT-XL/2 or SiT-XL/2: ImageNet-256 latents, batch 256, lr 1e-5."""
  if family not in ("DiT", "SiT"):
    raise UserError(f"config argument must be DiT or SiT, got {family!r}")
  c = get_base_config()
  c.mode = mode
  c.model = model_fields(f"{family}-XL/2", image_size=256, num_classes=1000)
  c.global_batch_size = 256
  c.optimizer.learning_rate = 1e-5
  c.data.kind = "latents"
  return c


def apply_hardware(c: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """Lays a training config out for the hardware variant `name` ("" leaves it): its mesh, bfloat16 compute,
  remat and accumulation (nag_jax.hardware.SETUPS); the global batch stays the paper's."""
  if not name:
    return c
  setup = hardware.setup(name)
  c.hardware = name
  c.mesh.update({"data": 1, "fsdp": 1, "tensor": 1, **setup.train_mesh})
  c.model.dtype = "bfloat16"
  c.model.remat = setup.remat
  c.optimizer.accumulation_steps = setup.accumulation_steps
  return c
