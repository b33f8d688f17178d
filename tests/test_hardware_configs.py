"""The hardware variants of the paper's configs (`configs/*.py:ARG,VARIANT`, nag_jax.hardware.SETUPS).

Each variant lays every XL/2 config out over exactly its devices, keeps the paper's global batch, and is
quoted with the compiler's verdict in the docstring of every config file that takes it (the figures come from
`python -m benchmarks.hardware_configs`, whose XL/2 compiles take minutes each: not re-run here). One variant's
dry run resolves its TPU slice from the config alone; tests/test_dry_run_tpu.py compiles small programs for TPU.
"""
import json
import math
import subprocess
import sys

import pytest

from nag_jax import cli, hardware
from nag_jax.errors import UserError
from nag_jax.sharding.rules import batch_devices

TRAIN = {"configs/imagenet_finetune_nag.py": ("DiT", "SiT"), "configs/imagenet_scratch.py": ("DiT-XL/2",)}
SAMPLE = {"configs/sample_dit.py": ("nag_cfg",), "configs/sample_sit.py": ("nag_cfg",)}


@pytest.mark.parametrize("name", list(hardware.SETUPS))
def test_every_config_takes_every_variant(name):
  setup = hardware.SETUPS[name]
  for file, args in TRAIN.items():
    for arg in args:
      c = cli.load_config_file(f"{file}:{arg},{name}")
      mesh = {k: v for k, v in c.mesh.to_dict().items() if k != "dcn"}
      assert math.prod(mesh.values()) == setup.devices, (file, mesh)
      assert c.global_batch_size == 256 and c.model.dtype == "bfloat16" and c.hardware == name
      assert (c.global_batch_size // c.optimizer.accumulation_steps) % batch_devices(mesh) == 0
      plain = cli.load_config_file(f"{file}:{arg}").model.to_dict()
      assert c.model.to_dict() == plain | {"dtype": "bfloat16", "remat": setup.remat}
  for file, args in SAMPLE.items():
    c = cli.load_config_file(f"{file}:{args[0]},{name}")
    assert c.batch_size == setup.devices * setup.sample_per_device and c.mesh.data == -1 and c.hardware == name
    plain = cli.load_config_file(f"{file}:{args[0]}")
    assert c.sampler.to_dict() == plain.sampler.to_dict() and c.guidance.to_dict() == plain.guidance.to_dict()


@pytest.mark.parametrize("file", [*TRAIN, *SAMPLE])
def test_each_config_docstring_quotes_every_variant(file):
  text = open(file, encoding="utf-8").read()
  for name in hardware.SETUPS:
    assert f"| {name} |" in text, (file, name)


def test_an_unknown_variant_is_one_clear_error():
  with pytest.raises(UserError, match=r"unknown hardware 'v9-8'; known: v4-32, v5e-64"):
    cli.load_config_file("configs/imagenet_finetune_nag.py:DiT,v9-8")


def test_the_dry_run_takes_the_slice_from_the_config(tmp_path):
  out = tmp_path / "r.json"
  proc = subprocess.run([sys.executable, "-m", "nag_jax.dry_run", "--config",
                         "configs/imagenet_finetune_nag.py:SiT,v5e-64", "--no-compile", "--json", str(out)],
                        capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  report = json.loads(out.read_text())
  assert report["topology"] == "v5litepod-64" and report["devices"] == 64
  assert report["mesh"] == {"data": 8, "fsdp": 8, "tensor": 1} and report["dtype"] == "bfloat16"
  assert "SiT-XL/2 (674.8M params, bfloat16 compute" in proc.stdout
