"""Small Flax digit classifiers: their feature layer is the demo's FID space, their logits score labels.

Inception features mean nothing on 16x16 digits, so the Fréchet distance, precision and recall are
computed on the 128-d feature layer of a CNN trained on 80% of the real images. An MLP of the same
feature width gives a second, pixel-global feature space to check how much the FD depends on the features.
"""
from __future__ import annotations

import functools
import json
import pathlib
from typing import Any, Callable

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

from nag_jax.errors import UserError

FEATURES = 128
KINDS = ("cnn", "mlp")


class DigitClassifier(nn.Module):
  """cnn: two 3x3 conv + 2x2 pool stages; mlp: one 256-wide layer; then 128-d ReLU features, 10 logits."""
  kind: str = "cnn"
  num_classes: int = 10

  @nn.compact
  def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
    if self.kind == "cnn":
      for width in (32, 64):
        x = nn.avg_pool(nn.relu(nn.Conv(width, (3, 3))(x)), (2, 2), strides=(2, 2))
    x = x.reshape(x.shape[0], -1)
    if self.kind == "mlp":
      x = nn.relu(nn.Dense(256)(x))
    features = nn.relu(nn.Dense(FEATURES)(x))
    return {"features": features, "logits": nn.Dense(self.num_classes)(features)}


def split(num: int, key: jax.Array, test_fraction: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
  """(train, test) index arrays of a random split."""
  order = np.asarray(jax.random.permutation(key, num))
  n_test = int(round(num * test_fraction))
  return np.sort(order[n_test:]), np.sort(order[:n_test])


def _apply(kind: str, params: Any, x: jax.Array) -> dict[str, jax.Array]:
  return DigitClassifier(kind).apply({"params": params}, x)


def apply_fn(kind: str) -> Callable[[Any, jax.Array], dict[str, jax.Array]]:
  """fn(params, images) -> {"features", "logits"}, the `fn` that `evaluation.features.extract_features` maps."""
  if kind not in KINDS:
    raise UserError(f"classifier kind must be one of {KINDS}, got {kind!r}")
  return functools.partial(_apply, kind)


def train(kind: str, images: np.ndarray, labels: np.ndarray, key: jax.Array, *, steps: int,
          batch_size: int = 128, learning_rate: float = 1e-3, progress: bool = True) -> Any:
  """Adam on softmax cross-entropy with light Gaussian input noise (robustness to sample noise)."""
  init_key, data_key = jax.random.split(key)
  apply, tx = apply_fn(kind), optax.adam(learning_rate)
  params = jax.jit(DigitClassifier(kind).init)(init_key, jnp.zeros((1, *images.shape[1:])))["params"]
  opt_state = jax.jit(tx.init)(params)
  x_all, y_all = jnp.asarray(images), jnp.asarray(labels)

  @jax.jit
  def step(params, opt_state, k):
    k_idx, k_noise = jax.random.split(k)
    idx = jax.random.randint(k_idx, (batch_size,), 0, x_all.shape[0])
    x = x_all[idx] + 0.05 * jax.random.normal(k_noise, (batch_size, *x_all.shape[1:]))
    def loss_fn(p):
      logits = apply(p, x)["logits"]
      return optax.softmax_cross_entropy_with_integer_labels(logits, y_all[idx]).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  bar = tqdm.trange(steps, desc=f"classifier ({kind})", disable=not progress, leave=False)
  for i in bar:
    params, opt_state, loss = step(params, opt_state, jax.random.fold_in(data_key, i))
    if i % 100 == 0:
      bar.set_postfix(loss=f"{float(loss):.3f}")
  return params


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
  return float(np.mean(np.argmax(logits, axis=-1) == labels))


def save(path: pathlib.Path, params: dict[str, Any], meta: dict) -> None:
  """Writes every kind's params (flax msgpack) and `meta` (what they were trained with) into folder `path`."""
  path.mkdir(parents=True, exist_ok=True)
  for kind, p in params.items():
    (path / f"{kind}.msgpack").write_bytes(flax.serialization.to_bytes(p))
  (path / "meta.json").write_text(json.dumps(meta))


def load(path: pathlib.Path, meta: dict, image_shape: tuple[int, ...]) -> dict[str, Any] | None:
  """The params saved by `save` when they were trained with the same `meta`, else None."""
  if not (path / "meta.json").is_file() or json.loads((path / "meta.json").read_text()) != meta:
    return None
  out = {}
  for kind in KINDS:
    target = jax.eval_shape(lambda k=kind: DigitClassifier(k).init(jax.random.key(0), jnp.zeros((1, *image_shape))))
    out[kind] = flax.serialization.from_bytes(jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), target["params"]),
                                              (path / f"{kind}.msgpack").read_bytes())
  return out
