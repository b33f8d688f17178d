"""Shared test set-up: float32 'highest' matmuls and the committed official fixtures (tests/fixtures)."""
import pathlib

import jax
import pytest

jax.config.update("jax_default_matmul_precision", "highest")

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="session")
def fixtures_dir() -> pathlib.Path:
  """tests/fixtures: the official DiT and sampler fixtures (see its README), part of the repository."""
  return FIXTURES
