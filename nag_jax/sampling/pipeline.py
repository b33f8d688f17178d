"""One compiled sampling call: initial noise, the guided step loop and optional VAE decoding to uint8."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from nag_jax import checks
from nag_jax import process
from nag_jax.errors import UserError
from nag_jax.guidance import Branched, GuidanceConfig, make_segments
from nag_jax.guidance.classifier_nag import Estimator
from nag_jax.guidance.denoiser import branch_inputs
from nag_jax.models.config import ModelConfig
from nag_jax.models.dit import DiT, cast_for_compute
from nag_jax import platform
from nag_jax.models.noise_estimator import NoiseEstimator
from nag_jax.sampling import common
from nag_jax.sampling.ddpm_sampler import DIFFUSION_SAMPLERS, diffusion_noise_levels, sample_diffusion
from nag_jax.sampling.ode_sampler import ODE_SAMPLERS, ode_noise_levels, sample_ode
from nag_jax.sampling.sde_sampler import SDE_SAMPLERS, sample_sde, sde_noise_levels


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
  """Which sampler and its settings; defaults are the official sample scripts' (250 steps)."""
  method: str = "ddpm"                 # one of the family's `Process.sampler_methods`
  num_steps: int = 250
  respacing: str | None = None         # DiT only; default str(num_steps) or f"ddim{num_steps}"
  clip_denoised: bool = False
  eta: float = 0.0
  sde_method: str = "Euler"
  diffusion_form: str = "sigma"
  diffusion_norm: float = 1.0
  last_step: str | None = "Mean"
  last_step_size: float = 0.04
  ode_method: str = "dopri5"
  atol: float = 1e-6
  rtol: float = 1e-3
  path_type: str = "Linear"
  row_chunk: int = 0                   # model rows per forward pass; 0 = auto (platform.rows_per_pass)

  def validate(self, family: str) -> None:
    """One clear error for a bad choice, before any compute."""
    nonfinite = checks.nonfinite_fields(self)  # NaN passes every range check below
    if nonfinite:
      raise UserError("invalid sampler: " + "; ".join(nonfinite))
    common.check_choice(f"sampling method for {family}", self.method, process.family_process(family).sampler_methods)
    if self.num_steps < 1:
      raise UserError(f"num_steps must be >= 1, got {self.num_steps}")
    if self.method == "sde":
      common.check_choice("SDE sampler", self.sde_method, SDE_SAMPLERS)
    if self.method == "ode":
      common.check_choice("ODE sampler", self.ode_method, ODE_SAMPLERS)
    if self.method in DIFFUSION_SAMPLERS and self.eta < 0:
      raise UserError(f"eta must be >= 0, got {self.eta}")
    if not isinstance(self.row_chunk, int) or self.row_chunk < 0:
      raise UserError(f"row_chunk must be an integer >= 0, got {self.row_chunk!r}")
    if self.row_chunk and jax.device_count() > 1:
      raise UserError(f"row_chunk {self.row_chunk} needs a single device (here {jax.device_count()}); "
                      "with a mesh each device runs its own rows: use row_chunk 0")


def in_passes(apply: Callable, rows: int | None) -> Callable:
  """apply(p, x, t, y) computed `rows` rows at a time: lax.map over the full passes, one call for the rest."""
  if rows is None:
    return apply

  def passes(p, x, t, y):
    n = x.shape[0]
    if n <= rows:
      return apply(p, x, t, y)
    full = n - n % rows
    split = lambda a: a[:full].reshape(full // rows, rows, *a.shape[1:])
    out = jax.lax.map(lambda a: apply(p, *a), (split(x), split(t), split(y)))
    out = out.reshape(full, *out.shape[2:])
    return out if full == n else jnp.concatenate([out, apply(p, x[full:], t[full:], y[full:])])
  return passes


def _process(model_config: ModelConfig, s: SamplerConfig) -> process.Process:
  """The model's process as its samplers see it (the sampler's path, the model's variance head)."""
  return process.create(model_config.family, path_type=s.path_type, learn_sigma=model_config.learn_sigma)


def _plan(proc: process.Process, s: SamplerConfig):
  """(noise levels per step, run(segments, x, key, noises, trajectory)) for the chosen (validated) sampler."""
  if s.method in DIFFUSION_SAMPLERS:
    respacing = s.respacing or (f"ddim{s.num_steps}" if s.method == "ddim" else str(s.num_steps))
    diffusion = proc.respaced(respacing)
    def run(segs, x, key, noises, traj):
      return sample_diffusion(diffusion, segs, x, key, method=s.method, eta=s.eta,
                              clip_denoised=s.clip_denoised, noises=noises, return_trajectory=traj)
    return diffusion_noise_levels(diffusion), run
  transport = proc.transport
  if s.method == "sde":
    kw = dict(num_steps=s.num_steps, diffusion_form=s.diffusion_form, last_step=s.last_step,
              last_step_size=s.last_step_size)
    def run(segs, x, key, noises, traj):
      return sample_sde(transport, segs, x, key, method=s.sde_method, diffusion_norm=s.diffusion_norm,
                        noises=noises, return_trajectory=traj, **kw)
    return sde_noise_levels(transport, **kw), run
  if s.ode_method == "dopri5":
    def run(segs, x, key, noises, traj):
      del key, noises
      return sample_ode(transport, segs[0][2], x, num_steps=s.num_steps, method="dopri5", atol=s.atol,
                        rtol=s.rtol, return_trajectory=traj)
    return np.ones(1), run
  def run(segs, x, key, noises, traj):
    del key, noises
    return sample_ode(transport, segs, x, num_steps=s.num_steps, method=s.ode_method, return_trajectory=traj)
  return ode_noise_levels(transport, s.num_steps), run


def step_noise_levels(model_config: ModelConfig, sampler: SamplerConfig) -> np.ndarray:
  """Static noise fraction (1 = noise) of each denoising step of the sampler, as the guidance sees it."""
  sampler.validate(model_config.family)
  return _plan(_process(model_config, sampler), sampler)[0]


def network_rows(model_config: ModelConfig, sampler: SamplerConfig, guidance: GuidanceConfig) -> int:
  """Rows the network computes per sampled image over a whole run (steps x the guidance branches active at each):
  750 for the paper's NAG + CFG over 250 steps. The FLOP count of sampling is this times one forward's. A parent
  model's rows (Domain Guidance, autoguidance) are not counted, nor dopri5's adaptive steps (one is)."""
  return sum(len(branch_inputs(guidance, guidance.active_terms(float(nu))))
             for nu in step_noise_levels(model_config, sampler))


def build_sampler(model_config: ModelConfig, sampler: SamplerConfig, guidance: GuidanceConfig, *,
                  decode: Callable[[Any, jax.Array], jax.Array] | None = None,
                  parent_config: ModelConfig | None = None, estimator: NoiseEstimator | None = None,
                  return_trajectory: bool = False, jit: bool = True, devices=None) -> Callable:
  """fn(params, key, labels, *, decoder_params=None, parent_params=None, estimator_params=None, noises=None).

  Returns a dict with "latents" (NHWC), "images" (uint8 NHWC, when `decode(decoder_params, latents)` is
  given), "trajectory" (when asked) and "nfe". Everything, noise draws to uint8, is one compiled call.
  For dopri5 the guided terms are active over the whole interval (intervals need fixed grids).
  Classifier-based NAG needs `estimator` (g_phi; its params at call time).
  `devices`: those the program is compiled for (a mesh's; default this process's), whose platform decides the
  models' "auto" choices, the row passes and the compiler options (`nag_jax.platform`).
  `labels` are integer class ids in [0, num_classes) (the null class is internal): concrete labels
  outside are refused with a UserError; traced ones (under an outer jit) give NaN rows instead.
  """
  sampler.validate(model_config.family)
  proc = _process(model_config, sampler)
  guidance = dataclasses.replace(guidance, pseudo_level=proc.pseudo_level(guidance.pseudo_level))  # once, here
  nu, run = _plan(proc, sampler)
  used = frozenset().union(*(guidance.active_terms(float(v)) for v in nu))
  if "dog" in used and parent_config is None:
    raise UserError("dog_scale > 1 needs parent_config (the pre-trained model of Domain Guidance)")
  if "autoguidance" in used and parent_config is None:
    raise UserError("autoguidance_scale > 1 needs parent_config (the weaker model of autoguidance)")
  if "classifier_nag" in used and estimator is None:
    raise UserError("classifier_nag_scale > 0 needs estimator (the noise-level estimator g_phi)")
  model_config = platform.resolve(model_config, devices)
  parent_config = None if parent_config is None else platform.resolve(parent_config, devices)
  model = DiT(model_config)
  parent = DiT(parent_config) if parent_config is not None else None
  shape = (model_config.input_size, model_config.input_size, model_config.in_channels)

  def apply(module):
    rows = platform.rows_per_pass(module.config, sampler.row_chunk, devices)
    return in_passes(lambda p, x, t, y: module.apply({"params": p}, x, t, y), rows)

  def sample(params, key, labels, decoder_params=None, parent_params=None, estimator_params=None, noises=None):
    checks.check_labels(labels, model_config.num_classes)
    # Kernels cast to the compute dtype once here, outside the step loop; the sampler state stays float32.
    main = Branched(apply(model), cast_for_compute(params, model_config), model_config.null_class,
                    model_config.in_channels)
    par = None if parent is None else Branched(apply(parent), cast_for_compute(parent_params, parent_config),
                                               parent_config.null_class, parent_config.in_channels)
    est = None if estimator is None else Estimator(
        lambda p, x, y: estimator.apply({"params": p}, x, y), estimator_params)
    segs = make_segments(main, labels, guidance, nu, par, process=proc, estimator=est)
    init_key, step_key = jax.random.split(key)
    x = jax.random.normal(init_key, (labels.shape[0], *shape), jax.numpy.float32)
    out = run(segs, x, step_key, noises, return_trajectory)
    latents = checks.poison_invalid_rows(out.x, labels, model_config.num_classes)
    result = {"latents": latents, "nfe": out.nfe}
    if return_trajectory:
      result["trajectory"] = checks.poison_invalid_rows(out.trajectory, labels, model_config.num_classes, axis=1)
    if decode is not None:
      result["images"] = decode(decoder_params, latents)
    return result

  sample.num_classes = model_config.num_classes  # for wrappers (shard_sampler) that check concrete labels
  sample.compiler_options = platform.dot_compiler_options(model_config, devices)  # for the wrappers that jit it
  if not jit:
    return sample
  compiled = jax.jit(sample, compiler_options=sample.compiler_options)

  def checked(params, key, labels, *args, **kwargs):
    checks.check_labels(labels, model_config.num_classes)  # the values, before they are traced
    return compiled(params, key, labels, *args, **kwargs)

  return checked
