"""Recurrent token mixers in plain PyTorch, in their reference forms -- the recurrence one token at a
time, not the fused chunked kernels:

- gated DeltaNet (Qwen3-Next, Qwen3.5) and KDA, Kimi Delta Attention (Kimi-Linear): the delta rule
  on a key x value state per head, decayed by a scalar gate (gated DeltaNet) or per key channel (KDA);
- lightning attention (MiniMax-Text-01 / M1): linear attention with a fixed exponential decay per head;
- Mamba2 (Nemotron-H, Falcon-H1, Granite-4.0-H) and Mamba (Jamba): selective state-space scans;
- ``Hybrid``: attention and a mixer side by side in one layer (Falcon-H1).

Each keeps, per sequence, what transformers 5.23 keeps (``LinearAttentionLayer``; MiniMax's
``MiniMaxCache``): the last ``conv_kernel`` inputs of its short causal convolution (in the cache
dtype; lightning has none) and its recurrent state (fp32, as the models' kernels return it, but for
lightning attention, whose state is in the model's dtype), in a ``StateCache`` -- the same kind of
module as the attention layers' ``TokenCache``, so ``measure`` counts its bytes the same way. The
state does not grow: prefill and decode update it in place. Every recurrence runs in fp32.

A mixer may be one rank's shard of a tensor-parallel layer (``nn/parallel.py``): it then holds
1 / tp of the heads, and the few sums that span every head -- lightning's and Mamba2's norm over the
whole width, Mamba's x_proj over all inner channels -- go through ``tp_sum``, an all-reduce.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


class StateCache(nn.Module):
    """A sequence's conv inputs (B, channels, kernel), when the mixer has a convolution, and its
    recurrent state (B, *state) in ``state_dtype``, preallocated."""

    def __init__(self, batch: int, conv: tuple[int, int] | None, state: tuple[int, ...], *,
                 dtype: torch.dtype, state_dtype: torch.dtype, device: torch.device | str) -> None:
        super().__init__()
        conv_inputs = None if conv is None else torch.zeros(batch, *conv, dtype=dtype, device=device)
        self.register_buffer("conv", conv_inputs, persistent=False)
        self.register_buffer("state", torch.zeros(batch, *state, dtype=state_dtype, device=device),
                             persistent=False)

    @property
    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self.buffers())


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x / RMS(x) over the last dimension, times ``weight``, in fp32."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight.float()


class Mixer(nn.Module):
    """A recurrent token mixer (what every layer here shares): a ``StateCache`` allocated for a
    batch, or made by a whole-sequence forward that runs without one."""

    conv_shape: tuple[int, int] | None = None
    """(channels, kernel) of the short convolution; None: none."""
    state_in_cache_dtype = False
    """The state in the cache dtype (lightning), else fp32."""

    def __init__(self) -> None:
        super().__init__()
        self.cache: StateCache | None = None
        self.tp_rank, self.tp_size = 0, 1
        """This layer as rank ``tp_rank``'s shard of ``tp_size`` (``nn/parallel.py``); 1: whole."""
        self.tp_sum: Callable[[torch.Tensor], torch.Tensor] | None = None
        """A shard's sum of a partial tensor over the ranks (an all-reduce; ``TensorParallel``'s)."""

    def _summed(self, partial: torch.Tensor) -> torch.Tensor:
        """``partial``, this rank's share of a sum over every head, summed over the tp ranks."""
        if self.tp_size == 1:
            return partial
        if self.tp_sum is None:
            raise RuntimeError("a tensor-parallel shard sums across ranks: wrap it in TensorParallel")
        return self.tp_sum(partial)

    def _norm_all_heads(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """``rms_norm`` over the whole layer's width when x (..., width / tp) holds this rank's heads:
        the sums of squares summed over the ranks (vLLM's ``Mixer2RMSNormGated`` with one group,
        ``MiniMaxText01RMSNormTP``), so each rank's slice is the whole norm's."""
        if self.tp_size == 1:
            return rms_norm(x, weight)
        squares = self._summed(x.pow(2).sum(-1, keepdim=True))
        return x * torch.rsqrt(squares / (x.shape[-1] * self.tp_size) + 1e-6) * weight.float()

    @property
    def state_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    def allocate_cache(self, batch: int, seq_len: int, dtype: torch.dtype) -> StateCache:
        """The state one sequence keeps whatever its length (``seq_len`` only to match the attention
        layers' signature)."""
        self.cache = self._new_cache(batch, dtype, next(self.parameters()).device)
        return self.cache

    def _new_cache(self, batch: int, dtype: torch.dtype, device) -> StateCache:
        state_dtype = dtype if self.state_in_cache_dtype else torch.float32
        return StateCache(batch, self.conv_shape, self.state_shape, dtype=dtype, state_dtype=state_dtype,
                          device=device)

    def _begin(self, x: torch.Tensor, start_pos: int) -> torch.Tensor:
        """The state before x (B, S, hidden), in fp32: zeros at start_pos 0, else the cached one.
        Without ``allocate_cache`` a whole-sequence forward keeps its state in a cache of its own."""
        if self.cache is None or (start_pos == 0 and self.cache.state.shape[0] != x.shape[0]):
            if start_pos:
                raise ValueError(f"start_pos {start_pos}: decoding needs allocate_cache() first")
            self.cache = self._new_cache(x.shape[0], x.dtype, x.device)
        state = self.cache.state
        return state.float() if start_pos else torch.zeros(state.shape, device=state.device)


class _Recurrent(Mixer):
    """A mixer with a depthwise causal convolution over its inputs, whose last ``kernel`` inputs the
    cache keeps (with a bias per channel when ``conv_bias``: Jamba's)."""

    def __init__(self, channels: int, kernel: int, dtype: torch.dtype | None, *,
                 conv_bias: bool = False) -> None:
        super().__init__()
        self.channels, self.kernel = channels, kernel
        self.conv_shape = (channels, kernel)
        self.conv_weight = nn.Parameter(torch.empty(channels, kernel, dtype=dtype))
        self.conv_bias = nn.Parameter(torch.empty(channels, dtype=dtype)) if conv_bias else None

    def _convolve(self, x: torch.Tensor, start_pos: int) -> torch.Tensor:
        """SiLU(causal depthwise conv) of x (B, S, channels), continuing from the cached inputs, which
        then hold the last ``kernel`` inputs (zeros before the first token). Call after ``_begin``."""
        cache = self.cache
        past = cache.conv.to(x.dtype) if start_pos else x.new_zeros(x.shape[0], self.channels, self.kernel)
        inputs = torch.cat([past, x.transpose(1, 2)], dim=2)  # (B, C, kernel + S)
        cache.conv.copy_(inputs[:, :, -self.kernel:])
        windows = inputs[:, :, 1:].unfold(2, self.kernel, 1)  # (B, C, S, kernel): the inputs ending at t
        out = (windows * self.conv_weight[None, :, None, :].to(x.dtype)).sum(-1)  # (B, C, S)
        if self.conv_bias is not None:
            out = out + self.conv_bias[None, :, None].to(x.dtype)
        return F.silu(out).transpose(1, 2)


def _delta_rule(state: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor,
                decay: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """S <- a_t S, then S <- S + beta_t k_t (v_t - S^T k_t)^T, read as o_t = S^T q_t / sqrt(d_k), one
    token at a time. state (B, H, d_k, d_v); q, k (B, S, H, d_k); v (B, S, H, d_v); beta (B, S, H);
    decay (B, S, H, d_k): a per key channel (broadcast from (B, S, H, 1) for a scalar gate).
    Returns the outputs (B, S, H, d_v) and the final state."""
    out = q.new_empty(*v.shape)
    scale = q.shape[-1] ** -0.5
    for t in range(q.shape[1]):
        state = state * decay[:, t, :, :, None]
        remembered = torch.einsum("bhkv,bhk->bhv", state, k[:, t])
        delta = (v[:, t] - remembered) * beta[:, t, :, None]
        state = state + torch.einsum("bhk,bhv->bhkv", k[:, t], delta)
        out[:, t] = torch.einsum("bhkv,bhk->bhv", state, q[:, t]) * scale
    return out, state


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
        state = self._begin(x, start_pos)
        qkv, z, b, a = self.in_proj(x).split([2 * key + value, value, self.v_heads, self.v_heads], dim=-1)
        q, k, v = self._convolve(qkv, start_pos).split([key, key, value], dim=-1)
        share = self.v_heads // self.k_heads
        q = F.normalize(q.view(batch, seq, self.k_heads, self.dk).float(), dim=-1).repeat_interleave(share, 2)
        k = F.normalize(k.view(batch, seq, self.k_heads, self.dk).float(), dim=-1).repeat_interleave(share, 2)
        v = v.view(batch, seq, self.v_heads, self.dv).float()
        beta = torch.sigmoid(b.float())
        decay = torch.exp(-torch.exp(self.a_log.float()) * F.softplus(a.float()))  # (B, S, H) in (0, 1)
        out, state = _delta_rule(state, q, k, v, beta, decay[..., None])
        self.cache.state.copy_(state)
        out = rms_norm(out, self.norm).reshape(batch, seq, value) * F.silu(z.float())
        return self.out_proj(out.to(x.dtype))


class KimiDeltaAttention(_Recurrent):
    """KDA, Kimi Delta Attention (Kimi-Linear; transformers' ``KimiLinearDeltaAttention``): gated
    DeltaNet with a decay per key channel. Per head a ``head_dim x head_dim`` state S,
    S <- diag(a_t) S + beta_t k_t (v_t - (diag(a_t) S)^T k_t)^T, read as o_t = S^T q_t / sqrt(head_dim);
    a_t = exp(-exp(A_log) softplus(f_b f_a x_t + dt_bias)), a low-rank projection per channel. The
    short convolution runs over q, k and v (3 x heads x head_dim channels); q and k are
    L2-normalised; the output is RMS-normalised per head, gated by sigmoid(g_b g_a x) and projected."""

    def __init__(self, hidden: int, num_heads: int, head_dim: int, conv_kernel: int, *,
                 dtype: torch.dtype | None = None) -> None:
        width = num_heads * head_dim
        super().__init__(3 * width, conv_kernel, dtype)
        self.heads, self.head_dim = num_heads, head_dim
        kw = {"bias": False, "dtype": dtype}
        self.qkv_proj = nn.Linear(hidden, 3 * width, **kw)
        self.f_a_proj, self.f_b_proj = nn.Linear(hidden, head_dim, **kw), nn.Linear(head_dim, width, **kw)
        self.dt_bias = nn.Parameter(torch.empty(width, dtype=dtype))
        self.a_log = nn.Parameter(torch.empty(num_heads, dtype=dtype))
        self.b_proj = nn.Linear(hidden, num_heads, **kw)
        self.g_a_proj, self.g_b_proj = nn.Linear(hidden, head_dim, **kw), nn.Linear(head_dim, width, **kw)
        self.norm = nn.Parameter(torch.empty(head_dim, dtype=dtype))
        self.out_proj = nn.Linear(width, hidden, **kw)

    @property
    def state_shape(self) -> tuple[int, ...]:
        return (self.heads, self.head_dim, self.head_dim)

    def forward(self, x: torch.Tensor, start_pos: int = 0) -> torch.Tensor:
        batch, seq, _ = x.shape
        heads = (batch, seq, self.heads, self.head_dim)
        state = self._begin(x, start_pos)
        q, k, v = self._convolve(self.qkv_proj(x), start_pos).float().chunk(3, dim=-1)
        q, k = F.normalize(q.view(heads), dim=-1), F.normalize(k.view(heads), dim=-1)
        forget = self.f_b_proj(self.f_a_proj(x)).float() + self.dt_bias.float()
        rate = torch.exp(self.a_log.float())[:, None]  # (H, 1)
        decay = torch.exp(-rate * F.softplus(forget.view(heads)))  # (B, S, H, head_dim) in (0, 1)
        beta = torch.sigmoid(self.b_proj(x).float())
        out, state = _delta_rule(state, q, k, v.view(heads), beta, decay)
        self.cache.state.copy_(state)
        gate = torch.sigmoid(self.g_b_proj(self.g_a_proj(x)).float().view(heads))
        out = rms_norm(out, self.norm, eps=1e-5) * gate  # Kimi-Linear's rms_norm_eps
        return self.out_proj(out.reshape(batch, seq, -1).to(x.dtype))


class LightningAttention(Mixer):
    """Lightning attention (MiniMax-Text-01; transformers' ``MiniMaxLightningAttention``): linear
    attention with a fixed decay lambda_h = exp(-slope_h) per head. Per head a ``head_dim x head_dim``
    state S <- lambda_h S + k_t^T v_t, read as o_t = q_t S (no softmax, no scale); q | k | v =
    SiLU(qkv_proj x), interleaved per head. The output is RMS-normalised over all heads, gated by
    sigmoid(output_gate x) and projected. No convolution; the state is kept in the cache dtype, as
    MiniMax keeps it in the model's.

    slope_h = 2^(-8 (h + 1) / heads) x (1 - layer_idx / (num_layers - 1) + 1e-5): ALiBi's slopes,
    weaker in deeper layers (the 1e-5 terms as MiniMax writes them); a shard's are those of its heads.
    """

    state_in_cache_dtype = True

    def __init__(self, hidden: int, num_heads: int, head_dim: int, *, layer_idx: int = 0, num_layers: int = 1,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.heads, self.head_dim = num_heads, head_dim
        self.layer_idx, self.num_layers = layer_idx, num_layers
        width = num_heads * head_dim
        self.qkv_proj = nn.Linear(hidden, 3 * width, bias=False, dtype=dtype)
        self.output_gate = nn.Linear(hidden, width, bias=False, dtype=dtype)
        self.norm = nn.Parameter(torch.empty(width, dtype=dtype))
        self.out_proj = nn.Linear(width, hidden, bias=False, dtype=dtype)

    @property
    def state_shape(self) -> tuple[int, ...]:
        return (self.heads, self.head_dim, self.head_dim)

    def slopes(self, device=None) -> torch.Tensor:
        """slope_h for each head (H,), fp32; computed, not a buffer, so a layer built on the meta
        device needs no init."""
        first = self.tp_rank * self.heads
        exponents = torch.arange(first + 1, first + self.heads + 1, dtype=torch.float32, device=device)
        depth = 1 - self.layer_idx / (self.num_layers - 1 + 1e-5) + 1e-5
        return 2 ** (-8 / (self.heads * self.tp_size) * exponents) * depth

    def forward(self, x: torch.Tensor, start_pos: int = 0) -> torch.Tensor:
        batch, seq, _ = x.shape
        state = self._begin(x, start_pos)
        qkv = F.silu(self.qkv_proj(x).float()).view(batch, seq, self.heads, 3 * self.head_dim)
        q, k, v = qkv.split(self.head_dim, dim=-1)  # (B, S, H, D) each
        decay = torch.exp(-self.slopes(x.device))[:, None, None]  # (H, 1, 1)
        out = torch.empty_like(q)
        for t in range(seq):
            state = decay * state + torch.einsum("bhk,bhv->bhkv", k[:, t], v[:, t])
            out[:, t] = torch.einsum("bhk,bhkv->bhv", q[:, t], state)
        self.cache.state.copy_(state)
        out = self._norm_all_heads(out.reshape(batch, seq, -1), self.norm)
        out = out * torch.sigmoid(self.output_gate(x).float())
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
        state = self._begin(x, start_pos)
        z, xbc, dt = self.in_proj(x).split([inner, self.channels, self.heads], dim=-1)
        xs, b, c = self._convolve(xbc, start_pos).split([inner, group_width, group_width], dim=-1)
        share = self.heads // self.groups
        xs = xs.view(batch, seq, self.heads, self.head_dim).float()
        b = b.view(batch, seq, self.groups, self.d_state).float().repeat_interleave(share, 2)
        c = c.view(batch, seq, self.groups, self.d_state).float().repeat_interleave(share, 2)
        dt = F.softplus(dt.float())  # (B, S, H)
        decay = torch.exp(-torch.exp(self.a_log.float()) * dt)
        out = torch.empty(batch, seq, self.heads, self.head_dim, device=x.device)
        for t in range(seq):
            state = state * decay[:, t, :, None, None] + torch.einsum(
                "bh,bhp,bhn->bhpn", dt[:, t], xs[:, t], b[:, t])
            out[:, t] = torch.einsum("bhpn,bhn->bhp", state, c[:, t]) + self.d.float()[:, None] * xs[:, t]
        self.cache.state.copy_(state)
        out = out.reshape(batch, seq, inner) * F.silu(z.float())
        return self.out_proj(self._norm_all_heads(out, self.norm).to(x.dtype))


class Mamba(_Recurrent):
    """Mamba's selective scan (Gu and Dao, 2023; Jamba's ``JambaMambaMixer``): per inner channel a
    ``d_state`` state h, decayed by exp(dt_t A) (A = -exp(A_log), one row per channel) and fed
    dt_t x_t B_t, read as y_t = h C_t + D x_t, then gated by SiLU(z). x and z are in_proj's two
    halves; the short convolution (with a bias) runs over x alone; dt, B and C come from x_proj of
    the convolved x -- dt through a rank ``dt_rank`` bottleneck -- each RMS-normalised as Jamba does,
    and dt = softplus(dt_proj dt)."""

    def __init__(self, hidden: int, intermediate_size: int, d_state: int, conv_kernel: int, dt_rank: int, *,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__(intermediate_size, conv_kernel, dtype, conv_bias=True)
        self.inner, self.d_state, self.dt_rank = intermediate_size, d_state, dt_rank
        self.in_proj = nn.Linear(hidden, 2 * intermediate_size, bias=False, dtype=dtype)
        self.x_proj = nn.Linear(intermediate_size, dt_rank + 2 * d_state, bias=False, dtype=dtype)
        self.dt_proj = nn.Linear(dt_rank, intermediate_size, dtype=dtype)
        self.dt_norm = nn.Parameter(torch.empty(dt_rank, dtype=dtype))
        self.b_norm = nn.Parameter(torch.empty(d_state, dtype=dtype))
        self.c_norm = nn.Parameter(torch.empty(d_state, dtype=dtype))
        self.a_log = nn.Parameter(torch.empty(intermediate_size, d_state, dtype=dtype))
        self.d = nn.Parameter(torch.empty(intermediate_size, dtype=dtype))
        self.out_proj = nn.Linear(intermediate_size, hidden, bias=False, dtype=dtype)

    @property
    def state_shape(self) -> tuple[int, ...]:
        return (self.inner, self.d_state)

    def forward(self, x: torch.Tensor, start_pos: int = 0) -> torch.Tensor:
        state = self._begin(x, start_pos)
        xs, z = self.in_proj(x).chunk(2, dim=-1)
        xs = self._convolve(xs, start_pos)  # (B, S, inner)
        params = self._summed(self.x_proj(xs).float())  # a shard's x_proj sees its channels only
        dt, b, c = params.split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt, b, c = rms_norm(dt, self.dt_norm), rms_norm(b, self.b_norm), rms_norm(c, self.c_norm)
        dt = F.softplus(F.linear(dt, self.dt_proj.weight.float(), self.dt_proj.bias.float()))  # (B, S, inner)
        a = -torch.exp(self.a_log.float())  # (inner, d_state)
        xs = xs.float()
        out = torch.empty_like(xs)
        for t in range(x.shape[1]):
            fed = (dt[:, t] * xs[:, t])[:, :, None] * b[:, t, None]  # dt x B: (B, inner, d_state)
            state = torch.exp(dt[:, t, :, None] * a) * state + fed
            out[:, t] = torch.einsum("bin,bn->bi", state, c[:, t]) + self.d.float() * xs[:, t]
        self.cache.state.copy_(state)
        return self.out_proj((out * F.silu(z.float())).to(x.dtype))


class HybridCache(nn.Module):
    """A hybrid layer's two caches: the attention's K/V and the mixer's state."""

    def __init__(self, attention: nn.Module, mixer: StateCache) -> None:
        super().__init__()
        self.attention, self.mixer = attention, mixer

    @property
    def nbytes(self) -> int:
        return self.attention.nbytes + self.mixer.nbytes


class Hybrid(nn.Module):
    """Falcon-H1's layer: attention and a recurrent mixer read the same input side by side and their
    outputs add; each keeps its own cache. (Falcon-H1's scalar multipliers on the branches' inputs,
    keys and outputs change no cached shape and are left out.)"""

    def __init__(self, attention: nn.Module, mixer: Mixer) -> None:
        super().__init__()
        self.attention, self.mixer = attention, mixer

    def allocate_cache(self, batch: int, seq_len: int, dtype: torch.dtype) -> HybridCache:
        return HybridCache(self.attention.allocate_cache(batch, seq_len, dtype),
                           self.mixer.allocate_cache(batch, seq_len, dtype))

    def forward(self, x: torch.Tensor, start_pos: int = 0) -> torch.Tensor:
        return self.attention(x, start_pos) + self.mixer(x, start_pos)
