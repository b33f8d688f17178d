"""Checks the install on the machine at hand: versions, the devices JAX sees, and one tiny compiled NAG+CFG sample.

  python -m nag_jax.selftest

Prints the versions of the JAX stack, the backend and its devices (and the processes, when started by a
launcher), which optional extras are importable, then builds a randomly initialised one-block DiT, compiles the
sampler of the paper's NAG+CFG preset on a 4-step DDPM grid for 4 images over all devices, runs it and checks
that the latents are finite. Exit code 0 means the install works; it downloads nothing.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import sys
import time
from typing import Sequence

import jax
import numpy as np

from nag_jax import cli
from nag_jax.errors import NonFiniteError
from nag_jax.sharding import multihost

STACK = ("nag_jax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "etils", "numpy")
EXTRAS = {"torch (checkpoint conversion)": "torch", "tensorflow (TensorBoard, TFDS)": "tensorflow",
          "gcsfs (gs:// paths)": "gcsfs", "libtpu (TPU runtime and deviceless TPU compile)": "libtpu"}


def _version(dist: str) -> str:
  try:
    return importlib.metadata.version(dist)
  except importlib.metadata.PackageNotFoundError:
    return "not installed"


def tiny_sample() -> tuple[np.ndarray, float]:
  """Latents of 4 images from a random one-block DiT with NAG+CFG (4 DDPM steps), and the compile+run seconds."""
  from nag_jax.checkpoints.model_dir import param_shardings  # pylint: disable=import-outside-toplevel
  from nag_jax.guidance import GuidanceConfig  # pylint: disable=import-outside-toplevel
  from nag_jax.models import DiT, ModelConfig  # pylint: disable=import-outside-toplevel
  from nag_jax.models.dit import dummy_inputs  # pylint: disable=import-outside-toplevel
  from nag_jax.sampling.pipeline import SamplerConfig, build_sampler  # pylint: disable=import-outside-toplevel
  from nag_jax.sharding import batch_sharding, make_mesh, shard_sampler  # pylint: disable=import-outside-toplevel
  config = ModelConfig(input_size=8, patch_size=2, in_channels=4, hidden_size=64, depth=1, num_heads=4, num_classes=10)
  params = jax.jit(DiT(config).init)(jax.random.key(0), *dummy_inputs(config))["params"]
  mesh = make_mesh({"data": -1})
  guidance = GuidanceConfig(cfg_scale=1.2, nag_scale=2.0)  # the paper's NAG+CFG preset
  sample = shard_sampler(build_sampler(config, SamplerConfig(method="ddpm", num_steps=4), guidance, jit=False,
                                       devices=mesh.devices), mesh,
                         param_shardings(config, mesh))
  labels = jax.device_put(np.arange(len(jax.devices()) * 4) % 10, batch_sharding(mesh))
  start = time.perf_counter()
  with jax.set_mesh(mesh):
    latents = sample(params, jax.random.key(1), labels)["latents"]
  latents = np.asarray(jax.device_get(latents)) if latents.is_fully_addressable else None
  return latents, time.perf_counter() - start


def parse_args(argv: Sequence[str] | None = None):
  """The command line: no options but --verbose."""
  return cli.ArgumentParser(prog="python -m nag_jax.selftest", description=__doc__.splitlines()[0]).parse_args(argv)


@cli.entry_point
def main(argv: Sequence[str] | None = None) -> int:
  """The command; an expected failure is one `error:` line and code 2."""
  parse_args(argv)
  multihost.start()
  print("versions: " + ", ".join(f"{d} {_version(d)}" for d in STACK))
  devices = jax.devices()
  print(f"backend: {jax.default_backend()}; {len(devices)} device(s): {devices[0].device_kind}"
        f"{' x ' + str(len(devices)) if len(devices) > 1 else ''}; process {jax.process_index()} of "
        f"{jax.process_count()}")
  for what, module in EXTRAS.items():
    print(f"  {what}: {'yes' if importlib.util.find_spec(module) else 'no'}")
  latents, seconds = tiny_sample()
  if latents is not None and not np.isfinite(latents).all():
    raise NonFiniteError("the tiny NAG+CFG sample is not finite: this JAX install computes wrong numbers")
  shape = "x".join(map(str, latents.shape)) if latents is not None else "sharded over processes"
  print(f"tiny NAG+CFG sample ({shape} latents) compiled and ran in {seconds:.1f} s: the install works")
  return 0


if __name__ == "__main__":
  sys.exit(main())
