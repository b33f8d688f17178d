"""Shared test set-up: float32 'highest' matmuls, the ../shared fixtures path, optional torch."""
import os
import pathlib

import jax
import pytest

jax.config.update("jax_default_matmul_precision", "highest")

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("NAG_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> pathlib.Path:
  """The ../shared folder beside the clone (CI has it); tests that need it skip with a reason."""
  if not SHARED.is_dir():
    pytest.skip(f"fixtures folder {SHARED} not found (set NAG_SHARED)")
  return SHARED
