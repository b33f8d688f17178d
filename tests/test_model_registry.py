"""Registry sizes: parameter counts equal the official PyTorch models', shapes for every patch size."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nag_jax.checkpoints.dit_convert import abstract_params
from nag_jax.models import DiT, ModelConfig, get_model_config, registry_names
from nag_jax.models.dit import dummy_inputs


def flax_count(config: ModelConfig) -> int:
  """Trainable params plus the fixed position table (which the official state_dict holds)."""
  n = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(abstract_params(config)))
  return n + config.num_tokens * config.hidden_size


def test_dit_xl2_official_count():
  assert flax_count(get_model_config("DiT-XL/2")) == 675_129_632  # DiT README / issue text


@pytest.mark.parametrize("name", registry_names())
def test_counts_equal_torch_reference(name):
  torch = pytest.importorskip("torch", reason="needs torch for the reference count")
  from tests.reference.official_dit import DiT as TorchDiT  # pylint: disable=import-outside-toplevel
  config = get_model_config(name)
  with torch.device("meta"):
    ref = TorchDiT(input_size=32, patch_size=config.patch_size, hidden_size=config.hidden_size,
                   depth=config.depth, num_heads=config.num_heads, sit=name.startswith("SiT"))
  assert flax_count(config) == sum(p.numel() for p in ref.parameters())


@pytest.mark.parametrize("family,learn_sigma,channels", [("dit", True, 8), ("dit", False, 4), ("sit", True, 4)])
@pytest.mark.parametrize("patch,size", [(2, 32), (4, 32), (8, 32), (2, 18), (4, 12)])
def test_output_shapes(family, learn_sigma, channels, patch, size):
  config = ModelConfig(family=family, input_size=size, patch_size=patch, hidden_size=64, depth=1, num_heads=4,
                       learn_sigma=learn_sigma)
  model = DiT(config)
  x, t, y = dummy_inputs(config, batch=2)
  variables = jax.eval_shape(model.init, jax.random.key(0), x, t, y)
  out = jax.eval_shape(model.apply, variables, x, t, y)
  assert out.shape == (2, size, size, channels) and out.dtype == jnp.float32


def test_registry_errors_name_the_problem():
  with pytest.raises(ValueError, match="unknown model 'DiT-XXL/2'"):
    get_model_config("DiT-XXL/2")
  with pytest.raises(ValueError, match="not divisible by patch_size"):
    ModelConfig(input_size=10, patch_size=4)
  with pytest.raises(ValueError, match="family must be one of"):
    ModelConfig(family="unet")


def test_params_carry_logical_axis_names():
  config = ModelConfig(input_size=8, hidden_size=32, depth=1, num_heads=2, num_classes=3)
  boxed = jax.eval_shape(DiT(config).init, jax.random.key(0), *dummy_inputs(config))["params"]
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  specs = nn.get_partition_spec(boxed)
  assert tuple(specs["blocks_0"]["attn"]["qkv"]["kernel"]) == ("embed", "heads")
  assert tuple(specs["blocks_0"]["fc2"]["kernel"]) == ("mlp", "embed")
  assert tuple(specs["y_embedder"]["embedding_table"]) == ("vocab", "embed")
