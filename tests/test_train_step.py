"""The train step: condition dropout as the network sees it, losses, accumulation, EMA, AdamW, bf16."""
import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import ml_collections
import optax
import pytest

from nag_jax import platform
from nag_jax import diffusion
from nag_jax.models import DiT, ModelConfig, init_params
from nag_jax.models.layers import mixed_einsum
from nag_jax.platform import EIGEN_MIN_TOKENS, XLA_DEFAULT_YNN, YNN_DOTS_OPTION, dot_compiler_options
from nag_jax.sharding import make_mesh
from nag_jax.training import (TrainState, create_objective, create_optimizer, get_base_config, jit_train_step,
                              train_step)
from nag_jax.training.config_validation import model_config_of
from nag_jax.training.init_state import state_initializer
from tests.reference.losses import diffusion_training_losses, flow_training_losses

jax.config.update("jax_threefry_partitionable", True)
TINY = ModelConfig(family="dit", input_size=8, patch_size=2, in_channels=1, hidden_size=32, depth=1, num_heads=2,
                   num_classes=10)


def stub_model(config=TINY):
  """A cheap deterministic network with DiT's interface and output channels: depends on x, t, y and params."""
  def apply(variables, x, t, y):
    p = variables["params"]
    h = x * p["w"] + p["b"] + p["emb"][y][:, None, None, None] + 1e-3 * t[:, None, None, None]
    return jnp.concatenate([jnp.tanh(h + p["v"] * x)] * (config.output_channels // config.in_channels), -1)
  params = {"w": jnp.float32(0.9), "b": jnp.float32(0.01), "v": jnp.float32(0.3),
            "emb": 0.1 * jnp.arange(config.num_classes + 1, dtype=jnp.float32)}
  return apply, params


def objective_config(**kw):
  oc = get_base_config().objective
  oc.update(kw)
  return oc


def make_state(apply_fn, params, ema_decay=0.9999, **opt):
  oc = get_base_config().optimizer
  oc.update(opt)
  tx, _ = create_optimizer(oc, 100)
  return TrainState.create(apply_fn=apply_fn, params=params, tx=tx, rng=jax.random.key(1), ema_decay=ema_decay)


def batch_of(n, config=TINY, seed=0):
  rng = np.random.default_rng(seed)
  shape = (n, config.input_size, config.input_size, config.in_channels)
  return {"x": rng.uniform(-1, 1, shape).astype(np.float32), "y": rng.integers(0, 10, n).astype(np.int32)}


def test_network_sees_pseudo_level_at_the_configured_rate_with_x_t_at_the_true_t():
  """A spy network records (x, t, y) inside the jitted step; rates within 4 binomial sigmas."""
  seen = {}

  def spy(variables, x, t, y):
    jax.debug.callback(lambda *a: seen.update(zip("xty", map(np.asarray, a))), x, t, y)
    return jnp.concatenate([x, x], -1) * variables["params"]["w"]

  n, p_t, p_y = 4000, 0.2, 0.1
  obj = create_objective(TINY, objective_config(noise_dropout=p_t, label_dropout=p_y))
  state = make_state(spy, {"w": jnp.ones(())})
  batch = batch_of(n, TINY.replace(input_size=2))
  new_state, metrics = jax.jit(functools.partial(train_step, objective=obj))(state, batch)
  jax.block_until_ready(new_state)
  d = obj.draw(jax.random.fold_in(state.key, 0), jnp.asarray(batch["x"]), jnp.asarray(batch["y"]))
  dropped_t, dropped_y = seen["t"] == 1001.0, seen["y"] == TINY.null_class
  for rate, p in ((dropped_t.mean(), p_t), (dropped_y.mean(), p_y), ((dropped_t & dropped_y).mean(), p_t * p_y)):
    assert abs(rate - p) < 4 * np.sqrt(p * (1 - p) / n)
  assert np.isclose(float(metrics["noise_drop_rate"]), dropped_t.mean(), rtol=1e-6)
  np.testing.assert_array_equal(seen["t"][~dropped_t], np.asarray(d.t, np.float32)[~dropped_t])
  np.testing.assert_array_equal(seen["y"][~dropped_y], batch["y"][~dropped_y])
  x_t = diffusion.q_sample(obj.process.diffusion, jnp.asarray(batch["x"]), d.t, d.noise)  # the TRUE t, dropped or not
  np.testing.assert_allclose(seen["x"], np.asarray(x_t), rtol=0, atol=1e-6)


@pytest.mark.parametrize("family", ["dit", "sit"])
def test_objective_without_dropout_equals_the_library_losses(family):
  config = TINY.replace(family=family)
  apply, params = stub_model(config)
  obj = create_objective(config, objective_config(noise_dropout=0.0, label_dropout=0.0))
  b = batch_of(6, config)
  x0, y = jnp.asarray(b["x"]), jnp.asarray(b["y"])
  d = obj.draw(jax.random.key(3), x0, y)
  ours = obj.losses(lambda p, *a: apply({"params": p}, *a), params, x0, d)
  model_fn = lambda x, t: apply({"params": params}, x, t, y)
  if family == "dit":
    ref = diffusion_training_losses(obj.process.diffusion, model_fn, x0, d.t, d.noise)
    assert float(jnp.abs(ref["vb"]).max()) > 0
  else:
    ref = flow_training_losses(obj.process.path, model_fn, x0, d.t, d.noise)
    assert 0 <= float(d.t.min()) and float(d.t.max()) < 1
  np.testing.assert_array_equal(np.asarray(ours["loss"]), np.asarray(ref["loss"]))


@pytest.mark.parametrize("family", ["dit", "sit"])
def test_input_perturbation_perturbs_the_input_but_not_the_target(family):
  config = TINY.replace(family=family, input_size=16)
  gamma = 0.1
  obj = create_objective(config, objective_config(input_perturbation=gamma, noise_dropout=0.0))
  b = batch_of(64, config)
  x0 = jnp.asarray(b["x"])
  d = obj.draw(jax.random.key(4), x0, jnp.asarray(b["y"]))
  xi = np.asarray((d.input_noise - d.noise) / gamma)
  assert abs(xi.std() - 1) < 0.02 and abs(np.corrcoef(xi.ravel(), np.asarray(d.noise).ravel())[0, 1]) < 0.02
  seen = {}

  def zero_model(params, x, t, y):
    del params, t, y
    seen["x"] = x
    return jnp.zeros(x.shape[:-1] + (config.output_channels,))

  out = obj.losses(zero_model, None, x0, d)
  if family == "dit":
    want_x = diffusion.q_sample(obj.process.diffusion, x0, d.t, d.input_noise)
    want_loss = jnp.mean(jnp.square(d.noise), axis=(1, 2, 3))
    got = out["mse"]
  else:
    want_x, _ = obj.process.path.plan(d.t, d.input_noise, x0)
    _, u_t = obj.process.path.plan(d.t, d.noise, x0)  # target from the unperturbed noise
    want_loss = jnp.mean(jnp.square(u_t), axis=(1, 2, 3))
    got = out["loss"]
  np.testing.assert_array_equal(np.asarray(seen["x"]), np.asarray(want_x))
  np.testing.assert_allclose(np.asarray(got), np.asarray(want_loss), rtol=1e-6)


def test_accumulation_matches_one_big_batch_and_ema_follows_params():
  apply, params = stub_model()
  obj = create_objective(TINY, objective_config(noise_dropout=0.1))
  state = make_state(apply, params, ema_decay=0.9)
  b = batch_of(8)
  one, m1 = jax.jit(functools.partial(train_step, objective=obj))(state, b)
  two, m2 = jax.jit(functools.partial(train_step, objective=obj, accumulation_steps=4))(state, b)
  for a, c in zip(jax.tree.leaves(one.params), jax.tree.leaves(two.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(c), rtol=0, atol=1e-7)
  for k in ("loss", "grad_norm"):
    np.testing.assert_allclose(float(m1[k]), float(m2[k]), rtol=1e-5)
  assert int(one.step) == 1 and all(not np.array_equal(a, c) for a, c in
                                    zip(jax.tree.leaves(one.params), jax.tree.leaves(params)))
  for e, p0, p1 in zip(*map(jax.tree.leaves, (one.ema_params, params, one.params))):
    np.testing.assert_allclose(np.asarray(e), 0.9 * np.asarray(p0) + 0.1 * np.asarray(p1), rtol=1e-6, atol=1e-7)
  assert make_state(apply, params, ema_decay=0.0).ema_params is None


def test_adamw_official_defaults_match_torch():
  torch = pytest.importorskip("torch")
  oc = get_base_config().optimizer
  assert (oc.learning_rate, oc.weight_decay, oc.b1, oc.b2) == (1e-4, 0.0, 0.9, 0.999)
  oc.weight_decay = 0.1  # also exercise the decoupled decay (1e-5 per step, well above float32 rounding)
  tx, _ = create_optimizer(oc, 10)
  rng = np.random.default_rng(0)
  w0 = rng.normal(size=(5, 3)).astype(np.float32)
  grads = [rng.normal(size=(5, 3)).astype(np.float32) for _ in range(3)]
  w, opt = jnp.asarray(w0), tx.init(jnp.asarray(w0))
  tw = torch.nn.Parameter(torch.from_numpy(w0.copy()))
  topt = torch.optim.AdamW([tw], lr=1e-4, weight_decay=0.1, betas=(0.9, 0.999), eps=1e-8)
  for g in grads:
    upd, opt = tx.update(jnp.asarray(g), opt, w)
    w = optax.apply_updates(w, upd)
    tw.grad = torch.from_numpy(g)
    topt.step()
  np.testing.assert_allclose(np.asarray(w), tw.detach().numpy(), rtol=0, atol=1e-6)


def test_bfloat16_compute_gives_a_close_loss():
  params = jax.jit(init_params, static_argnums=0)(TINY, jax.random.key(0))
  params = jax.tree.map(lambda a: a + 0.05 * jax.random.normal(jax.random.key(2), a.shape), params)
  obj = create_objective(TINY, objective_config())
  b = batch_of(16)
  d = obj.draw(jax.random.key(5), jnp.asarray(b["x"]), jnp.asarray(b["y"]))
  out = {}
  for dtype in ("float32", "bfloat16"):
    model = DiT(TINY.replace(dtype=dtype))
    out[dtype] = jax.jit(lambda p, m=model: jnp.mean(
        obj.losses(lambda q, *a: m.apply({"params": q}, *a), p, b["x"], d)["loss"]))(params)
  assert abs(float(out["bfloat16"]) - float(out["float32"])) < 0.03 * float(out["float32"])
  assert float(out["bfloat16"]) != float(out["float32"])  # the option does change the arithmetic


def variant_gradients(config: ModelConfig, field: str, values: tuple) -> tuple[dict, dict, dict]:
  """(params, {value: jitted gradient function}, {value: gradients}) of the tiny objective for
  config.replace(field=value), all at the same perturbed parameters and draws."""
  params = jax.jit(init_params, static_argnums=0)(config, jax.random.key(0))
  params = jax.tree.map(lambda a: a + 0.05 * jax.random.normal(jax.random.key(2), a.shape), params)
  obj = create_objective(config, objective_config())
  b = batch_of(8)
  d = obj.draw(jax.random.key(5), jnp.asarray(b["x"]), jnp.asarray(b["y"]))
  grad_fns, grads = {}, {}
  for value in values:
    model = DiT(config.replace(**{field: value}))
    apply = lambda q, *a, m=model: m.apply({"params": q}, *a)
    grad_fns[value] = jax.jit(jax.grad(lambda p, apply=apply: jnp.mean(obj.losses(apply, p, b["x"], d)["loss"])))
    grads[value] = grad_fns[value](params)
  return params, grad_fns, grads


def max_difference(a, b) -> float:
  return max(float(jnp.abs(x - y).max()) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_remat_keeps_the_params_and_gives_the_same_gradients():
  config = TINY.replace(depth=3)
  params, grad_fns, grads = variant_gradients(config, "remat", (False, True))
  remat_params = init_params(config.replace(remat=True), jax.random.key(0))
  assert jax.tree.structure(remat_params) == jax.tree.structure(params)  # the same checkpoint layout
  for remat in (False, True):
    assert ("remat" in str(jax.make_jaxpr(grad_fns[remat])(params))) == remat  # blocks really recompute
  assert max_difference(grads[False], grads[True]) < 1e-6
  assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads[True])) > 1e-3


def test_grad_fence_keeps_the_gradients_and_survives_compilation():
  """The fence changes no gradient, and each block's stays a separate `conditional` in the compiled backward (XLA
  must not fold it away, or the quadratic recomputation it prevents comes back); "auto" is on under XLA:CPU."""
  config = TINY.replace(depth=3)
  params, grad_fns, grads = variant_gradients(config, "grad_fence", ("on", "off"))
  for fence in ("on", "off"):
    hlo = grad_fns[fence].lower(params).compile().as_text()
    assert hlo.count(" conditional(") == (config.depth if fence == "on" else 0)
  assert max_difference(grads["on"], grads["off"]) < 1e-6
  assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads["on"])) > 1e-3
  assert platform.resolve(config).fenced and not config.fenced  # "auto": on for this CPU, off unresolved
  assert not platform.resolve(config, [type("Device", (), {"platform": "tpu"})()]).fenced
  with pytest.raises(ValueError, match=r"grad_fence must be one of \('auto', 'on', 'off'\), got 'yes'"):
    config.replace(grad_fence="yes")


def test_bfloat16_gradients_run_bfloat16_dots_close_to_float32():
  """With dtype bfloat16 every dot of the gradient, the backward's included, takes bfloat16 operands (JAX's own
  transpose of a bf16 dot accumulating in f32 runs on f32 operands, at the f32 rate), and the gradients stay
  within bf16 rounding of float32's. The "folded" attention core (CPU's "auto") shares that property; XLA's
  (`jax.nn.dot_product_attention`, "auto" on GPU and TPU) has two dots per block on a float32 softmax gradient."""
  config = TINY.replace(depth=2, attention="folded")
  params, grad_fns, grads = variant_gradients(config, "dtype", ("float32", "bfloat16"))
  _, xla_fns, _ = variant_gradients(config.replace(attention="xla"), "dtype", ("bfloat16",))
  xla_operands = re.findall(r"stablehlo\.dot_general .*?: \((tensor<[^>]*>), (tensor<[^>]*>)\)",
                            xla_fns["bfloat16"].lower(params).as_text())
  assert sum(not (a.endswith("xbf16>") and b.endswith("xbf16>")) for a, b in xla_operands) == 2 * config.depth
  operands = re.findall(r"stablehlo\.dot_general .*?: \((tensor<[^>]*>), (tensor<[^>]*>)\)",
                        grad_fns["bfloat16"].lower(params).as_text())
  # each block's seven dots (adaLN, qkv, proj, fc1, fc2, the attention's two), forward and both gradients
  assert len(operands) >= config.depth * 7 * 3
  assert all(a.endswith("xbf16>") and b.endswith("xbf16>") for a, b in operands), operands
  for g32, g16 in zip(jax.tree.leaves(grads["float32"]), jax.tree.leaves(grads["bfloat16"])):
    assert g16.dtype == jnp.float32
    assert float(jnp.abs(g16 - g32).max()) <= 0.05 * float(jnp.abs(g32).max()) + 1e-6
  assert max_difference(grads["float32"], grads["bfloat16"]) > 0  # the option does change the arithmetic


@pytest.mark.parametrize("spec,shapes", [("abk,kn->abn", ((2, 3, 5), (5, 4))), ("nqd,nkd->nqk", ((2, 3, 4), (2, 5, 4))),
                                         ("nqk,nkd->nqd", ((2, 3, 5), (2, 5, 4)))])
def test_mixed_einsum_gradients_equal_float32_autodiff_on_rounded_operands(spec, shapes):
  """The hand-written transposes are JAX's f32 autodiff of the same einsum at the bf16-rounded operands and
  cotangent, up to f32 summation order; gradients come back in each operand's dtype."""
  a, b = (jax.random.normal(jax.random.key(i), s) for i, s in enumerate(shapes))
  g = jax.random.normal(jax.random.key(9), jnp.einsum(spec, a, b).shape)
  out, vjp = jax.vjp(lambda a, b: mixed_einsum(spec, a, b, jnp.bfloat16), a, b.astype(jnp.bfloat16))
  round16 = lambda x: x.astype(jnp.bfloat16).astype(jnp.float32)
  ref_out, ref_vjp = jax.vjp(lambda a, b: jnp.einsum(spec, a, b), round16(a), round16(b))
  np.testing.assert_allclose(out, ref_out, rtol=1e-5, atol=1e-5)
  da, db = vjp(g)
  assert da.dtype == jnp.float32 and db.dtype == jnp.bfloat16
  want_a, want_b = ref_vjp(round16(g))
  np.testing.assert_allclose(da, want_a, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(db, np.float32), round16(want_b), rtol=8e-3, atol=1e-6)  # 1 bf16 ulp


def test_noise_estimator_step_regresses_t_scaled_to_the_unit_interval():
  """g_phi's zero-initialised head predicts 0, so its first loss is exactly the mean squared target."""
  from nag_jax.models.noise_estimator import NoiseEstimator, estimator_inputs  # pylint: disable=import-outside-toplevel
  model = NoiseEstimator(TINY, pseudo_level=1001.0)
  params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(0), *estimator_inputs(model))["params"])
  obj = create_objective(TINY, objective_config(noise_dropout=0.3), noise_level=True)
  assert obj.noise_dropout == 0.0  # the estimator always sees the pseudo level
  state = make_state(model.apply, params, ema_decay=0.0)
  b = batch_of(64)
  new, metrics = jax.jit(functools.partial(train_step, objective=obj))(state, b)
  d = obj.draw(jax.random.fold_in(state.key, 0), jnp.asarray(b["x"]), jnp.asarray(b["y"]))
  target = np.asarray(d.t, np.float64) / 1000
  assert 0 <= target.min() and target.max() < 1
  np.testing.assert_allclose(float(metrics["loss"]), np.mean(target ** 2), rtol=1e-5)
  assert new.ema_params is None and "final_layer" not in new.params


def test_sit_noise_level_target_is_t():
  obj = create_objective(TINY.replace(family="sit"), objective_config(), noise_level=True)
  b = batch_of(64)
  d = obj.draw(jax.random.key(6), jnp.asarray(b["x"]), jnp.asarray(b["y"]))
  out = obj.losses(lambda p, x, y: jnp.zeros(x.shape[0]), None, jnp.asarray(b["x"]), d)
  np.testing.assert_allclose(np.asarray(out["loss"]), np.asarray(d.t) ** 2, rtol=1e-6)


def test_learning_rate_schedules_warm_up_then_decay_to_the_end_factor():
  oc = get_base_config().optimizer
  oc.update(dict(learning_rate=1e-3, warmup_steps=10, end_learning_rate_factor=0.1))
  for kind, mid in (("constant", 1e-3), ("linear", 0.55e-3), ("cosine", 0.55e-3)):
    oc.schedule = kind
    _, schedule = create_optimizer(oc, 110)
    assert float(schedule(0)) == 0 and np.isclose(float(schedule(5)), 0.5e-3) and np.isclose(float(schedule(10)), 1e-3)
    end = 1e-3 if kind == "constant" else 1e-4
    assert np.isclose(float(schedule(60)), mid) and np.isclose(float(schedule(110)), end)
  oc.update(dict(schedule="constant", warmup_steps=0, grad_clip_norm=1.0))
  tx, _ = create_optimizer(oc, 10)
  g = {"w": jnp.full((4,), 10.0)}  # global norm 20 -> clipped to 1 before AdamW: first moments = 0.1 * clipped
  _, opt = tx.update(g, tx.init(g), g)
  np.testing.assert_allclose(np.asarray(opt[1][0].mu["w"]), 0.1 * 10.0 / 20.0, rtol=1e-6)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the dot library choice is XLA:CPU's")
@pytest.mark.parametrize("dtype,input_size", [("float32", 16), ("float32", 8), ("bfloat16", 16)])
def test_jit_train_step_picks_the_cpu_dot_library_by_dtype_and_tokens(dtype, input_size, monkeypatch):
  """The compiled step runs float32 dots in Eigen from EIGEN_MIN_TOKENS tokens on (no YNNPACK fusion; faster on
  XLA:CPU, benchmarks/train.py) and bfloat16 or few-token ones in YNNPACK; the state after a step is XLA's
  default's up to summation order; an XLA_FLAGS setting of the option is left to XLA."""
  mc = TINY.replace(dtype=dtype, input_size=input_size, hidden_size=64, num_heads=4)
  assert (mc.num_tokens >= EIGEN_MIN_TOKENS) == (input_size == 16)
  config = get_base_config()
  config.model = ml_collections.ConfigDict(mc.to_dict())
  config.global_batch_size = 4
  mesh = make_mesh({"data": 1}, devices=jax.devices()[:1])
  mc = model_config_of(config)
  initialize, abstract, schedule = state_initializer(config, mc, mesh)
  jit_step = functools.partial(jit_train_step, jax.tree.map(lambda s: s.sharding, abstract), mesh, model_config=mc,
                               objective=create_objective(mc, config.objective), learning_rate_fn=schedule)
  batch = batch_of(4, mc)
  eigen = dtype == "float32" and input_size == 16
  states = {}
  for name, options in (("library", None), ("xla default", XLA_DEFAULT_YNN)):
    step = jit_step(compiler_options=options).lower(abstract, batch).compile()
    assert ("ynn_fusion" in step.as_text()) == (name == "xla default" or not eigen), name
    states[name], _ = step(initialize(), batch)
  assert max_difference(states["library"].params, states["xla default"].params) < 1e-6
  monkeypatch.setenv("XLA_FLAGS", f"--{YNN_DOTS_OPTION}=individual_dot")
  assert dot_compiler_options(mc) == {}
