"""`python -m nag_jax.selftest`: the install check the README starts with, on one and on two devices."""
import os
import subprocess
import sys

import pytest


@pytest.mark.parametrize("devices", [1, 2])
def test_selftest_reports_the_devices_and_samples(devices):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
  out = subprocess.run([sys.executable, "-m", "nag_jax.selftest"], capture_output=True, text=True, env=env,
                       timeout=300, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  lines = out.stdout.splitlines()
  assert lines[0].startswith("versions: nag_jax ") and " jax 0." in lines[0]
  assert lines[1].startswith(f"backend: cpu; {devices} device(s)")
  assert lines[-1].startswith(f"tiny NAG+CFG sample ({4 * devices}x8x8x4 latents) compiled and ran in")
