"""Rotary position embeddings, both conventions, and YaRN's softmax-scale correction.

- half-split (Llama, ``rotate_half``): dimension i pairs with i + d/2;
- interleaved (DeepSeek's reference ``apply_rotary_emb`` on a complex view, transformers'
  ``rope_interleave``): dimension 2i pairs with 2i + 1.
"""

from __future__ import annotations

import math

import torch


def rope_angles(positions: torch.Tensor, dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of each position's angles: (S,) -> two (S, dim / 2) float32 tensors."""
    inv_freq = theta ** (-torch.arange(0, dim, 2, device=positions.device, dtype=torch.float32) / dim)
    angles = positions.to(torch.float32)[:, None] * inv_freq[None, :]  # (S, dim/2)
    return angles.cos(), angles.sin()


def apply_rope(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, interleaved: bool
) -> torch.Tensor:
    """Rotate ``x`` (B, S, H, D) by per-position angles (S, D/2); returns x's dtype."""
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]  # (1, S, 1, D/2)
    xf = x.to(torch.float32)
    if interleaved:
        x1, x2 = xf[..., 0::2], xf[..., 1::2]
        out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)
    else:
        half = x.shape[-1] // 2
        x1, x2 = xf[..., :half], xf[..., half:]
        out = torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return out.to(x.dtype)


def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    """YaRN's attention temperature: 0.1 * mscale * ln(factor) + 1, or 1 when not extending."""
    return 0.1 * mscale * math.log(factor) + 1.0 if factor > 1 else 1.0


def softmax_scale(qk_head_dim: int, *, yarn_factor: float = 1.0, mscale: float = 1.0) -> float:
    """1 / sqrt(qk_head_dim), times mscale² under YaRN (DeepSeek-V3: factor 40, mscale 1.0)."""
    return qk_head_dim**-0.5 * yarn_mscale(yarn_factor, mscale) ** 2
