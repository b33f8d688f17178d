"""Flax DiT/SiT backbones, their configs and registry, and the SD-VAE."""
from nag_jax.models.config import ModelConfig, get_model_config, registry_names
from nag_jax.models.dit import DiT, init_params

__all__ = ["DiT", "ModelConfig", "get_model_config", "init_params", "registry_names"]
