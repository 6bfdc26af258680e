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


def _l2norm(x: torch.Tensor) -> torch.Tensor:
    """x / sqrt(sum(x^2) + 1e-6) over the last dimension: FLA's l2norm, which transformers' and vLLM's
    gated DeltaNet and KDA use (not ``F.normalize``'s x / max(|x|, eps))."""
    return x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) + 1e-6)


def _mixer_config(config) -> dict:
    """A transformers config (or its ``to_dict()``; a multimodal one's ``text_config``) as a dict,
    refusing an activation other than the SiLU these mixers apply."""
    from kvcalc.nn.rope import config_dict

    c = config_dict(config)
    c = config_dict(c["text_config"]) if c.get("text_config") else c
    _refuse("the mixer", c, {"hidden_act": c.get("hidden_act", "silu") == "silu"})
    return c


def _refuse(what: str, config: dict, checks: dict[str, bool]) -> None:
    """Raise naming the first config field whose check fails: a field read but not modelled."""
    for field, ok in checks.items():
        if not ok:
            raise ValueError(f"{what}: {field} {config.get(field)!r} is not modelled")


def _load_strictly(layer: nn.Module, module: nn.Module,
                   mapped: Callable[[Callable[[str], torch.Tensor]], dict[str, torch.Tensor]]) -> None:
    """Load into ``layer`` the state dict ``mapped(take)`` builds from transformers' ``module``, where
    ``take(name)`` hands out one of the module's weights: strict both ways -- every weight of ours
    loaded (``strict=True``) and every one of theirs taken."""
    theirs = dict(module.state_dict())
    state = mapped(theirs.pop)
    if theirs:
        names = f"{type(module).__name__} weights {type(layer).__name__}"
        raise ValueError(f"{names} does not map: {sorted(theirs)}")
    layer.load_state_dict(state, strict=True)


class GatedDeltaNet(_Recurrent):
    """Gated DeltaNet (Yang et al., 2024; Qwen3-Next's linear attention): per value head a
    ``head_k_dim x head_v_dim`` state S, decayed by exp(g_t) and corrected by the delta rule,
    S <- a_t S + beta_t k_t (v_t - a_t S^T k_t)^T, read as o_t = S^T q_t; ``num_v_heads / num_k_heads``
    value heads share each key head; the output is RMS-normalised, gated by SiLU(z) and projected.
    a_t = exp(-exp(A_log) softplus(a_t + dt_bias)), as transformers' ``Qwen3NextGatedDeltaNet``.

    ``in_proj`` holds q, k, v, z, b and a one after another ([Hk dk, Hk dk, Hv dv, Hv dv, Hv, Hv]
    rows: Qwen3.5's in_proj_qkv, _z, _b, _a; Qwen3-Next interleaves them per key head, which
    :meth:`load_reference` undoes). ``dt_bias`` (Hv) only when asked for: ``nn/parallel.py`` shards
    the layer without one, so the default layer's is zero."""

    def __init__(self, hidden: int, num_k_heads: int, num_v_heads: int, head_k_dim: int, head_v_dim: int,
                 conv_kernel: int, *, dt_bias: bool = False, norm_eps: float = 1e-6,
                 dtype: torch.dtype | None = None) -> None:
        key, value = num_k_heads * head_k_dim, num_v_heads * head_v_dim
        super().__init__(2 * key + value, conv_kernel, dtype)
        self.k_heads, self.v_heads, self.dk, self.dv = num_k_heads, num_v_heads, head_k_dim, head_v_dim
        self.norm_eps = norm_eps
        self.in_proj = nn.Linear(hidden, 2 * key + 2 * value + 2 * num_v_heads, bias=False, dtype=dtype)
        self.dt_bias = nn.Parameter(torch.empty(num_v_heads, dtype=dtype)) if dt_bias else None
        self.a_log = nn.Parameter(torch.empty(num_v_heads, dtype=dtype))
        self.norm = nn.Parameter(torch.empty(head_v_dim, dtype=dtype))
        self.out_proj = nn.Linear(value, hidden, bias=False, dtype=dtype)

    @classmethod
    def from_config(cls, config, *, device=None, dtype=None) -> GatedDeltaNet:
        """The linear-attention mixer of a Qwen3-Next or Qwen3.5 config (``PretrainedConfig`` or its
        ``to_dict()``), its shapes read as ``Qwen3NextGatedDeltaNet`` reads them, with a ``dt_bias``."""
        c = _mixer_config(config)
        with torch.device(device or "cpu"):
            return cls(c["hidden_size"], c["linear_num_key_heads"], c["linear_num_value_heads"],
                       c["linear_key_head_dim"], c["linear_value_head_dim"], c["linear_conv_kernel_dim"],
                       dt_bias=True, norm_eps=c.get("rms_norm_eps") or 1e-6, dtype=dtype)

    def load_reference(self, module: nn.Module) -> GatedDeltaNet:
        """Load transformers' ``Qwen3NextGatedDeltaNet`` (in_proj_qkvz and in_proj_ba, grouped per key
        head: [q_g, k_g, v_g, z_g] and [b_g, a_g], g's Hv / Hk value heads each) or ``Qwen3_5GatedDeltaNet``
        (in_proj_qkv, _z, _b, _a, in kvcalc's order) into this layer, strictly."""
        share = self.v_heads // self.k_heads

        def mapped(take):
            if hasattr(module, "in_proj_qkvz"):
                qkvz = take("in_proj_qkvz.weight").unflatten(0, (self.k_heads, -1))  # (Hk, rows, hidden)
                q, k, v, z = qkvz.split([self.dk, self.dk, share * self.dv, share * self.dv], dim=1)
                b, a = take("in_proj_ba.weight").unflatten(0, (self.k_heads, -1)).split([share, share], dim=1)
                parts = [p.flatten(0, 1) for p in (q, k, v, z, b, a)]
            else:
                parts = [take(f"in_proj_{p}.weight") for p in ("qkv", "z", "b", "a")]
            return {"in_proj.weight": torch.cat(parts), "conv_weight": take("conv1d.weight").squeeze(1),
                    "dt_bias": take("dt_bias"), "a_log": take("A_log"), "norm": take("norm.weight"),
                    "out_proj.weight": take("out_proj.weight")}

        _load_strictly(self, module, mapped)
        return self

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
        q = _l2norm(q.view(batch, seq, self.k_heads, self.dk).float()).repeat_interleave(share, 2)
        k = _l2norm(k.view(batch, seq, self.k_heads, self.dk).float()).repeat_interleave(share, 2)
        v = v.view(batch, seq, self.v_heads, self.dv).float()
        beta = torch.sigmoid(b.float())
        a = a.float() if self.dt_bias is None else a.float() + self.dt_bias.float()
        decay = torch.exp(-torch.exp(self.a_log.float()) * F.softplus(a))  # (B, S, H) in (0, 1)
        out, state = _delta_rule(state, q, k, v, beta, decay[..., None])
        self.cache.state.copy_(state)
        out = rms_norm(out, self.norm, self.norm_eps).reshape(batch, seq, value) * F.silu(z.float())
        return self.out_proj(out.to(x.dtype))


class KimiDeltaAttention(_Recurrent):
    """KDA, Kimi Delta Attention (Kimi-Linear; transformers' ``KimiLinearDeltaAttention``): gated
    DeltaNet with a decay per key channel. Per head a ``head_dim x head_dim`` state S,
    S <- diag(a_t) S + beta_t k_t (v_t - (diag(a_t) S)^T k_t)^T, read as o_t = S^T q_t / sqrt(head_dim);
    a_t = exp(-exp(A_log) softplus(f_b f_a x_t + dt_bias)), a low-rank projection per channel. The
    short convolution runs over q, k and v (3 x heads x head_dim channels); q and k are
    L2-normalised; the output is RMS-normalised per head (eps ``norm_eps``: Kimi-Linear's
    rms_norm_eps), gated by sigmoid(g_b g_a x) and projected."""

    def __init__(self, hidden: int, num_heads: int, head_dim: int, conv_kernel: int, *,
                 norm_eps: float = 1e-5, dtype: torch.dtype | None = None) -> None:
        width = num_heads * head_dim
        super().__init__(3 * width, conv_kernel, dtype)
        self.heads, self.head_dim, self.norm_eps = num_heads, head_dim, norm_eps
        kw = {"bias": False, "dtype": dtype}
        self.qkv_proj = nn.Linear(hidden, 3 * width, **kw)
        self.f_a_proj, self.f_b_proj = nn.Linear(hidden, head_dim, **kw), nn.Linear(head_dim, width, **kw)
        self.dt_bias = nn.Parameter(torch.empty(width, dtype=dtype))
        self.a_log = nn.Parameter(torch.empty(num_heads, dtype=dtype))
        self.b_proj = nn.Linear(hidden, num_heads, **kw)
        self.g_a_proj, self.g_b_proj = nn.Linear(hidden, head_dim, **kw), nn.Linear(head_dim, width, **kw)
        self.norm = nn.Parameter(torch.empty(head_dim, dtype=dtype))
        self.out_proj = nn.Linear(width, hidden, **kw)

    @classmethod
    def from_config(cls, config, *, device=None, dtype=None) -> KimiDeltaAttention:
        """The KDA mixer of a Kimi-Linear config (``PretrainedConfig`` or its ``to_dict()``), read as
        ``KimiLinearConfig`` reads it: a checkpoint's ``linear_attn_config`` (head_dim, num_heads,
        short_conv_kernel_size) over the flat linear_head_dim, linear_num_heads, linear_conv_kernel_dim."""
        c = _mixer_config(config)
        nested = c.get("linear_attn_config") or {}
        with torch.device(device or "cpu"):
            return cls(c["hidden_size"], nested.get("num_heads", c.get("linear_num_heads", 32)),
                       nested.get("head_dim", c.get("linear_head_dim", 128)),
                       nested.get("short_conv_kernel_size", c.get("linear_conv_kernel_dim", 4)),
                       norm_eps=c.get("rms_norm_eps") or 1e-5, dtype=dtype)

    def load_reference(self, module: nn.Module) -> KimiDeltaAttention:
        """Load transformers' ``KimiLinearDeltaAttention`` into this layer, strictly: its q/k/v_proj
        stacked into qkv_proj, its forget gate's projections, dt_bias and A_log (1, 1, H, 1)."""

        def mapped(take):
            state = {"qkv_proj.weight": torch.cat([take(f"{p}_proj.weight") for p in "qkv"]),
                     "conv_weight": take("conv1d.weight").squeeze(1), "norm": take("o_norm.weight"),
                     "a_log": take("forget_gate.A_log").flatten(), "out_proj.weight": take("o_proj.weight")}
            for name in ("f_a_proj.weight", "f_b_proj.weight", "dt_bias"):
                state[name] = take(f"forget_gate.{name}")
            for name in ("b_proj", "g_a_proj", "g_b_proj"):
                state[f"{name}.weight"] = take(f"{name}.weight")
            return state

        _load_strictly(self, module, mapped)
        return self

    @property
    def state_shape(self) -> tuple[int, ...]:
        return (self.heads, self.head_dim, self.head_dim)

    def forward(self, x: torch.Tensor, start_pos: int = 0) -> torch.Tensor:
        batch, seq, _ = x.shape
        heads = (batch, seq, self.heads, self.head_dim)
        state = self._begin(x, start_pos)
        q, k, v = self._convolve(self.qkv_proj(x), start_pos).float().chunk(3, dim=-1)
        q, k = _l2norm(q.view(heads)), _l2norm(k.view(heads))
        forget = self.f_b_proj(self.f_a_proj(x)).float() + self.dt_bias.float()
        rate = torch.exp(self.a_log.float())[:, None]  # (H, 1)
        decay = torch.exp(-rate * F.softplus(forget.view(heads)))  # (B, S, H, head_dim) in (0, 1)
        beta = torch.sigmoid(self.b_proj(x).float())
        out, state = _delta_rule(state, q, k, v.view(heads), beta, decay)
        self.cache.state.copy_(state)
        gate = torch.sigmoid(self.g_b_proj(self.g_a_proj(x)).float().view(heads))
        out = rms_norm(out, self.norm, eps=self.norm_eps) * gate
        return self.out_proj(out.reshape(batch, seq, -1).to(x.dtype))


def _load_renamed(layer: nn.Module, state: dict[str, torch.Tensor], names: dict[str, str]) -> None:
    """Load a transformers mixer's ``state`` into ``layer``, strictly, its names renamed by ``names``
    (transformers' -> kvcalc's); a depthwise ``conv1d.weight`` (C, 1, K) becomes ``conv_weight`` (C, K)."""
    state = {names.get(name, name): tensor for name, tensor in state.items()}
    if "conv_weight" in state:
        state["conv_weight"] = state["conv_weight"].squeeze(1)
    layer.load_state_dict(state, strict=True)


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

    @classmethod
    def from_config(cls, config, *, layer_idx: int = 0, dtype=None) -> LightningAttention:
        """Layer ``layer_idx``'s lightning attention of a MiniMax config (a ``PretrainedConfig`` or its
        ``to_dict()``), as ``MiniMaxLightningAttention`` reads it."""
        c = _mixer_config(config)
        heads = c["num_attention_heads"]
        head_dim = c.get("head_dim") or c["hidden_size"] // heads
        return cls(c["hidden_size"], heads, head_dim, layer_idx=layer_idx, num_layers=c["num_hidden_layers"],
                   dtype=dtype)

    def load_reference(self, module: nn.Module) -> LightningAttention:
        """Load ``MiniMaxLightningAttention``'s weights (its ``norm.weight`` is ``norm`` here). Its decay
        buffers are not weights: its ``slope_rate`` is checked against ``slopes()``, the rest dropped."""
        state = module.state_dict()
        theirs = state.pop("slope_rate").flatten().float()
        if not torch.allclose(theirs, self.slopes(theirs.device), rtol=1e-6, atol=0):
            raise ValueError(f"slope_rate {theirs.tolist()} differs from slopes() {self.slopes().tolist()}: "
                             "another layer_idx or num_layers")
        for name in ("query_decay", "key_decay", "diagonal_decay"):
            del state[name]
        _load_renamed(self, state, {"norm.weight": "norm"})
        return self

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
    gate and projected; dt_t = softplus(dt_proj x_t + dt_bias).

    As the models have them (transformers' ``Mamba2Mixer``, ``NemotronHMamba2Mixer``, mamba_ssm's
    ``RMSNormGated``), ``dt_bias`` and ``conv_bias`` are on and the norm splits the inner width into
    ``norm_groups`` = n_groups groups, each normalised alone: what ``from_config`` and ``measure``
    build. Built directly, both biases are off and the norm spans the whole width (``norm_groups`` 1);
    ``nn/parallel.py`` shards either."""

    def __init__(self, hidden: int, num_heads: int, head_dim: int, d_state: int, n_groups: int,
                 conv_kernel: int, *, dt_bias: bool = False, conv_bias: bool = False, norm_groups: int = 1,
                 norm_eps: float = 1e-6, dtype: torch.dtype | None = None) -> None:
        inner = num_heads * head_dim
        super().__init__(inner + 2 * n_groups * d_state, conv_kernel, dtype, conv_bias=conv_bias)
        self.heads, self.head_dim, self.d_state, self.groups = num_heads, head_dim, d_state, n_groups
        self.norm_groups, self.norm_eps = norm_groups, norm_eps
        self.in_proj = nn.Linear(hidden, inner + self.channels + num_heads, bias=False, dtype=dtype)
        self.dt_bias = nn.Parameter(torch.empty(num_heads, dtype=dtype)) if dt_bias else None
        self.a_log = nn.Parameter(torch.empty(num_heads, dtype=dtype))
        self.d = nn.Parameter(torch.empty(num_heads, dtype=dtype))
        self.norm = nn.Parameter(torch.empty(inner, dtype=dtype))
        self.out_proj = nn.Linear(inner, hidden, bias=False, dtype=dtype)

    @classmethod
    def from_config(cls, config, *, dtype=None) -> Mamba2:
        """The Mamba2 mixer of a ``mamba2`` config (a ``PretrainedConfig`` or its ``to_dict()``), as
        ``Mamba2Mixer`` reads it. Refuses projection biases, an activation other than SiLU and a
        ``time_step_limit`` other than (0, inf) -- transformers clamps dt in prefill, not in decode."""
        c = _mixer_config(config)
        inner = int(c["expand"] * c["hidden_size"])
        unlimited = (0.0, float("inf"))
        _refuse("Mamba2", c, {"use_bias": not c.get("use_bias"),
                              "time_step_limit": tuple(c.get("time_step_limit", unlimited)) == unlimited,
                              "head_dim": c["num_heads"] * c["head_dim"] == inner})
        groups = c["n_groups"]
        return cls(c["hidden_size"], c["num_heads"], c["head_dim"], c["state_size"], groups, c["conv_kernel"],
                   dt_bias=True, conv_bias=bool(c.get("use_conv_bias", True)), norm_groups=groups,
                   norm_eps=c.get("layer_norm_epsilon", 1e-5), dtype=dtype)

    def load_reference(self, module: nn.Module) -> Mamba2:
        """Load a transformers Mamba2 mixer's weights (``Mamba2Mixer``; Nemotron-H's, Granite's and
        Bamba's use the same names)."""
        _load_renamed(self, module.state_dict(), {"conv1d.weight": "conv_weight", "conv1d.bias": "conv_bias",
                                                  "A_log": "a_log", "D": "d", "norm.weight": "norm"})
        return self

    @property
    def state_shape(self) -> tuple[int, ...]:
        return (self.heads, self.head_dim, self.d_state)

    def _norm_groups(self, x: torch.Tensor) -> torch.Tensor:
        """``rms_norm`` of each of the layer's ``norm_groups`` groups of channels alone, x (B, S, inner / tp)
        this rank's channels. A group wider than a rank's slice sums its squares over the ranks that hold
        it: each rank adds its share to its group's slot of a (B, S, norm_groups) tensor, all-reduced."""
        width = x.shape[-1]
        group = width * self.tp_size // self.norm_groups  # channels per group
        if group <= width:  # whole groups on this rank
            grouped = x.unflatten(-1, (width // group, group))
            scale = torch.rsqrt(grouped.pow(2).mean(-1, keepdim=True) + self.norm_eps)
            return (grouped * scale).flatten(-2) * self.norm.float()
        index = self.tp_rank * width // group
        squares = x.new_zeros(*x.shape[:-1], self.norm_groups)
        squares[..., index] = x.pow(2).sum(-1)
        squares = self._summed(squares)[..., index, None]
        return x * torch.rsqrt(squares / group + self.norm_eps) * self.norm.float()

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
        dt = dt.float() if self.dt_bias is None else dt.float() + self.dt_bias.float()
        dt = F.softplus(dt)  # (B, S, H)
        decay = torch.exp(-torch.exp(self.a_log.float()) * dt)
        out = torch.empty(batch, seq, self.heads, self.head_dim, device=x.device)
        for t in range(seq):
            state = state * decay[:, t, :, None, None] + torch.einsum(
                "bh,bhp,bhn->bhpn", dt[:, t], xs[:, t], b[:, t])
            out[:, t] = torch.einsum("bhpn,bhn->bhp", state, c[:, t]) + self.d.float()[:, None] * xs[:, t]
        self.cache.state.copy_(state)
        out = out.reshape(batch, seq, inner) * F.silu(z.float())
        return self.out_proj(self._norm_groups(out).to(x.dtype))


class Mamba(_Recurrent):
    """Mamba's selective scan (Gu and Dao, 2023; Jamba's ``JambaMambaMixer``): per inner channel a
    ``d_state`` state h, decayed by exp(dt_t A) (A = -exp(A_log), one row per channel) and fed
    dt_t x_t B_t, read as y_t = h C_t + D x_t, then gated by SiLU(z). x and z are in_proj's two
    halves; the short convolution (with a bias) runs over x alone; dt, B and C come from x_proj of
    the convolved x -- dt through a rank ``dt_rank`` bottleneck -- each RMS-normalised as Jamba does,
    and dt = softplus(dt_proj dt)."""

    def __init__(self, hidden: int, intermediate_size: int, d_state: int, conv_kernel: int, dt_rank: int, *,
                 norm_eps: float = 1e-6, dtype: torch.dtype | None = None) -> None:
        super().__init__(intermediate_size, conv_kernel, dtype, conv_bias=True)
        self.inner, self.d_state, self.dt_rank, self.norm_eps = intermediate_size, d_state, dt_rank, norm_eps
        self.in_proj = nn.Linear(hidden, 2 * intermediate_size, bias=False, dtype=dtype)
        self.x_proj = nn.Linear(intermediate_size, dt_rank + 2 * d_state, bias=False, dtype=dtype)
        self.dt_proj = nn.Linear(dt_rank, intermediate_size, dtype=dtype)
        self.dt_norm = nn.Parameter(torch.empty(dt_rank, dtype=dtype))
        self.b_norm = nn.Parameter(torch.empty(d_state, dtype=dtype))
        self.c_norm = nn.Parameter(torch.empty(d_state, dtype=dtype))
        self.a_log = nn.Parameter(torch.empty(intermediate_size, d_state, dtype=dtype))
        self.d = nn.Parameter(torch.empty(intermediate_size, dtype=dtype))
        self.out_proj = nn.Linear(intermediate_size, hidden, bias=False, dtype=dtype)

    @classmethod
    def from_config(cls, config, *, dtype=None) -> Mamba:
        """The Mamba mixer of a Jamba config (a ``PretrainedConfig`` or its ``to_dict()``), as
        ``JambaMambaMixer`` reads it: dt_rank "auto" is ceil(hidden / 16). Refuses projection biases
        and a convolution without one."""
        c = _mixer_config(config)
        _refuse("Mamba", c, {"mamba_proj_bias": not c.get("mamba_proj_bias"),
                             "mamba_conv_bias": c.get("mamba_conv_bias", True)})
        hidden, dt_rank = c["hidden_size"], c.get("mamba_dt_rank", "auto")
        return cls(hidden, c["mamba_expand"] * hidden, c["mamba_d_state"], c["mamba_d_conv"],
                   -(-hidden // 16) if dt_rank == "auto" else dt_rank, norm_eps=c.get("rms_norm_eps", 1e-6),
                   dtype=dtype)

    def load_reference(self, module: nn.Module) -> Mamba:
        """Load ``JambaMambaMixer``'s weights (its dt / B / C layernorms are the norms here)."""
        _load_renamed(self, module.state_dict(), {
            "conv1d.weight": "conv_weight", "conv1d.bias": "conv_bias", "A_log": "a_log", "D": "d",
            "dt_layernorm.weight": "dt_norm", "b_layernorm.weight": "b_norm", "c_layernorm.weight": "c_norm"})
        return self

    @property
    def state_shape(self) -> tuple[int, ...]:
        return (self.inner, self.d_state)

    def forward(self, x: torch.Tensor, start_pos: int = 0) -> torch.Tensor:
        state = self._begin(x, start_pos)
        xs, z = self.in_proj(x).chunk(2, dim=-1)
        xs = self._convolve(xs, start_pos)  # (B, S, inner)
        params = self._summed(self.x_proj(xs).float())  # a shard's x_proj sees its channels only
        dt, b, c = params.split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        e = self.norm_eps  # Jamba's rms_norm_eps
        dt, b, c = rms_norm(dt, self.dt_norm, e), rms_norm(b, self.b_norm, e), rms_norm(c, self.c_norm, e)
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
