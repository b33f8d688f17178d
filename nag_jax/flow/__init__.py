"""SiT flow transport (Linear/GVP/VP paths, velocity prediction) as pure functions."""
from nag_jax.flow.paths import DIFFUSION_FORMS, PATH_TYPES, Path, expand_t_like_x
from nag_jax.flow.transport import Transport, check_interval, create_transport, sde_drift
