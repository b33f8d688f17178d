"""Guidance: CFG, classifier-free NAG, NAG+CFG, Domain Guidance, batched into one model call per step."""
from nag_jax.guidance.combine import cfg, combine, nag
from nag_jax.guidance.config import GuidanceConfig
from nag_jax.guidance.denoiser import Branched, make_denoise, make_segments

__all__ = ["Branched", "GuidanceConfig", "cfg", "combine", "make_denoise", "make_segments", "nag"]
