"""Standard attention: MHA, GQA and MQA with a KV cache (parameter names as Llama's)."""

from __future__ import annotations

import torch
from torch import nn

from kvcalc.nn.cache import TokenCache, attend, positions_of
from kvcalc.nn.rope import Rope, config_dict, rope_parameters


class Attention(nn.Module):
    """``num_heads`` query heads sharing ``num_kv_heads`` K/V heads; RoPE on q and k.

    ``window`` makes it a sliding-window layer: each query sees the last ``window`` tokens
    (itself included) and the cache is a ring of that many slots. ``chunk`` makes it chunked local
    attention (Llama-4): each query sees the tokens of its own chunk of ``chunk`` positions, all of
    which lie in the last ``chunk`` tokens, so the cache is a ring of ``chunk`` slots.

    ``rope`` sets the rotary embedding (scaling, partial rotary, layout); without it, plain RoPE
    of base ``rope_theta`` over the whole head. :meth:`from_config` builds the layer of a
    transformers config; parameter names are Llama's, so ``LlamaAttention``'s state dict loads with
    ``strict=True`` (:meth:`load_reference`).
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        v_head_dim: int | None = None,
        *,
        window: int | None = None,
        chunk: int | None = None,
        rope_theta: float = 10000.0,
        rope_interleaved: bool = False,
        rope: Rope | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if num_heads % num_kv_heads:
            raise ValueError(f"num_kv_heads {num_kv_heads} does not divide num_heads {num_heads}")
        self.num_heads, self.num_kv_heads = num_heads, num_kv_heads
        self.head_dim, self.v_head_dim = head_dim, v_head_dim or head_dim
        if window is not None and chunk is not None:
            raise ValueError("a layer slides (window) or attends in chunks (chunk), not both")
        self.window, self.chunk = window, chunk
        self.rotary = rope or Rope(head_dim, rope_theta, rope_interleaved)
        self.rope_theta, self.rope_interleaved = self.rotary.theta, self.rotary.interleaved
        kw = {"bias": False, "device": device, "dtype": dtype}
        self.q_proj = nn.Linear(hidden_size, num_heads * head_dim, **kw)
        self.k_proj = nn.Linear(hidden_size, num_kv_heads * head_dim, **kw)
        self.v_proj = nn.Linear(hidden_size, num_kv_heads * self.v_head_dim, **kw)
        self.o_proj = nn.Linear(num_heads * self.v_head_dim, hidden_size, **kw)
        self.cache: TokenCache | None = None

    @classmethod
    def from_config(cls, config, *, device=None, dtype=None) -> Attention:
        """The attention of a transformers config (a ``PretrainedConfig`` or its ``to_dict()``) of
        the Llama family: shapes, GQA and rope -- ``rope_parameters`` or ``rope_scaling``, with
        ``partial_rotary_factor`` -- as ``LlamaAttention`` reads them. Refuses what it does not
        model (biases, sliding windows) rather than ignore it."""
        c = config_dict(config)
        _refuse_unmodelled(c)
        heads = c["num_attention_heads"]
        head_dim = c.get("head_dim") or c["hidden_size"] // heads
        rope = Rope.from_parameters(rope_parameters(c), head_dim,
                                    max_position_embeddings=c.get("max_position_embeddings"))
        return cls(c["hidden_size"], heads, c.get("num_key_value_heads") or heads, head_dim,
                   rope=rope, device=device, dtype=dtype)

    def load_reference(self, module: nn.Module) -> Attention:
        """Load a transformers attention module's weights (``LlamaAttention``: same names, strict)."""
        self.load_state_dict(module.state_dict(), strict=True)
        return self

    def allocate_cache(self, batch: int, max_tokens: int, dtype: torch.dtype) -> TokenCache:
        """K (B, n_kv, T, d_k) and V (B, n_kv, T, d_v); T = the window or chunk when there is one."""
        span = self.window or self.chunk
        capacity = min(max_tokens, span) if span else max_tokens
        widths = {"k": (self.num_kv_heads, self.head_dim), "v": (self.num_kv_heads, self.v_head_dim)}
        self.cache = TokenCache(widths, batch=batch, capacity=capacity, dtype=dtype,
                                device=self.q_proj.weight.device, ring=span is not None)
        return self.cache

    def forward(self, x: torch.Tensor, start_pos: int = 0) -> torch.Tensor:
        """x (B, S, hidden) at positions start_pos .. start_pos + S - 1 -> (B, S, hidden)."""
        b, s, _ = x.shape
        positions = positions_of(self.cache, start_pos, s, x.device)
        cos, sin = self.rotary.angles(positions)  # (S, rotary dim / 2)
        q = self.q_proj(x).view(b, s, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(b, s, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(b, s, self.num_kv_heads, self.v_head_dim)
        q, k = self.rotary.rotate(q, cos, sin), self.rotary.rotate(k, cos, sin)
        if self.cache is not None:
            if (self.window or self.chunk) and start_pos > 0 and s > 1:
                raise ValueError("a ring cache (window, chunk) takes one token at a time after prefill")
            self.cache.write(start_pos, k=k, v=v)
        if start_pos == 0:  # prefill: the tokens at hand are all the keys
            k_pos, k, v = positions, k.transpose(1, 2), v.transpose(1, 2)  # (B, n_kv, S, d)
        else:  # decode: attend over what the cache holds, (B, n_kv, T, d)
            held, k_pos = self.cache.read(x.dtype)
            k, v = held["k"], held["v"]
        out = attend(q, k, v, positions, k_pos, window=self.window, chunk=self.chunk)  # (B, S, H, d_v)
        return self.o_proj(out.reshape(b, s, self.num_heads * self.v_head_dim))


def _refuse_unmodelled(config: dict) -> None:
    """A config field that would change the layer's numbers, which from_config does not build."""
    if config.get("attention_bias"):
        raise ValueError(f"attention_bias {config['attention_bias']!r}: biased projections are not modelled")
    local = set(config.get("layer_types") or ()) - {"full_attention"}
    if config.get("sliding_window") is not None or local:
        raise ValueError(f"sliding_window {config.get('sliding_window')!r}, layer_types {sorted(local)}: "
                         "windowed layers are not built by from_config")
