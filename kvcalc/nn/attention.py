"""Standard attention: MHA, GQA and MQA with a KV cache (parameter names as Llama's)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from kvcalc.nn.cache import TokenCache, attend, positions_of
from kvcalc.nn.rope import Rope, config_dict
from kvcalc.rotary import rope_parameters


@dataclass(frozen=True)
class AttentionFamily:
    """What a family's attention adds to Llama's, as transformers 5.23's ``<Family>Attention`` builds it."""

    qkv_bias: bool | None = None
    """Biases on q, k and v: fixed by the family, or None for the config's ``attention_bias``."""
    o_bias: bool | None = None
    qk_norm: str | None = None
    """RMSNorm of each head's q and k before RoPE: "rms" (weight * x̂, Qwen3), "gemma" ((1 + weight) * x̂)."""
    sinks: bool = False
    """A learned logit per query head that takes part in the softmax and is dropped (gpt-oss)."""
    gemma_scale: bool = False
    """Softmax scale ``query_pre_attn_scalar ** -0.5`` rather than head_dim ** -0.5."""
    softcap: bool = False
    """``attn_logit_softcapping``: scores become cap * tanh(scores / cap) (Gemma-2)."""
    every_layer_slides: bool = False
    """A ``sliding_window`` without ``layer_types`` windows every layer (Mistral, Mixtral)."""
    rotates: bool = True
    """False: no position embedding at all (Nemotron-H's attention layers)."""
    fused_qkv: bool = False
    """q, k and v in one ``qkv_proj`` (Phi-3): :meth:`Attention.load_reference` splits it."""


ATTENTION_FAMILIES = {
    "llama": AttentionFamily(),
    "mistral": AttentionFamily(qkv_bias=False, o_bias=False, every_layer_slides=True),
    "mixtral": AttentionFamily(qkv_bias=False, o_bias=False, every_layer_slides=True),
    "qwen2": AttentionFamily(qkv_bias=True, o_bias=False),
    "qwen3": AttentionFamily(qk_norm="rms"),
    "qwen3_moe": AttentionFamily(qk_norm="rms"),
    "gemma2": AttentionFamily(gemma_scale=True, softcap=True),
    "gemma3_text": AttentionFamily(qk_norm="gemma", gemma_scale=True),
    "gpt_oss": AttentionFamily(sinks=True),
    "nemotron_h": AttentionFamily(qkv_bias=False, o_bias=False, rotates=False),
    "phi3": AttentionFamily(qkv_bias=False, o_bias=False, fused_qkv=True),
}
"""The model types :meth:`Attention.from_config` builds (a config without ``model_type`` is Llama's)."""
ARCHITECTURES = {
    "LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral", "MixtralForCausalLM": "mixtral",
    "Qwen2ForCausalLM": "qwen2", "Qwen3ForCausalLM": "qwen3", "Qwen3MoeForCausalLM": "qwen3_moe",
    "Gemma2ForCausalLM": "gemma2", "Gemma3ForCausalLM": "gemma3_text",
    "Gemma3ForConditionalGeneration": "gemma3_text", "GptOssForCausalLM": "gpt_oss",
    "NemotronHForCausalLM": "nemotron_h", "Phi3ForCausalLM": "phi3",
}
"""A config's model class (``architectures``) -> its attention's model type (:data:`ATTENTION_FAMILIES`)."""


class HeadNorm(nn.Module):
    """RMSNorm over each head's last dimension, as Qwen3 (``weight * x̂``, weight from ones) or Gemma
    (``(1 + weight) * x̂`` in fp32, weight from zeros) compute it."""

    def __init__(self, dim: int, eps: float, *, gemma: bool, device=None, dtype=None) -> None:
        super().__init__()
        self.eps, self.gemma = eps, gemma
        init = torch.zeros if gemma else torch.ones
        self.weight = nn.Parameter(init(dim, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.gemma:
            return (normed * (1.0 + self.weight.float())).type_as(x)
        return self.weight * normed.to(x.dtype)


class Attention(nn.Module):
    """``num_heads`` query heads sharing ``num_kv_heads`` K/V heads; RoPE on q and k.

    ``window`` makes it a sliding-window layer: each query sees the last ``window`` tokens
    (itself included) and the cache is a ring of that many slots. ``chunk`` makes it chunked local
    attention (Llama-4): each query sees the tokens of its own chunk of ``chunk`` positions, all of
    which lie in the last ``chunk`` tokens, so the cache is a ring of ``chunk`` slots.

    ``rope`` sets the rotary embedding (scaling, partial rotary, layout); without it, plain RoPE
    of base ``rope_theta`` over the whole head. What families add to Llama's attention -- biases,
    q/k norms (``qk_norm``), a softmax ``scale``, attention ``sinks``, score ``softcap``, or no rope
    at all (``rotates=False``, Nemotron-H) -- is switched on by argument; :meth:`from_config` sets
    them from a transformers config (:data:`ATTENTION_FAMILIES`). Parameter names are transformers', so the
    family's attention module's state dict loads with ``strict=True`` (:meth:`load_reference`).
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
        qkv_bias: bool = False,
        o_bias: bool = False,
        qk_norm: str | None = None,
        norm_eps: float = 1e-6,
        scale: float | None = None,
        sinks: bool = False,
        softcap: float | None = None,
        rotates: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if num_heads % num_kv_heads:
            raise ValueError(f"num_kv_heads {num_kv_heads} does not divide num_heads {num_heads}")
        if qk_norm not in (None, "rms", "gemma"):
            raise ValueError(f"qk_norm {qk_norm!r}: expected 'rms', 'gemma' or None")
        self.num_heads, self.num_kv_heads = num_heads, num_kv_heads
        self.head_dim, self.v_head_dim = head_dim, v_head_dim or head_dim
        if window is not None and chunk is not None:
            raise ValueError("a layer slides (window) or attends in chunks (chunk), not both")
        self.window, self.chunk = window, chunk
        self.rotary = rope or Rope(head_dim, rope_theta, rope_interleaved)
        self.rope_theta, self.rope_interleaved = self.rotary.theta, self.rotary.interleaved
        self.rotates = rotates
        self.scale, self.softcap = scale, softcap
        kw = {"device": device, "dtype": dtype}
        self.q_proj = nn.Linear(hidden_size, num_heads * head_dim, bias=qkv_bias, **kw)
        self.k_proj = nn.Linear(hidden_size, num_kv_heads * head_dim, bias=qkv_bias, **kw)
        self.v_proj = nn.Linear(hidden_size, num_kv_heads * self.v_head_dim, bias=qkv_bias, **kw)
        self.o_proj = nn.Linear(num_heads * self.v_head_dim, hidden_size, bias=o_bias, **kw)
        self.qk_norm, self.norm_eps = qk_norm, norm_eps
        if qk_norm:
            self.q_norm = HeadNorm(head_dim, norm_eps, gemma=qk_norm == "gemma", **kw)
            self.k_norm = HeadNorm(head_dim, norm_eps, gemma=qk_norm == "gemma", **kw)
        self.sinks = nn.Parameter(torch.zeros(num_heads, **kw)) if sinks else None
        self.cache: TokenCache | None = None

    @classmethod
    def from_config(cls, config, *, layer_idx: int = 0, device=None, dtype=None) -> Attention:
        """Layer ``layer_idx``'s attention of a transformers config (a ``PretrainedConfig`` or its
        ``to_dict()``; a multimodal config's ``text_config``) of a family in
        :data:`ATTENTION_FAMILIES`: shapes, GQA, the layer's window (``layer_types``) and rope --
        ``rope_parameters`` (per layer type where the family has one per type) or ``rope_scaling``,
        with ``partial_rotary_factor`` -- and the family's biases, norms, scale, sinks and softcap,
        as its attention module reads them. Refuses what it does not model rather than ignore it."""
        c = config_dict(config)
        c = config_dict(c["text_config"]) if c.get("text_config") else c
        model_type = c.get("model_type") or "llama"
        family = ATTENTION_FAMILIES.get(model_type)
        if family is None:
            raise ValueError(f"model_type {model_type!r}: from_config builds {', '.join(ATTENTION_FAMILIES)}")
        heads = c["num_attention_heads"]
        head_dim = c.get("head_dim") or c["hidden_size"] // heads
        layer_type = _layer_type(c, layer_idx, family)
        rope = Rope.from_parameters(rope_parameters(c, layer_type), head_dim,
                                    max_position_embeddings=c.get("max_position_embeddings"))
        bias = bool(c.get("attention_bias"))
        softcap = c.get("attn_logit_softcapping") if family.softcap else None
        return cls(
            c["hidden_size"], heads, c.get("num_key_value_heads") or heads, head_dim,
            window=c["sliding_window"] if layer_type == "sliding_attention" else None, rope=rope,
            qkv_bias=bias if family.qkv_bias is None else family.qkv_bias,
            o_bias=bias if family.o_bias is None else family.o_bias,
            qk_norm=family.qk_norm, norm_eps=c.get("rms_norm_eps") or 1e-6,
            scale=c.get("query_pre_attn_scalar", 256) ** -0.5 if family.gemma_scale else None,
            sinks=family.sinks, softcap=softcap, rotates=family.rotates, device=device, dtype=dtype)

    def load_reference(self, module: nn.Module) -> Attention:
        """Load a transformers attention module's weights, strictly: the same names, or Phi-3's
        fused ``qkv_proj`` split into q, k and v."""
        state = dict(module.state_dict())
        if "qkv_proj.weight" in state:
            widths = [self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim,
                      self.num_kv_heads * self.v_head_dim]
            q, k, v = state.pop("qkv_proj.weight").split(widths)
            state |= {"q_proj.weight": q, "k_proj.weight": k, "v_proj.weight": v}
        self.load_state_dict(state, strict=True)
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
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rotates:
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
        out = attend(q, k, v, positions, k_pos, window=self.window, chunk=self.chunk, scale=self.scale,
                     sinks=self.sinks, softcap=self.softcap)  # (B, S, H, d_v)
        return self.o_proj(out.reshape(b, s, self.num_heads * self.v_head_dim))


def _layer_type(config: dict, layer_idx: int, family: AttentionFamily) -> str:
    """``full_attention`` or ``sliding_attention``: from ``layer_types``, or from a ``sliding_window``
    the family applies to every layer; any other layer type is refused by name."""
    types = config.get("layer_types")
    if types:
        if not 0 <= layer_idx < len(types):
            raise ValueError(f"layer_idx {layer_idx}: layer_types names {len(types)} layers")
        if types[layer_idx] not in ("full_attention", "sliding_attention"):
            raise ValueError(f"layer_types[{layer_idx}] {types[layer_idx]!r}: from_config builds full and "
                             "sliding attention")
        return types[layer_idx]
    window = config.get("sliding_window")
    if window is None or config.get("use_sliding_window") is False:
        return "full_attention"
    if family.every_layer_slides:
        return "sliding_attention"
    raise ValueError(f"sliding_window {window!r} without layer_types: which layers slide is not known "
                     f"to from_config for model_type {config.get('model_type')!r}")
