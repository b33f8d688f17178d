"""The process layer: each family's time, forward coefficients, trained range, pseudo level and g_phi units.

Against direct numpy transcriptions of the DDPM linear schedule and the SiT Linear path.
"""
import jax.numpy as jnp
import numpy as np
import pytest

from nag_jax import process
from nag_jax.models import ModelConfig

ABAR = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))  # DDPM linear schedule, 1000 steps


def test_registry_maps_each_family_to_one_process():
  assert process.FAMILIES == ("dit", "sit")
  assert isinstance(process.create("dit"), process.DDPMProcess)
  assert isinstance(process.create("sit", path_type="GVP"), process.TransportProcess)
  with pytest.raises(ValueError, match="family must be one of"):
    process.create("unet")
  with pytest.raises(ValueError, match="family must be one of"):
    ModelConfig(family="unet")


def test_forward_coefficients_are_the_schedules():
  t = np.array([0.0, 250.4, 999.0])
  a, s = process.create("dit").coefficients(jnp.asarray(t, jnp.float32))
  idx = np.rint(t).astype(int)
  np.testing.assert_allclose(np.asarray(a), np.sqrt(ABAR[idx]), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(s), np.sqrt(1 - ABAR[idx]), rtol=1e-6)
  t = jnp.asarray([0.0, 0.3, 1.0])
  a, s = process.create("sit").coefficients(t)
  np.testing.assert_allclose(np.asarray(a), [0.0, 0.3, 1.0], atol=1e-7)
  np.testing.assert_allclose(np.asarray(s), [1.0, 0.7, 0.0], atol=1e-7)


def test_level_mapping_follows_the_sampler_grids():
  dit, sit = process.create("dit"), process.create("sit")
  nu = np.array([1.0, 0.5, 0.0])
  np.testing.assert_array_equal(dit.level_to_time(nu), np.rint(nu * 999))
  np.testing.assert_array_equal(sit.level_to_time(nu), 1 - nu)
  # g_phi targets t / 1000 (DiT) and t (SiT, 1 = data): a perfect estimate maps back to the prior level
  np.testing.assert_allclose(dit.estimate_to_level(np.array([999, 500, 0]) / 1000), [1, 500 / 999, 0])
  np.testing.assert_allclose(sit.estimate_to_level(1 - nu), nu)
  np.testing.assert_allclose(np.asarray(dit.estimator_target(jnp.asarray([999.0, 0.0]))), [0.999, 0.0])


@pytest.mark.parametrize("family,steps,inside,default", [("dit", 1000, 999.0, 1001.0), ("dit", 500, 499.0, 1001.0),
                                                        ("sit", 1000, 0.5, 1.001)])
def test_trained_range_and_pseudo_level(family, steps, inside, default):
  proc = process.create(family, diffusion_steps=steps)
  assert proc.time_range == ((0.0, float(steps - 1)) if family == "dit" else (0.0, 1.0))
  assert proc.pseudo_level() == proc.pseudo_level(None) == default
  assert proc.pseudo_level(2000.0) == 2000.0
  with pytest.raises(ValueError, match="inside the trained range"):
    proc.pseudo_level(inside)


def test_network_outputs_and_default_sampler():
  assert ModelConfig(family="dit", in_channels=4).output_channels == 8
  assert ModelConfig(family="dit", in_channels=4, learn_sigma=False).output_channels == 4
  assert ModelConfig(family="sit", in_channels=4).output_channels == 4
  assert process.family_process("dit").sampler_methods[0] == "ddpm"
  assert process.family_process("sit").sampler_methods[0] == "sde"
