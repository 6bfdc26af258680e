"""Recurrent token mixers in plain PyTorch: a gated DeltaNet layer (Qwen3-Next, Qwen3.5) and a Mamba2
mixer (Nemotron-H, Falcon-H1, Granite-4.0-H), in their reference forms -- the recurrence one token
at a time, not the fused chunked kernels.

Each keeps, per sequence, what transformers 5.23's ``LinearAttentionLayer`` keeps: the last
``conv_kernel`` inputs of its short causal convolution (in the cache dtype) and its recurrent state
(in fp32, as the models' kernels return it), in a ``StateCache`` -- the same kind of module as the
attention layers' ``TokenCache``, so ``measure`` counts its bytes the same way. The state does not
grow: prefill and decode update it in place.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class StateCache(nn.Module):
    """A sequence's conv inputs (B, channels, kernel) and recurrent state (B, *state), preallocated."""

    def __init__(self, batch: int, channels: int, kernel: int, state: tuple[int, ...], *, dtype: torch.dtype,
                 device: torch.device | str) -> None:
        super().__init__()
        self.register_buffer("conv", torch.zeros(batch, channels, kernel, dtype=dtype, device=device),
                             persistent=False)
        self.register_buffer("state", torch.zeros(batch, *state, dtype=torch.float32, device=device),
                             persistent=False)

    @property
    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in (self.conv, self.state))


class _Recurrent(nn.Module):
    """The shared part: a depthwise causal convolution over the mixer's inputs, whose last
    ``kernel`` inputs the cache keeps, and the cache itself."""

    def __init__(self, channels: int, kernel: int, dtype: torch.dtype | None) -> None:
        super().__init__()
        self.channels, self.kernel = channels, kernel
        self.conv_weight = nn.Parameter(torch.empty(channels, kernel, dtype=dtype))
        self.cache: StateCache | None = None

    def allocate_cache(self, batch: int, seq_len: int, dtype: torch.dtype) -> StateCache:
        """The state one sequence keeps whatever its length (``seq_len`` only to match the attention
        layers' signature)."""
        self.cache = StateCache(batch, self.channels, self.kernel, self.state_shape, dtype=dtype,
                                device=self.conv_weight.device)
        return self.cache

    @property
    def state_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    def _begin(self, x: torch.Tensor, start_pos: int) -> None:
        """Without ``allocate_cache`` a whole-sequence forward keeps its state in a cache of its own."""
        if self.cache is None or (start_pos == 0 and self.cache.state.shape[0] != x.shape[0]):
            if start_pos:
                raise ValueError(f"start_pos {start_pos}: decoding needs allocate_cache() first")
            self.cache = StateCache(x.shape[0], self.channels, self.kernel, self.state_shape, dtype=x.dtype,
                                    device=x.device)

    def _convolve(self, x: torch.Tensor, start_pos: int) -> torch.Tensor:
        """SiLU(causal depthwise conv) of x (B, S, channels), continuing from the cached inputs, which
        then hold the last ``kernel`` inputs (zeros before the first token)."""
        self._begin(x, start_pos)
        cache = self.cache
        past = cache.conv.to(x.dtype) if start_pos else x.new_zeros(x.shape[0], self.channels, self.kernel)
        inputs = torch.cat([past, x.transpose(1, 2)], dim=2)  # (B, C, kernel + S)
        cache.conv.copy_(inputs[:, :, -self.kernel:])
        windows = inputs[:, :, 1:].unfold(2, self.kernel, 1)  # (B, C, S, kernel): the inputs ending at t
        return F.silu((windows * self.conv_weight[None, :, None, :].to(x.dtype)).sum(-1)).transpose(1, 2)


class GatedDeltaNet(_Recurrent):
    """Gated DeltaNet (Yang et al., 2024; Qwen3-Next's linear attention): per value head a
    ``head_k_dim x head_v_dim`` state S, decayed by exp(g_t) and corrected by the delta rule,
    S <- a_t S + beta_t k_t (v_t - a_t S^T k_t)^T, read as o_t = S^T q_t; ``num_v_heads / num_k_heads``
    value heads share each key head; the output is RMS-normalised, gated by SiLU(z) and projected."""

    def __init__(self, hidden: int, num_k_heads: int, num_v_heads: int, head_k_dim: int, head_v_dim: int,
                 conv_kernel: int, *, dtype: torch.dtype | None = None) -> None:
        key, value = num_k_heads * head_k_dim, num_v_heads * head_v_dim
        super().__init__(2 * key + value, conv_kernel, dtype)
        self.k_heads, self.v_heads, self.dk, self.dv = num_k_heads, num_v_heads, head_k_dim, head_v_dim
        self.in_proj = nn.Linear(hidden, 2 * key + 2 * value + 2 * num_v_heads, bias=False, dtype=dtype)
        self.a_log = nn.Parameter(torch.empty(num_v_heads, dtype=dtype))
        self.norm = nn.Parameter(torch.empty(head_v_dim, dtype=dtype))
        self.out_proj = nn.Linear(value, hidden, bias=False, dtype=dtype)

    @property
    def state_shape(self) -> tuple[int, ...]:
        return (self.v_heads, self.dk, self.dv)

    def forward(self, x: torch.Tensor, start_pos: int = 0) -> torch.Tensor:
        batch, seq, _ = x.shape
        key, value = self.k_heads * self.dk, self.v_heads * self.dv
        qkv, z, b, a = self.in_proj(x).split([2 * key + value, value, self.v_heads, self.v_heads], dim=-1)
        q, k, v = self._convolve(qkv, start_pos).split([key, key, value], dim=-1)
        share = self.v_heads // self.k_heads
        q = F.normalize(q.view(batch, seq, self.k_heads, self.dk).float(), dim=-1).repeat_interleave(share, 2)
        k = F.normalize(k.view(batch, seq, self.k_heads, self.dk).float(), dim=-1).repeat_interleave(share, 2)
        v = v.view(batch, seq, self.v_heads, self.dv).float()
        beta = torch.sigmoid(b.float())
        decay = torch.exp(-torch.exp(self.a_log.float()) * F.softplus(a.float()))  # (B, S, H) in (0, 1)
        state = self.cache.state if start_pos else torch.zeros_like(self.cache.state)
        out = torch.empty(batch, seq, self.v_heads, self.dv, device=x.device)
        scale = self.dk ** -0.5
        for t in range(seq):
            state = state * decay[:, t, :, None, None]
            remembered = torch.einsum("bhkv,bhk->bhv", state, k[:, t])
            delta = (v[:, t] - remembered) * beta[:, t, :, None]
            state = state + torch.einsum("bhk,bhv->bhkv", k[:, t], delta)
            out[:, t] = torch.einsum("bhkv,bhk->bhv", state, q[:, t]) * scale
        self.cache.state.copy_(state)
        out = out * torch.rsqrt(out.pow(2).mean(-1, keepdim=True) + 1e-6) * self.norm.float()
        out = out.reshape(batch, seq, value) * F.silu(z.float())
        return self.out_proj(out.to(x.dtype))


class Mamba2(_Recurrent):
    """Mamba2's mixer (Dao and Gu, 2024): per head a ``head_dim x d_state`` state h, decayed by
    exp(dt_t A) and fed dt_t x_t B_t^T, read as y_t = h C_t + D x_t; heads in ``n_groups`` groups share
    B and C; the short convolution runs over x, B and C; the output is RMS-normalised after a SiLU(z)
    gate and projected."""

    def __init__(self, hidden: int, num_heads: int, head_dim: int, d_state: int, n_groups: int,
                 conv_kernel: int, *, dtype: torch.dtype | None = None) -> None:
        inner = num_heads * head_dim
        super().__init__(inner + 2 * n_groups * d_state, conv_kernel, dtype)
        self.heads, self.head_dim, self.d_state, self.groups = num_heads, head_dim, d_state, n_groups
        self.in_proj = nn.Linear(hidden, inner + self.channels + num_heads, bias=False, dtype=dtype)
        self.a_log = nn.Parameter(torch.empty(num_heads, dtype=dtype))
        self.d = nn.Parameter(torch.empty(num_heads, dtype=dtype))
        self.norm = nn.Parameter(torch.empty(inner, dtype=dtype))
        self.out_proj = nn.Linear(inner, hidden, bias=False, dtype=dtype)

    @property
    def state_shape(self) -> tuple[int, ...]:
        return (self.heads, self.head_dim, self.d_state)

    def forward(self, x: torch.Tensor, start_pos: int = 0) -> torch.Tensor:
        batch, seq, _ = x.shape
        inner, group_width = self.heads * self.head_dim, self.groups * self.d_state
        z, xbc, dt = self.in_proj(x).split([inner, self.channels, self.heads], dim=-1)
        xs, b, c = self._convolve(xbc, start_pos).split([inner, group_width, group_width], dim=-1)
        share = self.heads // self.groups
        xs = xs.view(batch, seq, self.heads, self.head_dim).float()
        b = b.view(batch, seq, self.groups, self.d_state).float().repeat_interleave(share, 2)
        c = c.view(batch, seq, self.groups, self.d_state).float().repeat_interleave(share, 2)
        dt = F.softplus(dt.float())  # (B, S, H)
        decay = torch.exp(-torch.exp(self.a_log.float()) * dt)
        state = self.cache.state if start_pos else torch.zeros_like(self.cache.state)
        out = torch.empty(batch, seq, self.heads, self.head_dim, device=x.device)
        for t in range(seq):
            state = state * decay[:, t, :, None, None] + torch.einsum(
                "bh,bhp,bhn->bhpn", dt[:, t], xs[:, t], b[:, t])
            out[:, t] = torch.einsum("bhpn,bhn->bhp", state, c[:, t]) + self.d.float()[:, None] * xs[:, t]
        self.cache.state.copy_(state)
        out = out.reshape(batch, seq, inner) * F.silu(z.float())
        out = out * torch.rsqrt(out.pow(2).mean(-1, keepdim=True) + 1e-6) * self.norm.float()
        return self.out_proj(out.to(x.dtype))
