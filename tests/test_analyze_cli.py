"""The noise-shift CLI end to end: a tiny SiT and its g_phi trained on 16x16 digits, then the analysis."""
import csv
import functools
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nag_jax import analyze_noise_shift
from nag_jax import process
from nag_jax.checkpoints import model_dir
from nag_jax.data import digits_arrays
from nag_jax.evaluation import noise_shift as ns
from nag_jax.models import DiT, ModelConfig, init_params
from nag_jax.models.noise_estimator import NoiseEstimator, estimator_inputs
from nag_jax.training.base_config import get_base_config
from nag_jax.training.init_state import merge_pretrained
from nag_jax.training.objectives import create_objective
from nag_jax.training.train_state import TrainState, create_optimizer
from nag_jax.training.train_step import train_step

CFG = ModelConfig(family="sit", input_size=16, patch_size=4, in_channels=1, hidden_size=32, depth=2, num_heads=2,
                  num_classes=10, learn_sigma=False)


def train(module, params, objective, steps, ema_decay):
  """AdamW steps of the training issue's `train_step` on random digit batches; the final state."""
  c = get_base_config()
  c.optimizer.update(dict(learning_rate=2e-3, warmup_steps=20))
  tx, _ = create_optimizer(c.optimizer, steps)
  state = TrainState.create(apply_fn=module.apply, params=params, tx=tx, rng=jax.random.key(0), ema_decay=ema_decay)
  step = jax.jit(functools.partial(train_step, objective=objective))
  x, y = digits_arrays(16)
  rng = np.random.default_rng(0)
  for _ in range(steps):
    idx = rng.integers(0, len(x), 32)
    state, _ = step(state, {"x": x[idx], "y": y[idx]})
  return state


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """(model dir, estimator dir, estimator, its params): SiT with 10% noise dropout, then g_phi from it."""
  root = tmp_path_factory.mktemp("noise_shift")
  oc = get_base_config().objective
  model = train(DiT(CFG), init_params(CFG, jax.random.key(0)), create_objective(CFG, oc), 300, ema_decay=0.95)
  model_dir.save(root / "model", model.eval_params, CFG)
  estimator = NoiseEstimator(CFG, pseudo_level=1.001)
  fresh = nn.meta.unbox(estimator.init(jax.random.key(1), *estimator_inputs(estimator)))["params"]
  g_phi = train(estimator, merge_pretrained(fresh, model.eval_params, CFG),
                create_objective(CFG, oc, noise_level=True), 600, ema_decay=0.0)
  model_dir.save(root / "estimator", g_phi.params, CFG)
  return root / "model", root / "estimator", estimator, g_phi.params


def test_estimator_reads_the_level_of_forward_states(trained):
  _, _, estimator, params = trained
  schedule = process.create("sit")
  levels = np.linspace(0.95, 0.05, 10)
  x, y = digits_arrays(16)
  x0, y = jnp.asarray(x[-128:]), jnp.asarray(y[-128:])  # the last digits; training drew from all
  noise = jax.random.normal(jax.random.key(7), x0.shape)
  states = ns.forward_states(schedule, x0, noise, schedule.level_to_time(levels))
  est = np.asarray(ns.make_level_fn(estimator, schedule)(params, states, y))
  err = est - levels[:, None]
  rmse, bias = float(np.sqrt(np.mean(err ** 2))), np.abs(err.mean(axis=1)).max()
  print(f"\ng_phi on forward states: RMSE {rmse:.4f}, max |mean error| per level {bias:.4f}", err.mean(1).round(3))
  assert rmse < 0.05 and bias < 0.05


def test_cli_writes_plots_numbers_and_table(trained, tmp_path, capsys):
  model, estimator, _, _ = trained
  out = tmp_path / "out"
  rc = analyze_noise_shift.main(["--model", str(model), "--estimator", str(estimator), "--data", "digits",
                                 "--out", str(out), "--num-steps", "10", "--num-samples", "48", "--batch-size", "32",
                                 "--guidance", "none,nag", "--t-values", "0.7,0.5,0.3"])
  text = capsys.readouterr().out
  print(text)
  assert rc == 0 and "mean shift over all measured steps" in text
  for name in ("densities.png", "shift_curves.png", "guidance_shift.png"):
    assert (out / name).read_bytes()[:4] == b"\x89PNG"
  report = json.loads((out / "report.json").read_text())
  est = np.load(out / "estimates.npz")
  levels = est["levels"]
  np.testing.assert_allclose(levels, 1 - np.linspace(0, 0.96, 10)[1:], atol=1e-6)  # SDE grid after step 0
  assert report["settings"] == ["forward", "none", "nag"] and report["num_samples"] == 48
  for name in report["settings"]:
    assert est[name].shape == (9, 48)
    np.testing.assert_allclose(report["per_step"][name]["shift"], est[name].mean(1) - levels, atol=1e-6)
  assert abs(report["mean_shift"]["forward"]) < 0.03  # g_phi is right on real forward states
  with open(out / "noise_shift.csv") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 27 and float(rows[0]["prior"]) == pytest.approx(levels[0])
  assert (out / "table.txt").read_text() in text


@pytest.mark.parametrize("change,needle", [
    (dict(guidance="none,cfg2"), "unknown guidance setting 'cfg2'"),
    (dict(data="mnist"), "--data must be digits"),
    (dict(t_values="0.99"), "outside the measured noise fractions"),
    (dict(t_values="half"), "--t-values must be comma-separated numbers"),
    (dict(sampler="ode", ode_method="dopri5"), "needs a fixed-step sampler"),
    (dict(sampler="ddpm"), "unknown sampling method for sit 'ddpm'"),
    (dict(estimator="model"), "does not hold noise-estimator"),
    (dict(num_samples="1"), "--num-samples must be >= 2"),
])
def test_bad_input_is_a_clear_error(trained, tmp_path, capsys, change, needle):
  model, estimator, _, _ = trained
  args = dict(model=str(model), estimator=str(estimator), data="digits", out=str(tmp_path / "o"), num_steps="10")
  args.update(change)
  if args["estimator"] == "model":
    args["estimator"] = str(model)
  argv = [item for k, v in args.items() for item in (f"--{k.replace('_', '-')}", v)]
  assert analyze_noise_shift.main(argv) == 2
  assert needle in capsys.readouterr().err
  assert not (tmp_path / "o").exists()


def test_an_estimator_keeps_the_pseudo_level_it_was_trained_with(trained, tmp_path):
  _, _, estimator, params = trained
  model_dir.save(tmp_path / "g_phi", params, CFG, pseudo_level=1.5)
  loaded, loaded_params = model_dir.load_estimator(tmp_path / "g_phi")
  x = jax.random.normal(jax.random.key(3), (4, CFG.input_size, CFG.input_size, CFG.in_channels))
  y = jnp.arange(4, dtype=jnp.int32)
  out = loaded.apply({"params": loaded_params}, x, y)
  np.testing.assert_array_equal(out, NoiseEstimator(CFG, pseudo_level=1.5).apply({"params": params}, x, y))
  assert loaded.pseudo_level == 1.5 and np.abs(out - estimator.apply({"params": params}, x, y)).max() > 1e-4
