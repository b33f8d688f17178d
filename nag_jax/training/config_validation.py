"""Checks a training config before any compute and reports every problem in one clear error."""
from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import ml_collections

from nag_jax import paths
from nag_jax.checkpoints import model_dir, vae_convert
from nag_jax.checkpoints.torch_io import CheckpointError
from nag_jax.diffusion import NOISE_SCHEDULES
from nag_jax.errors import UserError
from nag_jax.flow import PATH_TYPES
from nag_jax.models.config import ModelConfig
from nag_jax.sharding import batch_devices, resolve_shape
from nag_jax.training.base_config import get_base_config
from nag_jax.training.input_pipeline import DATA_KINDS
from nag_jax.training.objectives import objective_process

MODES = ("scratch", "finetune", "noise_estimator")
SCHEDULES = ("constant", "cosine", "linear")
# Fields a fine-tune may change relative to the checkpoint it starts from.
FINETUNE_FREE = ("num_classes", "dtype", "class_dropout_prob", "remat", "grad_fence", "attention")


class ConfigError(UserError):
  """An invalid training config; the message lists every problem found."""


def unknown_keys(config: ml_collections.ConfigDict, schema: ml_collections.ConfigDict, prefix: str = "") -> list:
  """Dotted names of keys in `config` that the schema (the base config) does not have."""
  out = []
  for key, value in config.items():
    name = f"{prefix}{key}"
    if key not in schema:
      out.append(name)
    elif isinstance(value, ml_collections.ConfigDict) and isinstance(schema[key], ml_collections.ConfigDict):
      out += unknown_keys(value, schema[key], name + ".")
  return out


def has_key(dotted: str) -> bool:
  """True when the base config has the (dotted) key, e.g. 'optimizer.learning_rate'."""
  node = get_base_config()
  for part in dotted.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      return False
    node = node[part]
  return True


def model_config_of(config: ml_collections.ConfigDict, num_classes: int | None = None) -> ModelConfig:
  """The ModelConfig of `config.model`; num_classes 0 means the data's class count (`num_classes`)."""
  fields = config.model.to_dict()
  if fields["num_classes"] == 0:
    fields["num_classes"] = num_classes or 1
  return ModelConfig.from_dict(fields)


def _check(problems: list, name: str, value: Any, ok: Callable[[Any], bool], requirement: str) -> None:
  try:
    good = ok(value)
  except TypeError:
    good = False
  if not good:
    problems.append(f"{name} must be {requirement}, got {value!r}")


def validate(config: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
  """Raises ConfigError naming every bad value: unknown keys, ranges, choices, divisibility, paths."""
  unknown = unknown_keys(config, get_base_config())
  if unknown:
    raise ConfigError(f"invalid config: unknown keys {unknown} (see nag_jax/training/base_config.py)")
  p: list[str] = []
  c, o, opt = config, config.objective, config.optimizer
  try:
    model = model_config_of(c)
  except (UserError, TypeError) as e:
    raise ConfigError(f"invalid config: model: {e}") from None
  pos_int = lambda v: isinstance(v, int) and v >= 1
  nonneg_int = lambda v: isinstance(v, int) and v >= 0
  unit = lambda v: 0 <= v < 1
  _check(p, "mode", c.mode, lambda v: v in MODES, f"one of {MODES}")
  for name in ("num_train_steps", "global_batch_size", "log_every_steps", "checkpoint.every_steps",
               "checkpoint.keep", "optimizer.accumulation_steps", "sample.num_images", "sample.num_steps",
               "objective.diffusion_steps"):
    _check(p, name, functools.reduce(lambda d, k: d[k], name.split("."), c), pos_int, "a positive integer")
  _check(p, "ema_decay", c.ema_decay, unit, "in [0, 1)")
  _check(p, "objective.label_dropout", o.label_dropout, unit, "in [0, 1)")
  _check(p, "objective.noise_dropout", o.noise_dropout, unit, "in [0, 1)")
  _check(p, "objective.input_perturbation", o.input_perturbation, lambda v: v >= 0, ">= 0 (0 = off)")
  _check(p, "objective.noise_schedule", o.noise_schedule, lambda v: v in NOISE_SCHEDULES, f"one of {NOISE_SCHEDULES}")
  _check(p, "objective.path_type", o.path_type, lambda v: v in PATH_TYPES, f"one of {PATH_TYPES}")
  if o.pseudo_level is not None and not p:
    lo, hi = objective_process(model, o).time_range
    _check(p, "objective.pseudo_level", o.pseudo_level, lambda v: not lo <= v <= hi,
           f"outside the trained range [{lo}, {hi}] of {model.family} timesteps")
  _check(p, "optimizer.learning_rate", opt.learning_rate, lambda v: v > 0, "> 0")
  _check(p, "optimizer.weight_decay", opt.weight_decay, lambda v: v >= 0, ">= 0")
  _check(p, "optimizer.b1", opt.b1, unit, "in [0, 1)")
  _check(p, "optimizer.b2", opt.b2, unit, "in [0, 1)")
  _check(p, "optimizer.eps", opt.eps, lambda v: v > 0, "> 0")
  _check(p, "optimizer.schedule", opt.schedule, lambda v: v in SCHEDULES, f"one of {SCHEDULES}")
  _check(p, "optimizer.warmup_steps", opt.warmup_steps, nonneg_int, "an integer >= 0")
  _check(p, "optimizer.end_learning_rate_factor", opt.end_learning_rate_factor, lambda v: 0 <= v <= 1, "in [0, 1]")
  _check(p, "optimizer.grad_clip_norm", opt.grad_clip_norm, lambda v: v >= 0, ">= 0 (0 = off)")
  _check(p, "data.kind", c.data.kind, lambda v: v in DATA_KINDS, f"one of {DATA_KINDS}")
  _check(p, "data.worker_count", c.data.worker_count, nonneg_int, "an integer >= 0")
  _check(p, "data.read_threads", c.data.read_threads, lambda v: isinstance(v, int) and v >= -1,
         "an integer >= -1 (-1 = automatic, 0 = in-thread)")
  _check(p, "sample.every_steps", c.sample.every_steps, nonneg_int, "an integer >= 0 (0 = off)")
  _check(p, "sample.nag_scale", c.sample.nag_scale, lambda v: v >= 0, ">= 0 (NAG convention, 0 = off)")
  _check(p, "sample.cfg_scale", c.sample.cfg_scale, lambda v: v >= 1, ">= 1 (CFG convention, 1 = off)")
  if not p:  # the values have sane types and ranges: now check how they fit together
    _check_consistency(p, c, model)
    _check_batch(p, c, num_devices or jax.device_count())
    if c.mode != "scratch":
      _check_init_from(p, c, model)
    elif c.init_from:
      p.append(f"init_from {c.init_from!r} is not used in mode 'scratch'; set mode 'finetune' to start from it, "
               "or clear init_from")
  if p:
    raise ConfigError("invalid config: " + "; ".join(p))


def _check_consistency(p: list, c: ml_collections.ConfigDict, model: ModelConfig) -> None:
  """Cross-field rules: data paths per kind, image size vs model, null class, sampling in g_phi mode."""
  if c.data.kind in ("folder", "latents") and not c.data.path:
    p.append(f"data.path must name the {c.data.kind} folder")
  elif c.data.kind in ("folder", "latents") and paths.is_cloud(c.data.path):
    p.append(f"data.path {c.data.path} is in cloud storage, which {paths.LOCAL_DATA_HINT}")
  if c.data.kind == "tfds" and not c.data.tfds_name:
    p.append("data.tfds_name must name a TFDS dataset")
  if c.data.kind != "latents" and c.data.image_size != model.input_size:
    p.append(f"data.image_size {c.data.image_size} must equal model.input_size {model.input_size} "
             "(image sources feed the model directly; use latents for a latent model)")
  if c.data.kind == "digits" and c.data.image_size % 8:
    p.append(f"data.image_size must be a multiple of 8 for digits, got {c.data.image_size}")
  if c.objective.label_dropout > 0 and model.class_dropout_prob <= 0:
    p.append("objective.label_dropout > 0 needs a null-class row: set model.class_dropout_prob > 0")
  if c.mode == "noise_estimator" and c.sample.every_steps:
    p.append("sample.every_steps must be 0 in noise_estimator mode (g_phi does not generate)")
  if c.sample.vae:
    _check_vae(p, c.sample.vae, c.data.kind, model)


def _check_vae(p: list, path: str, data_kind: str, model: ModelConfig) -> None:
  """sample.vae: a converted VAE whose latents the (latent) model generates."""
  if data_kind != "latents":
    p.append(f"sample.vae decodes latents, but data.kind is {data_kind!r} (pixel models need no VAE)")
    return
  try:
    channels = vae_convert.read_config(path).latent_channels
  except CheckpointError as e:
    p.append(f"sample.vae: {e}")
    return
  if not (paths.path(path) / vae_convert.PARAMS_DIR).is_dir():
    p.append(f"sample.vae {path} is not a converted VAE (no {vae_convert.PARAMS_DIR}/): "
             "run python -m nag_jax.convert_vae")
  elif channels != model.in_channels:
    p.append(f"sample.vae has {channels} latent channels but model.in_channels is {model.in_channels}")


def _check_batch(p: list, c: ml_collections.ConfigDict, num_devices: int) -> None:
  """The global batch must split into micro-batches that split over the batch-sharded devices."""
  try:
    mesh = resolve_shape(c.mesh.to_dict(), num_devices)
  except UserError as e:
    p.append(f"mesh: {e}")
    return
  accum = c.optimizer.accumulation_steps
  shards = batch_devices(mesh)
  if c.global_batch_size % (accum * shards):
    p.append(f"global_batch_size {c.global_batch_size} must be divisible by accumulation_steps x batch "
             f"devices = {accum} x {shards} ({num_devices} devices, mesh {mesh})")
  if c.global_batch_size % jax.process_count():
    p.append(f"global_batch_size must be divisible by the {jax.process_count()} processes")


def _check_init_from(p: list, c: ml_collections.ConfigDict, model: ModelConfig) -> None:
  """init_from must be a converted model directory whose architecture matches config.model."""
  if not c.init_from:
    p.append(f"init_from must name a converted model directory in mode {c.mode!r}")
    return
  if not paths.path(c.init_from).is_dir():
    p.append(f"init_from {c.init_from} is not a directory")
    return
  try:
    ckpt = model_dir.read_config(c.init_from)
  except UserError as e:
    p.append(f"init_from: {e}")
    return
  diff = [f"{k}={getattr(model, k)!r} (checkpoint: {getattr(ckpt, k)!r})" for k in ckpt.to_dict()
          if k not in FINETUNE_FREE and getattr(model, k) != getattr(ckpt, k)]
  if diff:
    p.append(f"config.model differs from the checkpoint in {c.init_from}: {', '.join(diff)}")
