"""Sampler pins: output and network calls of `build_sampler` per guidance preset, around a stand-in net.

The stand-in network is a fixed pure-jnp function (no DiT), so a pin measures only the sampler, guidance and
process code. A case's `net_rows` are the rows of each network call the program makes, in trace order (a
scan body's call counts once): they pin how many calls a step makes and how many guidance branches each
batches, whatever JAX version traces it. `python tests/sampler_pins.py` rewrites
tests/data/sampler_pins.npz; do that only when a change is meant to alter the samplers' programs (the pins
exist to prove that a refactor does not).
"""
from __future__ import annotations

import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from nag_jax.guidance import GuidanceConfig
from nag_jax.models.config import ModelConfig
from nag_jax.sampling import pipeline
from nag_jax.sampling.pipeline import SamplerConfig

PINS = os.path.join(os.path.dirname(__file__), "data", "sampler_pins.npz")
CONFIG = ModelConfig(input_size=4, patch_size=2, hidden_size=16, depth=1, num_heads=2, num_classes=5)
LABELS = np.array([1, 3], np.int32)

# name -> GuidanceConfig keywords (the paper's presets, the nested form, DoG, classifier NAG, the baselines).
PRESETS = {
    "none": {},
    "cfg": dict(cfg_scale=1.5, cfg_channels=3),
    "nag": dict(nag_scale=3.0),
    "nag_cfg": dict(cfg_scale=1.2, nag_scale=2.0),
    "nested": dict(cfg_scale=1.2, nag_scale=2.0, nag_form="nested"),
    "nag_interval": dict(nag_scale=2.0, nag_interval=(0.3, 1.0), cfg_scale=1.5, cfg_interval=(0.0, 0.6)),
    "dog": dict(dog_scale=1.5, nag_scale=1.0),
    "classifier_nag": dict(classifier_nag_scale=0.5, classifier_nag_sigma=0.2),
    "eps_scaling": dict(eps_scaling=0.05),
    "time_shift": dict(time_shift_window=0.05),
    "pseudo": dict(nag_scale=1.0, pseudo_level=None),  # replaced per family below by an explicit level
}
EXPLICIT_PSEUDO = {"dit": 1200.0, "sit": 1.5}
# (family, sampler) -> presets pinned on it.
SAMPLERS = {
    ("dit", "ddpm"): SamplerConfig(method="ddpm", num_steps=5),
    ("dit", "ddim"): SamplerConfig(method="ddim", num_steps=5, eta=0.5),
    ("sit", "sde"): SamplerConfig(method="sde", num_steps=5),
    ("sit", "sde_heun"): SamplerConfig(method="sde", sde_method="Heun", num_steps=4, last_step="Tweedie"),
    ("sit", "ode"): SamplerConfig(method="ode", ode_method="heun2", num_steps=5),
    ("sit", "dopri5"): SamplerConfig(method="ode", ode_method="dopri5", num_steps=3),
}
FULL = ("ddpm", "sde")  # every preset; the other samplers get the few below (compile time)
FEW = {"ddim": ("none", "nag_cfg", "time_shift"), "sde_heun": ("nag_cfg", "time_shift"),
       "ode": ("nag_cfg", "classifier_nag"), "dopri5": ("nag_cfg",)}


def tolerance(name: str) -> float:
  """Relative tolerance of a case's pinned output: 1e-6, or an adaptive ODE solve's own rtol (its step-size
  controller turns one CPU's rounding into other accepted steps: AVX2 vs AVX-512 land 5e-5 of the max apart)."""
  family, sampler, _ = name.split("/")
  s = SAMPLERS[(family, sampler)]
  return s.rtol if s.method == "ode" and s.ode_method == "dopri5" else 1e-6


class StandIn:
  """A fixed network with DiT's call signature: smooth in x, t and y, output channels as the family's."""

  def __init__(self, config: ModelConfig):
    self.config = config

  calls: list[int] = []  # rows of each traced call (see `net_rows`)

  def apply(self, variables: dict, x: jax.Array, t: jax.Array, y: jax.Array) -> jax.Array:
    StandIn.calls.append(x.shape[0])
    p = variables["params"]
    s = t.astype(jnp.float32) / (1000.0 if self.config.family == "dit" else 1.0)
    h = jnp.einsum("bhwc,cd->bhwd", x, p["w"]) * (1 + 0.5 * s)[:, None, None, None]
    h = h + p["emb"][y][:, None, None, :] + jnp.sin(3.0 * s)[:, None, None, None] * p["v"]
    return jnp.tanh(h)[..., :self.config.output_channels]


class StandInEstimator:
  """A fixed g_phi with NoiseEstimator's call signature: (B,) levels from a squashed projection of x."""

  def apply(self, variables: dict, x: jax.Array, y: jax.Array) -> jax.Array:
    p = variables["params"]
    return jax.nn.sigmoid(jnp.mean(jnp.einsum("bhwc,c->bhw", x, p["u"]), axis=(1, 2)) + p["b"][y])


def stand_in_params(seed: int) -> dict:
  """Fixed weights of a stand-in network (numpy draws, so independent of JAX's PRNG)."""
  rng = np.random.default_rng(seed)
  c, out, n = CONFIG.in_channels, CONFIG.out_channels, CONFIG.num_classes + 1
  return {"w": jnp.asarray(0.5 * rng.standard_normal((c, out)), jnp.float32),
          "emb": jnp.asarray(0.3 * rng.standard_normal((n, out)), jnp.float32),
          "v": jnp.asarray(0.3 * rng.standard_normal(out), jnp.float32)}


def estimator_params() -> dict:
  rng = np.random.default_rng(7)
  return {"u": jnp.asarray(rng.standard_normal(CONFIG.in_channels), jnp.float32),
          "b": jnp.asarray(0.1 * rng.standard_normal(CONFIG.num_classes + 1), jnp.float32)}


def cases() -> list[tuple[str, str, str, str]]:
  """(pin name, family, sampler name, preset) of every pinned case."""
  out = []
  for (family, sampler), _ in SAMPLERS.items():
    for preset in PRESETS if sampler in FULL else FEW[sampler]:
      out.append((f"{family}/{sampler}/{preset}", family, sampler, preset))
  return out


def guidance(family: str, preset: str) -> GuidanceConfig:
  kw = dict(PRESETS[preset])
  if preset == "pseudo":
    kw["pseudo_level"] = EXPLICIT_PSEUDO[family]
  return GuidanceConfig(**kw)


def net_rows(run: Callable[[dict], jax.Array], params: dict) -> np.ndarray:
  """Rows of every stand-in network call that tracing `run` makes, in order (a loop body's call once)."""
  StandIn.calls = []
  jax.make_jaxpr(run)(params)
  return np.asarray(StandIn.calls, np.int64)


def build_case(family: str, sampler: str, preset: str) -> Callable[[dict], jax.Array]:
  """run(params) -> latents of one case, `pipeline.DiT` swapped for the stand-in while it is built."""
  config = CONFIG.replace(family=family)
  kw = {}
  if preset == "dog":
    kw["parent_config"] = config
  if preset == "classifier_nag":
    kw["estimator"] = StandInEstimator()
  saved, pipeline.DiT = pipeline.DiT, StandIn
  try:
    fn = pipeline.build_sampler(config, SAMPLERS[(family, sampler)], guidance(family, preset), jit=False, **kw)
  finally:
    pipeline.DiT = saved
  call = dict(parent_params=stand_in_params(2) if preset == "dog" else None,
              estimator_params=estimator_params() if preset == "classifier_nag" else None)
  key, labels = jax.random.key(11), jnp.asarray(LABELS)
  return lambda p: fn(p, key, labels, **call)["latents"]


def measure() -> dict[str, np.ndarray]:
  """{name/net_rows, name/out} of every case; the outputs come from ONE compiled program (compile time)."""
  names, runs = [n for n, *_ in cases()], [build_case(*c) for _, *c in cases()]
  params = stand_in_params(1)
  pins = {f"{n}/net_rows": net_rows(r, params) for n, r in zip(names, runs)}
  outs = jax.jit(lambda p: [r(p) for r in runs])(params)
  pins.update({f"{n}/out": np.asarray(o) for n, o in zip(names, outs)})
  return pins


def main() -> None:
  """Writes every pin to PINS."""
  pins = measure()
  for name, *_ in cases():
    print(f"{name:34s} net rows {pins[name + '/net_rows'].tolist()}  |out| {np.abs(pins[name + '/out']).mean():.4f}")
  os.makedirs(os.path.dirname(PINS), exist_ok=True)
  np.savez(PINS, **pins)


if __name__ == "__main__":
  jax.config.update("jax_default_matmul_precision", "highest")
  main()
