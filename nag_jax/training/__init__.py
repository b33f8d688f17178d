"""Training and fine-tuning with noise-condition dropout (NAG), and the noise-level estimator g_phi."""
from nag_jax.training.base_config import get_base_config, model_fields
from nag_jax.training.config_validation import ConfigError, validate
from nag_jax.training.objectives import Objective, create_objective
from nag_jax.training.train_state import TrainState, create_optimizer
from nag_jax.training.train_step import jit_train_step, train_step

__all__ = ["ConfigError", "Objective", "TrainState", "create_objective", "create_optimizer", "get_base_config",
           "jit_train_step", "model_fields", "train_step", "validate"]
