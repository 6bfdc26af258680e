"""DeepSeek Sparse Attention's lightning indexer (DeepSeek-V3.2-Exp ``inference/model.py``,
``Indexer``; transformers' ``DeepseekV32Indexer`` and GLM-5's ``GlmMoeDsaIndexer``): a few small
heads score every earlier token for each query, and the MLA attends only to the ``topk`` best.

Its key -- one head of ``head_dim`` per token, shared by its query heads -- is cached as vLLM caches
it (``indexer_k_quant_and_cache``): fp8 (e4m3) values and one fp32 scale per 128 of them, 132 B per
token for head_dim 128. The scores use those stored keys, dequantised, in prefill and decode alike,
so a cached decode selects what a full forward selects.

transformers keeps the key in the model's dtype (its cache's ``update_indexer``) and scores in fp32,
so kvcalc's scores are transformers' on fp8-rounded keys: the choice can differ where two tokens'
scores are closer than that rounding. The engines round more than kvcalc: vLLM also quantises the
query per 128 values (``per_token_group_quant_fp8``, power-of-two scales under ``scale_fmt``
ue8m0) and DeepSeek's reference rotates q and k by a Hadamard transform first; kvcalc's query stays
at the compute dtype. The cache -- what kvcalc counts -- is the engines' either way.

Parameter names follow transformers' module; RoPE rotates the first ``rope_dim`` values, half-split
(DeepSeek-V3.2) or interleaved (GLM-5, ``indexer_rope_interleave``).
"""

from __future__ import annotations

import torch
from torch import nn

from kvcalc.nn.rope import apply_rope

SCALE_GROUP = 128
FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0


class Fp8Keys:
    """What an indexer caches per token (or compressed entry): its ``head_dim``-wide key as fp8
    values and one fp32 scale per 128, as vLLM's ``indexer_k_quant_and_cache`` stores it."""

    head_dim: int

    @property
    def widths(self) -> dict[str, tuple[int, ...]]:
        return {"index_k": (self.head_dim,), "index_scale": (-(-self.head_dim // SCALE_GROUP),)}

    @property
    def dtypes(self) -> dict[str, torch.dtype]:
        return {"index_k": FP8, "index_scale": torch.float32}


class Indexer(Fp8Keys, nn.Module):
    def __init__(
        self,
        hidden_size: int,
        q_lora_rank: int,
        n_heads: int,
        head_dim: int,
        rope_dim: int,
        topk: int,
        *,
        rope_interleaved: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.n_heads, self.head_dim, self.rope_dim, self.topk = n_heads, head_dim, rope_dim, topk
        self.rope_interleaved = rope_interleaved
        kw = {"bias": False, "device": device, "dtype": dtype}
        self.wq_b = nn.Linear(q_lora_rank, n_heads * head_dim, **kw)
        self.wk = nn.Linear(hidden_size, head_dim, **kw)
        self.k_norm = nn.LayerNorm(head_dim, eps=1e-6, device=device, dtype=dtype)  # as transformers'
        self.weights_proj = nn.Linear(hidden_size, n_heads, **kw)

    def key(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> dict[str, torch.Tensor]:
        """x (B, S, hidden) -> the stored form of each token's key: index_k (B, S, D) fp8 and
        index_scale (B, S, D / 128) fp32; RoPE on the first ``rope_dim`` values."""
        k = self.k_norm(self.wk(x))
        k_pe, k_rest = k.split([self.rope_dim, self.head_dim - self.rope_dim], dim=-1)
        k_pe = apply_rope(k_pe[:, :, None], cos, sin, interleaved=self.rope_interleaved)[:, :, 0]
        return quantise(torch.cat([k_pe, k_rest], dim=-1))

    def select(self, x: torch.Tensor, q_latent: torch.Tensor, stored: dict[str, torch.Tensor],
               cos: torch.Tensor, sin: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor
               ) -> torch.Tensor:
        """(B, S, T) boolean: the ``topk`` earlier tokens each query attends to.

        Scored by :func:`choose`, q from the query's low-rank latent (B, S, q_lora_rank), k the
        stored keys (B, T, D) dequantised.
        """
        b, s, _ = x.shape
        q = self.wq_b(q_latent).view(b, s, self.n_heads, self.head_dim)
        q_pe, q_rest = q.split([self.rope_dim, self.head_dim - self.rope_dim], dim=-1)
        q = torch.cat([apply_rope(q_pe, cos, sin, interleaved=self.rope_interleaved), q_rest], dim=-1)
        return choose(q, dequantise(stored), self.weights_proj(x), q_pos, k_pos, self.topk)


def choose(q: torch.Tensor, k: torch.Tensor, weights: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor,
           topk: int) -> torch.Tensor:
    """The lightning indexer's choice (B, S, T): for each query the ``topk`` keys of highest
    index(s, t) = sum over heads h of w_h(s) * relu(q_h(s) . k(t)) / sqrt(H D) among those at or
    before it -- q (B, S, H, D) rotated, k (B, T, D), weights w (B, S, H).

    Ties at the cut (mostly keys every head scores ReLU 0) go to the earliest keys, so that a
    prefill and a decode, which see different key counts, choose alike; a plain top-k breaks them
    as its kernel happens to."""
    b, s, n_heads, head_dim = q.shape
    q, k = q.float(), k.float()
    weights = weights.float() * (n_heads**-0.5 * head_dim**-0.5)
    index = torch.zeros(b, s, k.shape[1], device=q.device)
    for h in range(n_heads):  # one (B, S, T) score matrix alive at a time
        index += weights[:, :, h, None] * torch.matmul(q[:, :, h], k.transpose(1, 2)).relu()
    causal = q_pos[:, None] >= k_pos[None, :]  # (S, T)
    index = index.masked_fill(~causal, float("-inf"))
    n = min(topk, k.shape[1])
    cut = index.topk(n, dim=-1).values[..., -1:]  # (B, S, 1): the n-th highest score
    above, at_cut = index > cut, index == cut
    room = n - above.sum(-1, keepdim=True, dtype=torch.int32)  # the ties that fit
    keep = above | (at_cut & (at_cut.cumsum(-1, dtype=torch.int32) <= room))
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
