"""The deviceless TPU compile of `python -m nag_jax.dry_run --topology ...`: the real TPU compiler (libtpu) builds a
small model's sharded train step and sampler call for a v5e:2x2 slice on this CPU machine.

Checked: both compile; the reported peak is memory_analysis()'s parts; fsdp divides the per-chip parameter bytes
by the mesh size; the default programs carry no CPU tuning (no gradient-fence conditional, no xla_cpu option),
while --grad-fence on and a CPU compile do carry them (so the checks can fail); the FLOPs counted from the model
agree with XLA's cost analysis; with --attention splash the splash kernels (forward; dq and dkv in the train step)
are Mosaic calls of the program, with no all-gather or all-to-all beyond those of XLA's attention. About a minute
of compiles on 2 cores, most of it the sampler's SD-VAE decoder.
"""
import importlib
import json
import os
import subprocess
import sys

import jax
import pytest

from nag_jax import dry_run, hardware
from nag_jax.models import DiT, get_model_config, vae
from nag_jax.models.dit import dummy_inputs

SMALL = ["--model", "DiT-S/2", "--depth", "1", "--batch", "8"]
SAMPLE = ["--topology", "v5e:2x2", "--mesh", "data=-1", "--dtype", "bfloat16", "--steps", "4"]


def run(tmp_path, name, *args):
  out = tmp_path / f"{name}.json"
  proc = subprocess.run([sys.executable, "-m", "nag_jax.dry_run", *SMALL, *args, "--json", str(out)],
                        capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(out.read_text()), proc.stdout


@pytest.fixture(scope="module")
def tpu_runs(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("dry_run_tpu")
  return {
      "fsdp": run(tmp, "fsdp", "--topology", "v5e:2x2", "--mesh", "fsdp=-1", "--dtype", "bfloat16"),
      "data": run(tmp, "data", "--topology", "v5e-4", "--mesh", "data=-1"),  # float32, the Cloud name
      "fenced": run(tmp, "fenced", "--topology", "v5e:2x2", "--mesh", "fsdp=-1", "--grad-fence", "on"),
      "cpu": run(tmp, "cpu", "--devices", "4", "--mesh", "fsdp=-1"),
      "splash": run(tmp, "splash", "--topology", "v5e:2x2", "--mesh", "fsdp=-1", "--dtype", "bfloat16",
                    "--attention", "splash"),
      # the sampler call: NAG + CFG, 4 DDPM steps, data parallel; with the SD-VAE decoder once
      "sample": run(tmp, "sample", *SAMPLE, "--program", "sample"),
      "sample_xla": run(tmp, "sample_xla", *SAMPLE, "--program", "sample", "--no-decode"),
      "sample_splash": run(tmp, "sample_splash", *SAMPLE, "--program", "sample", "--no-decode", "--attention", "splash"),
  }


def test_it_compiles_for_the_slice_and_reports_the_compilers_memory(tpu_runs):
  report, stdout = tpu_runs["fsdp"]
  assert report["devices"] == 4 and "4 chips of v5e:2x2 (TPU v5 lite)" in stdout
  assert "compiled train step (TPU compiler, TPU v5 lite)" in stdout
  assert report["peak_bytes"] == (report["argument_bytes"] + report["output_bytes"] - report["alias_bytes"]
                                  + report["temp_bytes"]) > 0
  assert report["memory_bytes"] == hardware.CHIPS["v5e"].hbm_bytes and report["fits"]
  assert "projection at 50% of peak" in stdout and report["projection"]["50%"]["images_per_s"] > 0


def test_the_sampler_call_compiles_with_the_vae_and_every_guidance_row(tpu_runs):
  report, stdout = tpu_runs["sample"]
  assert "compiled sampler call (TPU compiler, TPU v5 lite)" in stdout and "SD-VAE decode" in stdout
  assert report["program"] == "sample" and report["batch"] == 8 and report["mesh"]["data"] == 4
  assert report["network_rows_per_image"] == 4 * 3  # NAG + CFG: conditional, null-class, pseudo-level rows
  # XLA's cost analysis holds the step loop's body once: no HBM time from it; the compute is the model count's
  assert report["loop_iterations"] == 4 and "HBM" not in report["projection"]["seconds_at_100%"]
  assert report["projection"]["seconds_at_100%"]["compute"] == report["flops_per_chip"] / hardware.CHIPS["v5e"].bf16_flops
  assert report["peak_bytes"] == (report["argument_bytes"] + report["output_bytes"] - report["alias_bytes"]
                                  + report["temp_bytes"]) > 0 and report["fits"]
  no_vae = tpu_runs["sample_xla"][0]
  decoder = {k: v for k, v in vae.abstract_params(vae.SD_VAE).items() if k in ("decoder", "post_quant_conv")}
  decoder_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(decoder))  # 49M float32 params
  assert abs(report["argument_bytes"] - no_vae["argument_bytes"] - decoder_bytes) <= 0.01 * decoder_bytes


def test_splash_is_a_mosaic_call_without_extra_collectives(tpu_runs):
  for splash, xla, kernels in (("splash", "fsdp", {"splash_mha_fwd_residuals", "splash_mha_dq_no_residuals",
                                                    "splash_mha_dkv_no_residuals"}),
                               ("sample_splash", "sample_xla", {"splash_mha_fwd_no_residuals"})):
    with_kernel, without = tpu_runs[splash][0], tpu_runs[xla][0]
    assert with_kernel["attention"] == "splash" and without["attention"] == "xla"
    assert set(with_kernel["splash_kernels"]) == kernels and not without["splash_kernels"], splash
    for kind in ("all-gather", "all-to-all"):
      assert with_kernel["collective_ops"][kind] <= without["collective_ops"][kind], (splash, kind)
      assert with_kernel["collective_bytes_per_chip"][kind] <= without["collective_bytes_per_chip"][kind], (splash, kind)


def test_fsdp_divides_the_parameter_bytes_by_the_mesh(tpu_runs):
  fsdp, data = tpu_runs["fsdp"][0], tpu_runs["data"][0]
  assert data["mesh"] == {"data": 4, "fsdp": 1, "tensor": 1}
  ratio = data["param_bytes"] / fsdp["param_bytes"]
  assert 3.9 <= ratio <= 4.0, ratio  # a few small leaves (norm scales) may stay replicated


def test_the_default_tpu_program_has_no_cpu_tuning(tpu_runs):
  for name in ("fsdp", "data", "sample"):  # bfloat16 and float32, train step and sampler
    report = tpu_runs[name][0]
    assert report["grad_fence"] == "off" and not report["fence_in_program"], name
    assert report["compiler_options"] == {} and not report["cpu_options_in_program"], name
  # ... and the checks see the tuning where it is: the fence asked for, and XLA:CPU's float32 dot library.
  assert tpu_runs["fenced"][0]["fence_in_program"]
  assert tpu_runs["cpu"][0]["cpu_options_in_program"] and tpu_runs["cpu"][0]["grad_fence"] == "off"


def test_flops_counted_from_the_model_agree_with_xla(tpu_runs):
  for name in ("fsdp", "data"):
    report = tpu_runs[name][0]
    assert 0.9 <= report["xla_flops_per_chip"] / report["flops_per_chip"] <= 1.1, name


def test_forward_flops_against_xlas_count_of_one_forward():
  """237 GFLOP for XL/2 at 256 px (the 118.6 GFLOPs of the DiT paper count multiply-adds); checked on S/2, whose
  forward XLA:CPU compiles in seconds."""
  assert abs(hardware.forward_flops(get_model_config("DiT-XL/2")) / 1e9 - 237.2) < 0.1
  config = get_model_config("DiT-S/2")
  model = DiT(config)
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), *dummy_inputs(config)))
  cost = jax.jit(model.apply).lower(params, *dummy_inputs(config)).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  batch = dummy_inputs(config)[0].shape[0]
  assert abs(cost["flops"] / batch / hardware.forward_flops(config) - 1) < 0.05


@pytest.mark.parametrize("name, topology", [("v5p-16", "v5p:2x2x2"), ("v4-32", "v4:2x2x4"),
                                            ("v5litepod-64", "v5e:8x8"), ("v6e-32", "v6e:4x8"),
                                            ("v5e:2x2", "v5e:2x2")])
def test_cloud_names_map_to_slices(name, topology):
  assert hardware.parse_topology(name)[1] == topology


def test_bad_topologies_and_a_missing_compiler_are_one_line(capsys, monkeypatch):
  for argv, fragment in ((["--topology", "v9-8"], "--topology must be cpu, a TPU type"),
                         (["--topology", "v5p-7"], "counts TensorCores (2 per chip)"),
                         (["--topology", "v5p-6"], "3 chips is not a v5p slice this tool knows"),
                         (["--topology", "v5e:2x2x2"], "a v5e shape has 2 dimensions")):
    assert dry_run.main(argv) == 2
    assert fragment in capsys.readouterr().err
  monkeypatch.setenv(dry_run._CHILD, "v5e:2x2:8")  # pylint: disable=protected-access  (as the re-run child)
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "libtpu" else real(name, *a))
  assert dry_run.main(["--topology", "v5e:2x2", *SMALL]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert err == ['error: --topology needs the TPU compiler, libtpu: pip install -e ".[tpu]"']
  assert os.environ[dry_run._CHILD] == "v5e:2x2:8"  # pylint: disable=protected-access


def test_cloud_names_count_chips_as_jax_sees_them(tmp_path):
  """v4-32 and v5p-64 name TensorCores (2 per chip): 16 and 32 megacore devices, as JAX on those VMs shows them
  (libtpu's default v4 config would give one device per core); v5litepod-64 and v6e-32 name chips."""
  for name, chips in (("v4-32", 16), ("v5p-64", 32), ("v5litepod-64", 64), ("v6e-32", 32)):
    report, _ = run(tmp_path, name, "--topology", name, "--mesh", "fsdp=-1", "--batch", "64", "--no-compile")
    assert report["devices"] == chips and report["mesh"]["fsdp"] == chips, name


def test_multi_slice_runs_data_parallel_over_the_slices(tmp_path):
  report, _ = run(tmp_path, "slices", "--topology", "v5e:2x2", "--num-slices", "2", "--mesh", "data=2,fsdp=-1",
                  "--no-compile")
  assert report["devices"] == 8 and report["slices"] == 2 and report["mesh"] == {"data": 2, "fsdp": 4, "tensor": 1}
  assert report["groups_within_one_slice"]  # fsdp's all-gathers stay on ICI; only gradients cross DCN
