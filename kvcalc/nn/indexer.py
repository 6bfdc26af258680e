"""DeepSeek Sparse Attention's lightning indexer (DeepSeek-V3.2-Exp ``inference/model.py``,
``Indexer``; transformers' ``DeepseekV32Indexer``): a few small heads score every earlier token for
each query, and the MLA attends only to the ``topk`` best.

Its key -- one head of ``head_dim`` per token, shared by its query heads -- is cached in DeepSeek's
format: fp8 (e4m3) values and one fp32 scale per 128 of them, 132 B per token for head_dim 128. The
scores use those stored keys, dequantised, in prefill and decode alike, so a cached decode selects
what a full forward selects. Parameter names follow transformers' module.
"""

from __future__ import annotations

import torch
from torch import nn

from kvcalc.nn.rope import apply_rope

SCALE_GROUP = 128
FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0


class Indexer(nn.Module):
    def __init__(
        self,
        hidden_size: int,
        q_lora_rank: int,
        n_heads: int,
        head_dim: int,
        rope_dim: int,
        topk: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.n_heads, self.head_dim, self.rope_dim, self.topk = n_heads, head_dim, rope_dim, topk
        kw = {"bias": False, "device": device, "dtype": dtype}
        self.wq_b = nn.Linear(q_lora_rank, n_heads * head_dim, **kw)
        self.wk = nn.Linear(hidden_size, head_dim, **kw)
        self.k_norm = nn.LayerNorm(head_dim, device=device, dtype=dtype)
        self.weights_proj = nn.Linear(hidden_size, n_heads, **kw)

    @property
    def widths(self) -> dict[str, tuple[int, ...]]:
        """Cached per token: the fp8 key and its scales."""
        return {"index_k": (self.head_dim,), "index_scale": (-(-self.head_dim // SCALE_GROUP),)}

    @property
    def dtypes(self) -> dict[str, torch.dtype]:
        return {"index_k": FP8, "index_scale": torch.float32}

    def key(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> dict[str, torch.Tensor]:
        """x (B, S, hidden) -> the stored form of each token's key: index_k (B, S, D) fp8 and
        index_scale (B, S, D / 128) fp32; RoPE on the first ``rope_dim`` values (half-split)."""
        k = self.k_norm(self.wk(x))
        k_pe, k_rest = k.split([self.rope_dim, self.head_dim - self.rope_dim], dim=-1)
        k_pe = apply_rope(k_pe[:, :, None], cos, sin, interleaved=False)[:, :, 0]
        return quantise(torch.cat([k_pe, k_rest], dim=-1))

    def select(self, x: torch.Tensor, q_latent: torch.Tensor, stored: dict[str, torch.Tensor],
               cos: torch.Tensor, sin: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor
               ) -> torch.Tensor:
        """(B, S, T) boolean: the ``topk`` earlier tokens each query attends to.

        index(s, t) = sum over heads h of w_h(s) * relu(q_h(s) . k(t)), q from the query's
        low-rank latent (B, S, q_lora_rank), k the stored keys (B, T, D) dequantised.
        """
        b, s, _ = x.shape
        q = self.wq_b(q_latent).view(b, s, self.n_heads, self.head_dim)
        q_pe, q_rest = q.split([self.rope_dim, self.head_dim - self.rope_dim], dim=-1)
        q = torch.cat([apply_rope(q_pe, cos, sin, interleaved=False), q_rest], dim=-1).float()
        k = dequantise(stored)  # (B, T, D) fp32
        weights = self.weights_proj(x).float() * (self.n_heads**-0.5 * self.head_dim**-0.5)  # (B, S, H)
        index = torch.zeros(b, s, k.shape[1], device=x.device)
        for h in range(self.n_heads):  # one (B, S, T) score matrix alive at a time
            index += weights[:, :, h, None] * torch.matmul(q[:, :, h], k.transpose(1, 2)).relu()
        causal = q_pos[:, None] >= k_pos[None, :]  # (S, T)
        index = index.masked_fill(~causal, float("-inf"))
        chosen = index.topk(min(self.topk, k.shape[1]), dim=-1).indices
        keep = torch.zeros_like(index, dtype=torch.bool).scatter_(-1, chosen, True)
        return keep & causal


def quantise(k: torch.Tensor) -> dict[str, torch.Tensor]:
    """(B, S, D) -> fp8 values scaled per group of 128 (the group's max at 448) and the scales."""
    groups = k.float().split(SCALE_GROUP, dim=-1)
    scales = [g.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / FP8_MAX for g in groups]
    values = torch.cat([(g / sc).to(FP8) for g, sc in zip(groups, scales, strict=True)], dim=-1)
    return {"index_k": values, "index_scale": torch.cat(scales, dim=-1)}


def dequantise(stored: dict[str, torch.Tensor]) -> torch.Tensor:
    """The stored keys back in fp32: (B, T, D)."""
    values = stored["index_k"].float().split(SCALE_GROUP, dim=-1)
    scales = stored["index_scale"].split(1, dim=-1)
    return torch.cat([v * sc for v, sc in zip(values, scales, strict=True)], dim=-1)
