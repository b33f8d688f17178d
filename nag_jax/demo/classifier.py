"""A small Flax MLP digit classifier: its feature layer is the demo's FID space, its logits score labels.

Inception features mean nothing on 16x16 digits, so the Fréchet distance, precision and recall are
computed on the 128-d feature layer of this network, trained on 80% of the real images.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

FEATURES = 128


class DigitClassifier(nn.Module):
  """256 -> 256 -> 128 (ReLU feature layer) -> 10 logits on flattened (B, 16, 16, 1) images in [-1, 1].

  An MLP rather than a CNN: as accurate on these digits (about 97% held out) and a third of the CPU time.
  """
  num_classes: int = 10

  @nn.compact
  def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
    x = nn.relu(nn.Dense(256)(x.reshape(x.shape[0], -1)))
    features = nn.relu(nn.Dense(FEATURES)(x))
    return {"features": features, "logits": nn.Dense(self.num_classes)(features)}


def split(num: int, key: jax.Array, test_fraction: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
  """(train, test) index arrays of a random split."""
  order = np.asarray(jax.random.permutation(key, num))
  n_test = int(round(num * test_fraction))
  return np.sort(order[n_test:]), np.sort(order[:n_test])


def apply_fn(params: Any, x: jax.Array) -> dict[str, jax.Array]:
  """Features and logits of a batch (the `fn` that `evaluation.features.extract_features` maps)."""
  return DigitClassifier().apply({"params": params}, x)


def train(images: np.ndarray, labels: np.ndarray, key: jax.Array, *, steps: int, batch_size: int = 128,
          learning_rate: float = 1e-3, progress: bool = True) -> Any:
  """Adam on softmax cross-entropy with light Gaussian input noise (robustness to sample noise)."""
  init_key, data_key = jax.random.split(key)
  tx = optax.adam(learning_rate)
  params = jax.jit(DigitClassifier().init)(init_key, jnp.zeros((1, *images.shape[1:])))["params"]
  opt_state = jax.jit(tx.init)(params)
  x_all, y_all = jnp.asarray(images), jnp.asarray(labels)

  @jax.jit
  def step(params, opt_state, k):
    k_idx, k_noise = jax.random.split(k)
    idx = jax.random.randint(k_idx, (batch_size,), 0, x_all.shape[0])
    x = x_all[idx] + 0.05 * jax.random.normal(k_noise, (batch_size, *x_all.shape[1:]))
    def loss_fn(p):
      logits = apply_fn(p, x)["logits"]
      return optax.softmax_cross_entropy_with_integer_labels(logits, y_all[idx]).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  bar = tqdm.trange(steps, desc="classifier", disable=not progress, leave=False)
  for i in bar:
    params, opt_state, loss = step(params, opt_state, jax.random.fold_in(data_key, i))
    if i % 100 == 0:
      bar.set_postfix(loss=f"{float(loss):.3f}")
  return params


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
  return float(np.mean(np.argmax(logits, axis=-1) == labels))
