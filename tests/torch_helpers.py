"""Helpers for tests that compare against the PyTorch reference (skipped when torch is absent)."""
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch parity tests need torch (pip install torch==2.13.0)")


def nhwc(a) -> np.ndarray:
  """NCHW torch tensor or array -> NHWC numpy."""
  a = a.detach().numpy() if hasattr(a, "detach") else np.asarray(a)
  return np.transpose(a, (0, 2, 3, 1))


def random_reference(seed: int = 0, scale: float = 0.1, **kwargs):
  """The official torch model with every weight but pos_embed drawn from N(0, scale^2)."""
  from tests.reference.official_dit import DiT  # pylint: disable=import-outside-toplevel
  torch.manual_seed(seed)
  model = DiT(**kwargs).eval()
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name != "pos_embed":
        p.copy_(torch.randn(p.shape, generator=g) * scale)
  return model


def state_dict_numpy(model) -> dict:
  return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
