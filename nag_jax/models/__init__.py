"""Flax DiT/SiT backbones, their configs and registry, and the SD-VAE."""
from nag_jax.models.cfg_forward import forward_with_cfg
from nag_jax.models.config import ModelConfig, get_model_config, registry_names
from nag_jax.models.dit import DiT, init_params

__all__ = ["DiT", "ModelConfig", "forward_with_cfg", "get_model_config", "init_params", "registry_names"]
