"""The accelerator attention kernels against plain attention, run on CPU by the Pallas interpreter.

The splash kernel (TPU) and the flash kernel (GPU) at the models' shapes: 64 tokens (patch 4 at 256 px; splash
pads them to 128 and masks the padded keys) and 256 (patch 2), head sizes 64 (S/B) and 72 (XL: padded to 128),
forward to 1e-5 and gradients to 1e-4 against a float64 numpy reference and XLA's gradient of
`jax.nn.dot_product_attention`; then inside `jax.shard_map` on a data x tensor mesh of 4 CPU devices, a DiT forward
and gradient equal to the unsharded plain-attention ones. Splash compiled for a TPU slice is checked by
tests/test_dry_run_tpu.py; nothing here compiles for a GPU.
"""
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nag_jax import platform
from nag_jax.errors import UserError
from nag_jax.models import ModelConfig
from nag_jax.models.attention import attention


def reference(q, k, v):
  """softmax(q k^T / sqrt(d)) v in float64 numpy on (B, T, H, D)."""
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
  p = np.exp(logits - logits.max(-1, keepdims=True))
  return np.einsum("bhqk,bkhd->bqhd", p / p.sum(-1, keepdims=True), v)


@pytest.mark.parametrize("kernel", ["splash-interpret", "flash-interpret"])
@pytest.mark.parametrize("tokens,head_dim", [(64, 64), (64, 72), (256, 64), (256, 72)])
def test_kernels_match_plain_attention_forward_and_gradients(kernel, tokens, head_dim):
  rng = np.random.default_rng(tokens + head_dim)
  q, k, v, w = (jnp.asarray(rng.standard_normal((2, tokens, 2, head_dim)), jnp.float32) for _ in range(4))
  got = attention(q, k, v, kernel)
  assert got.shape == q.shape and got.dtype == jnp.float32
  assert np.abs(np.asarray(got) - reference(q, k, v)).max() <= 1e-5

  def grads(implementation):
    return jax.grad(lambda q, k, v: jnp.sum(attention(q, k, v, implementation) * w), argnums=(0, 1, 2))(q, k, v)
  want = grads("xla")
  for g, h in zip(grads(kernel), want):
    assert np.abs(np.asarray(g) - np.asarray(h)).max() <= 1e-4
  assert max(float(jnp.abs(h).max()) for h in want) > 0.1  # gradients that can tell


def test_auto_and_splash_resolve_by_the_devices_compiled_for():
  device = lambda name: type("Device", (), {"platform": name})()
  config = ModelConfig(depth=1)
  assert config.attention == "auto"
  assert platform.resolve(config, [device("cpu")]).attention == "folded"
  assert platform.resolve(config, [device("tpu")]).attention == "xla"
  assert platform.resolve(config, [device("cuda")]).attention == "xla"
  splash, flash = config.replace(attention="splash"), config.replace(attention="flash")
  assert platform.resolve(splash, [device("tpu")]).attention == "splash"
  assert platform.resolve(splash, [device("cpu")]).attention == "splash-interpret"
  assert platform.resolve(flash, [device("cuda")]).attention == "flash"
  assert platform.resolve(flash, [device("cpu")]).attention == "flash-interpret"
  with pytest.raises(UserError, match="attention 'splash' is a TPU kernel; on gpu use 'xla' or 'cudnn'"):
    platform.resolve(splash, [device("cuda")])
  with pytest.raises(UserError, match="attention 'flash' is a GPU kernel; on tpu use 'xla' or 'splash'"):
    platform.resolve(flash, [device("tpu")])
  with pytest.raises(UserError, match="attention 'cudnn' is a GPU kernel; on cpu use 'xla'"):
    platform.resolve(config.replace(attention="cudnn", dtype="bfloat16"), [device("cpu")])


SHARDED = textwrap.dedent("""
    import json
    import jax, jax.numpy as jnp, numpy as np
    jax.config.update("jax_default_matmul_precision", "highest")
    from nag_jax.models import DiT, ModelConfig, init_params
    from nag_jax.sharding import make_mesh, batch_sharding
    config = ModelConfig(input_size=16, patch_size=2, hidden_size=96, depth=2, num_heads=4, num_classes=10)
    params = init_params(config, jax.random.key(0))
    params = jax.tree.map(lambda a: a + 0.02 * jax.random.normal(jax.random.key(1), a.shape), params)  # adaLN-Zero
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((8, 16, 16, 4)), jnp.float32)
    t, y = jnp.asarray(rng.uniform(0, 999, 8), jnp.float32), jnp.arange(8) % 10

    def run(attention):
      model = DiT(config.replace(attention=attention))
      loss = lambda p: jnp.sum(model.apply({"params": p}, x, t, y) ** 2)
      return jax.jit(jax.value_and_grad(loss))
    mesh = make_mesh({"data": 2, "tensor": 2})
    want = run("xla")(params)
    diff = lambda a, b: max(float(jnp.abs(u - w).max()) for u, w in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    out = {}
    for kernel in ("splash-interpret", "flash-interpret"):
      with jax.set_mesh(mesh):
        step = run(kernel)
        got = step(jax.device_put(params, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())))
        hlo = step.lower(params).as_text()
      out[kernel] = {"loss": [float(want[0]), float(got[0])], "grad_diff": diff(got[1], want[1]),
                     "grad_scale": max(float(jnp.abs(g).max()) for g in jax.tree.leaves(want[1])),
                     "shard_map": hlo.count("shard_map") + hlo.count("sdy.manual_computation")}
    print(json.dumps(out))
""")


def test_kernels_inside_shard_map_on_a_data_by_tensor_mesh():
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  proc = subprocess.run([sys.executable, "-c", SHARDED], capture_output=True, text=True, env=env, timeout=600,
                        check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  for kernel, out in json.loads(proc.stdout.strip().splitlines()[-1]).items():
    assert out["shard_map"] > 0, kernel  # the kernel ran per device, not under XLA's partitioner
    want, got = out["loss"]
    assert abs(got - want) <= 1e-5 * abs(want), kernel
    assert out["grad_scale"] > 1e-2 and out["grad_diff"] <= 1e-4 * out["grad_scale"], kernel


def test_the_accelerator_benchmark_runs_each_backend_it_is_given():
  """`benchmarks/accelerator.py --dry` (a tiny model on this CPU): every case timed, none failed, "auto" shown with
  what it resolved to here, and the projected column empty where the chip's peak is unknown."""
  proc = subprocess.run([sys.executable, "-m", "benchmarks.accelerator", "--dry"], capture_output=True, text=True,
                        timeout=600, check=False, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 0, proc.stderr[-2000:]
  rows = [line for line in proc.stdout.splitlines() if line.startswith("| DiT") or line.startswith("| SiT")]
  assert len(rows) == 4 and not any("Error" in r for r in rows), proc.stdout
  assert sum("| auto (folded) |" in r for r in rows) == 2 and sum("| xla |" in r for r in rows) == 2
  assert all(float(r.split("|")[6]) > 0 and r.split("|")[7].strip() == "n/a" for r in rows)
