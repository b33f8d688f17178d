"""Test-only PyTorch reference: the official DiT/SiT models.py (facebookresearch/DiT @ ed81ce2).

Transcribed with timm's PatchEmbed, Attention and Mlp written out inline (same parameter names), so
the tests need no timm. Validated against the shared fixture, which was computed with the real
official code: see tests/test_dit_parity.py::test_torch_reference_reproduces_fixture.
"""
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def modulate(x, shift, scale):
  return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class PatchEmbed(nn.Module):
  def __init__(self, img_size, patch_size, in_chans, embed_dim):
    super().__init__()
    self.num_patches = (img_size // patch_size) ** 2
    self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size, bias=True)

  def forward(self, x):
    return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
  def __init__(self, dim, num_heads, qkv_bias=True, fused_attn=False):
    super().__init__()
    self.fused_attn = fused_attn  # timm upstream: F.scaled_dot_product_attention where available
    self.num_heads = num_heads
    self.head_dim = dim // num_heads
    self.scale = self.head_dim ** -0.5
    self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
    self.proj = nn.Linear(dim, dim)

  def forward(self, x):
    b, n, c = x.shape
    qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    if self.fused_attn:
      x = F.scaled_dot_product_attention(q, k, v)
    else:
      x = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1) @ v
    x = x.transpose(1, 2).reshape(b, n, c)
    return self.proj(x)


class Mlp(nn.Module):
  def __init__(self, in_features, hidden_features):
    super().__init__()
    self.fc1 = nn.Linear(in_features, hidden_features)
    self.act = nn.GELU(approximate="tanh")
    self.fc2 = nn.Linear(hidden_features, in_features)

  def forward(self, x):
    return self.fc2(self.act(self.fc1(x)))


class TimestepEmbedder(nn.Module):
  def __init__(self, hidden_size, frequency_embedding_size=256):
    super().__init__()
    self.mlp = nn.Sequential(nn.Linear(frequency_embedding_size, hidden_size, bias=True), nn.SiLU(),
                             nn.Linear(hidden_size, hidden_size, bias=True))
    self.frequency_embedding_size = frequency_embedding_size

  @staticmethod
  def timestep_embedding(t, dim, max_period=10000):
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(start=0, end=half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
      embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding

  def forward(self, t):
    return self.mlp(self.timestep_embedding(t, self.frequency_embedding_size))


class LabelEmbedder(nn.Module):
  def __init__(self, num_classes, hidden_size, dropout_prob):
    super().__init__()
    use_cfg_embedding = dropout_prob > 0
    self.embedding_table = nn.Embedding(num_classes + use_cfg_embedding, hidden_size)

  def forward(self, labels):
    return self.embedding_table(labels)


class DiTBlock(nn.Module):
  def __init__(self, hidden_size, num_heads, mlp_ratio=4.0, fused_attn=False):
    super().__init__()
    self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
    self.attn = Attention(hidden_size, num_heads=num_heads, qkv_bias=True, fused_attn=fused_attn)
    self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
    self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
    self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size, bias=True))

  def forward(self, x, c):
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
    x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
    x = x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
    return x


class FinalLayer(nn.Module):
  def __init__(self, hidden_size, patch_size, out_channels):
    super().__init__()
    self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
    self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels, bias=True)
    self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size, bias=True))

  def forward(self, x, c):
    shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
    return self.linear(modulate(self.norm_final(x), shift, scale))


class DiT(nn.Module):
  """Official DiT; `sit=True` gives SiT's forward (drops the sigma half of the output).

  `fused_attn=True` computes attention with F.scaled_dot_product_attention, as timm's Attention does
  upstream (the speed benchmark's reference); the default keeps the explicit softmax of timm 0.4.
  """

  def __init__(self, input_size=32, patch_size=2, in_channels=4, hidden_size=1152, depth=28, num_heads=16,
               mlp_ratio=4.0, class_dropout_prob=0.1, num_classes=1000, learn_sigma=True, sit=False,
               fused_attn=False):
    super().__init__()
    self.learn_sigma = learn_sigma
    self.sit = sit
    self.in_channels = in_channels
    self.out_channels = in_channels * 2 if learn_sigma else in_channels
    self.patch_size = patch_size
    self.x_embedder = PatchEmbed(input_size, patch_size, in_channels, hidden_size)
    self.t_embedder = TimestepEmbedder(hidden_size)
    self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob)
    num_patches = self.x_embedder.num_patches
    self.pos_embed = nn.Parameter(torch.zeros(1, num_patches, hidden_size), requires_grad=False)
    self.blocks = nn.ModuleList([DiTBlock(hidden_size, num_heads, mlp_ratio=mlp_ratio, fused_attn=fused_attn)
                                 for _ in range(depth)])
    self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
    if self.pos_embed.device.type != "meta":
      pos = get_2d_sincos_pos_embed(self.pos_embed.shape[-1], int(num_patches ** 0.5))
      self.pos_embed.data.copy_(torch.from_numpy(pos).float().unsqueeze(0))

  def unpatchify(self, x):
    c = self.out_channels
    p = self.patch_size
    h = w = int(x.shape[1] ** 0.5)
    x = x.reshape(shape=(x.shape[0], h, w, p, p, c))
    x = torch.einsum("nhwpqc->nchpwq", x)
    return x.reshape(shape=(x.shape[0], c, h * p, h * p))

  def forward(self, x, t, y):
    x = self.x_embedder(x) + self.pos_embed
    t = self.t_embedder(t)
    y = self.y_embedder(y)
    c = t + y
    for block in self.blocks:
      x = block(x, c)
    x = self.unpatchify(self.final_layer(x, c))
    if self.sit and self.learn_sigma:
      x, _ = x.chunk(2, dim=1)
    return x

  def forward_with_cfg(self, x, t, y, cfg_scale):
    half = x[: len(x) // 2]
    combined = torch.cat([half, half], dim=0)
    model_out = self.forward(combined, t, y)
    eps, rest = model_out[:, :3], model_out[:, 3:]
    cond_eps, uncond_eps = torch.split(eps, len(eps) // 2, dim=0)
    half_eps = uncond_eps + cfg_scale * (cond_eps - uncond_eps)
    eps = torch.cat([half_eps, half_eps], dim=0)
    return torch.cat([eps, rest], dim=1)


def get_2d_sincos_pos_embed(embed_dim, grid_size):
  grid_h = np.arange(grid_size, dtype=np.float32)
  grid_w = np.arange(grid_size, dtype=np.float32)
  grid = np.meshgrid(grid_w, grid_h)
  grid = np.stack(grid, axis=0).reshape([2, 1, grid_size, grid_size])
  emb_h = get_1d_sincos_pos_embed_from_grid(embed_dim // 2, grid[0])
  emb_w = get_1d_sincos_pos_embed_from_grid(embed_dim // 2, grid[1])
  return np.concatenate([emb_h, emb_w], axis=1)


def get_1d_sincos_pos_embed_from_grid(embed_dim, pos):
  omega = np.arange(embed_dim // 2, dtype=np.float64)
  omega /= embed_dim / 2.
  omega = 1. / 10000 ** omega
  pos = pos.reshape(-1)
  out = np.einsum("m,d->md", pos, omega)
  return np.concatenate([np.sin(out), np.cos(out)], axis=1)
