"""Checkpoint conversion (official PyTorch <-> Orbax) and converted model directories."""
from nag_jax.checkpoints.model_dir import load, read_config, save
from nag_jax.checkpoints.torch_io import CheckpointError

__all__ = ["CheckpointError", "load", "read_config", "save"]
