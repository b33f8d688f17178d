"""Shared test set-up: CPU only, float32 'highest' matmuls, the committed official fixtures (tests/fixtures)."""
import os
import pathlib

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # with libtpu installed (the tpu extra), JAX would probe for a TPU

import jax  # pylint: disable=wrong-import-position
import pytest  # pylint: disable=wrong-import-position

jax.config.update("jax_default_matmul_precision", "highest")

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="session")
def fixtures_dir() -> pathlib.Path:
  """tests/fixtures: the official DiT and sampler fixtures (see its README), part of the repository."""
  return FIXTURES
