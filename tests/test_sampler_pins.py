"""Every guidance preset's sampler, around a fixed stand-in network, is the program it was when pinned.

The pins (tests/data/sampler_pins.npz, written by `python tests/sampler_pins.py` before the process-layer
refactor) hold each case's output and the rows of each network call its program makes (how many calls a
step makes, and how many guidance branches each batches: a branch added or lost changes them); a refactor
of guidance, sampling or the process layer must leave both unchanged. They pin behaviour, not a JAX
version's operation counts. Outputs hold to 1e-6 (relative, and of the max), the adaptive dopri5 solve to
its own rtol.
"""
import numpy as np
import pytest

import sampler_pins


@pytest.fixture(scope="module")
def measured():
  return sampler_pins.measure()


@pytest.fixture(scope="module")
def pinned():
  with np.load(sampler_pins.PINS) as f:
    return dict(f)


def test_every_case_is_pinned(measured, pinned):
  assert sorted(measured) == sorted(pinned)


@pytest.mark.parametrize("name", [c[0] for c in sampler_pins.cases()])
def test_sampler_program_and_output_are_unchanged(measured, pinned, name):
  np.testing.assert_array_equal(measured[f"{name}/net_rows"], pinned[f"{name}/net_rows"])
  out, ref = measured[f"{name}/out"], pinned[f"{name}/out"]
  assert np.isfinite(ref).all() and np.abs(ref).max() > 0
  tol = sampler_pins.tolerance(name)
  np.testing.assert_allclose(out, ref, rtol=tol, atol=tol * np.abs(ref).max())
