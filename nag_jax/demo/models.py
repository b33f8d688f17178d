"""Trains the demo's SiT variants and g_phi with the package's trainer (`nag_jax.training.loop.train`).

Each run gets a fresh work folder (its Orbax checkpoint and the exported `model/` directory that the
noise-shift CLI loads). Also the evidence on the pseudo level: how far 1.001 embeds from t = 1, and
the velocity error of the noise-conditional and the noise-unconditional (pseudo-level) branch per t.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from nag_jax import destination, flow, platform
from nag_jax.checkpoints import model_dir
from nag_jax.demo.config import DemoConfig, Variant
from nag_jax.models.config import ModelConfig
from nag_jax.models.dit import DiT
from nag_jax.models.embeddings import timestep_embedding
from nag_jax.training import checkpointing, loop
from nag_jax.training.base_config import get_base_config

LOG_EVERY = 50
TRAINED = "trained.json"  # beside model/: the budget it was trained with (a later run reuses a match)
# What a demo training folder holds, so a rerun replaces it but never a folder of someone else's files.
RUN_ENTRIES = frozenset({loop.EXPORT_DIR, checkpointing.CHECKPOINT_DIR, checkpointing.RUN_CONFIG, TRAINED, "estimator"})


class _Bar:
  """A tqdm bar that is both the loop's `progress(step)` hook and its metric writer (loss history)."""

  def __init__(self, total: int, desc: str, enabled: bool):
    self.bar = tqdm.tqdm(total=total, desc=desc, unit="step", disable=not enabled, leave=False)
    self.losses: list[tuple[int, float]] = []

  def __call__(self, step: int) -> None:
    self.bar.update(step - self.bar.n)

  def write_scalars(self, step: int, scalars: dict) -> None:
    self.losses.append((step, scalars["train/loss"]))
    self.bar.set_postfix(loss=f"{scalars['train/loss']:.4f}")

  def write_images(self, step: int, images: dict) -> None:
    del step, images


def train_config(dc: DemoConfig, model_config: ModelConfig, noise_dropout: float) -> ml_collections.ConfigDict:
  """A from-scratch training config for the digits (constant LR after warm-up, EMA, one final checkpoint)."""
  c = get_base_config()
  c.seed = dc.seed
  c.model.update(model_config.to_dict())
  c.data.update(dict(kind="digits", image_size=dc.image_size, flip=False))
  c.num_train_steps = dc.train_steps
  c.global_batch_size = dc.batch_size
  c.ema_decay = dc.ema_decay
  c.optimizer.update(dict(learning_rate=dc.learning_rate, warmup_steps=dc.warmup_steps))
  c.objective.update(dict(label_dropout=dc.label_dropout, noise_dropout=noise_dropout,
                          pseudo_level=dc.pseudo_level))
  c.checkpoint.update(dict(every_steps=dc.train_steps, keep=1, async_save=False))
  c.log_every_steps = LOG_EVERY
  c.sample.every_steps = 0
  return c


def _train(config: ml_collections.ConfigDict, workdir: pathlib.Path, desc: str, progress: bool):
  if workdir.exists():  # a fresh run: never resume another preset's checkpoint, never delete foreign files
    destination.clear(workdir, names=RUN_ENTRIES, what="demo training folder")
  bar = _Bar(config.num_train_steps, desc, progress)
  try:
    state = loop.train(config, workdir, writer=bar, progress=bar)
  finally:
    bar.bar.close()
  return state, bar.losses


def train_variant(dc: DemoConfig, variant: Variant, workdir: pathlib.Path, *, progress: bool = True,
                  input_perturbation: float = 0.0) -> tuple[ModelConfig, Any, list]:
  """(model config, EMA params, loss history); the exported model is in `workdir/model`."""
  model_config = dc.model_config(variant)
  config = train_config(dc, model_config, variant.noise_dropout)
  config.objective.input_perturbation = input_perturbation
  state, losses = _train(config, workdir, f"SiT {variant.name} seed {dc.seed}", progress)
  (workdir / TRAINED).write_text(json.dumps(_budget(dc, variant, input_perturbation, losses)))
  return model_config, state.eval_params, losses


def _budget(dc: DemoConfig, variant: Variant, input_perturbation: float, losses: list | None = None) -> dict:
  """What determines a trained model: the training fields of the preset, the variant and IP's gamma."""
  keep = ("seed", "image_size", "patch_size", "hidden_size", "depth", "num_heads", "train_steps", "batch_size",
          "learning_rate", "warmup_steps", "ema_decay", "label_dropout", "pseudo_level")
  budget = {k: getattr(dc, k) for k in keep} | {"variant": dataclasses.asdict(variant),
                                                  "input_perturbation": input_perturbation}
  return budget if losses is None else budget | {"losses": losses}


def load_or_train(dc: DemoConfig, variant: Variant, workdir: pathlib.Path, *, progress: bool = True,
                  input_perturbation: float = 0.0) -> tuple[ModelConfig, Any, list, bool]:
  """(config, params, losses, reused): the model in `workdir` if it was trained with this budget, else trains it."""
  record = workdir / TRAINED
  if record.is_file() and (workdir / loop.EXPORT_DIR).is_dir():
    stored = json.loads(record.read_text())
    losses = stored.pop("losses", [])
    if stored == json.loads(json.dumps(_budget(dc, variant, input_perturbation))):
      _, params, config = model_dir.load(workdir / loop.EXPORT_DIR)
      return config, params, losses, True
  return (*train_variant(dc, variant, workdir, progress=progress, input_perturbation=input_perturbation), False)


def train_estimator(dc: DemoConfig, model_config: ModelConfig, init_from: pathlib.Path, workdir: pathlib.Path,
                    *, progress: bool = True) -> tuple[pathlib.Path, list]:
  """g_phi (paper app. B.2): the trained backbone with a noise-level head; saved to `workdir/estimator`.

  `workdir/trained.json` records its steps, its backbone's identity and the loss history.
  """
  backbone = model_dir.identity(init_from)
  config = train_config(dc, model_config, 0.0)
  config.mode = "noise_estimator"
  config.init_from = str(init_from)
  config.num_train_steps = dc.gphi_steps
  config.ema_decay = 0.0
  config.optimizer.update(dict(learning_rate=dc.gphi_learning_rate, warmup_steps=0))
  config.checkpoint.every_steps = dc.gphi_steps
  state, losses = _train(config, workdir, "g_phi", progress)
  path = model_dir.save(workdir / "estimator", state.params, model_config, overwrite=True,
                        source=f"g_phi fine-tuned from {init_from} for {dc.gphi_steps} steps")
  (workdir / TRAINED).write_text(json.dumps({"gphi_steps": dc.gphi_steps, "backbone": backbone, "losses": losses}))
  return path, losses


def embedding_gap(time_scale: float, pseudo_level: float, t: float = 1.0) -> float:
  """||emb(pseudo) - emb(t)|| / ||emb(t)|| of the sinusoidal time features (before the learned MLP)."""
  a, b = (timestep_embedding(jnp.array([v * time_scale])) for v in (pseudo_level, t))
  return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def branch_errors(model_config: ModelConfig, params: Any, x1: np.ndarray, y: np.ndarray, key: jax.Array,
                  times: tuple[float, ...], pseudo_level: float) -> dict[str, list[float]]:
  """Velocity MSE of the conditional ("cond") and pseudo-level ("pseudo") branch per SiT time t (1 = data).

  "gap" is the mean squared difference of the two outputs, the direction NAG amplifies. A usable
  noise-unconditional branch predicts almost as well as the conditional one (the digits' noise level is
  readable from x) while staying a distinct function; an untrained one is far worse.
  """
  model_config = platform.resolve(model_config)  # this process's devices: run as the sampler and training do
  model, path = DiT(model_config), flow.create_transport("Linear").path
  apply = jax.jit(lambda p, x, t, y: model.apply({"params": p}, x, t, y),
                  compiler_options=platform.dot_compiler_options(model_config))
  x1, y = jnp.asarray(x1), jnp.asarray(y)
  out = {"cond": [], "pseudo": [], "gap": []}
  for k, t in enumerate(times):
    noise = jax.random.normal(jax.random.fold_in(key, k), x1.shape)
    tt = jnp.full(x1.shape[:1], t, jnp.float32)
    x_t, u_t = path.plan(tt, noise, x1)
    cond, pseudo = apply(params, x_t, tt, y), apply(params, x_t, jnp.full_like(tt, pseudo_level), y)
    for name, v in (("cond", cond - u_t), ("pseudo", pseudo - u_t), ("gap", cond - pseudo)):
      out[name].append(float(jnp.mean(jnp.square(v))))
  return out


def reusable_estimator(workdir: pathlib.Path, init_from: pathlib.Path, steps: int) -> tuple[pathlib.Path, list] | None:
  """(estimator dir, losses) of a g_phi in `workdir` trained `steps` steps from this very backbone, else None."""
  record = workdir / TRAINED
  if not (record.is_file() and (workdir / "estimator").is_dir()):
    return None
  stored = json.loads(record.read_text())
  if stored.get("gphi_steps") != steps or stored.get("backbone") != model_dir.identity(init_from):
    return None
  return workdir / "estimator", stored["losses"]
