"""Multi-head Latent Attention (DeepSeek-V2 paper, section 2.1; DeepSeek-V3 inference/model.py).

The hidden state is down-projected to a latent c = kv_a_layernorm(W_DKV h) of kv_lora_rank values
and a decoupled rope key k_R = RoPE(W_KR h) of qk_rope_head_dim values shared by all heads
(together: ``kv_a_proj_with_mqa``). Per-head keys and values are rebuilt by ``kv_b_proj``.

Two cache layouts, chosen explicitly:
- ``decompressed``: cache per-head K (nope + rope) and V, as the reference's ``attn_impl="naive"``;
- ``latent`` (absorbed): cache c and k_R; decode folds kv_b_proj's key half into the query and its
  value half into the output, as ``attn_impl="absorb"``, vLLM and FlashMLA. Same output, far less
  cache -- and what transformers' ``DeepseekV3Attention`` caches (keys: the latent, values: the rope
  key), tensor for tensor: the interleaved rope key's pairs are kept in its order (:func:`_pairs_split`).
  Prefill (start_pos 0) runs per-head attention over the tokens at hand in both layouts, as
  vLLM and SGLang do: it is compute-bound there, and the absorbed form would cost more FLOPs.

Parameter names and shapes follow transformers' ``DeepseekV3Attention``, so its state dict loads
with ``strict=True`` (:meth:`MLA.load_reference`); :meth:`MLA.from_config` builds the layer of a
DeepSeek-V3 config, YaRN included. With ``index_n_heads`` it is DeepSeek Sparse Attention
(DeepSeek-V3.2): a lightning indexer (``indexer.py``) picks ``index_topk`` tokens per query, and its
fp8 key is cached beside the latent in the same cache.
"""

from __future__ import annotations

import torch
from torch import nn

from kvcalc.nn.cache import TokenCache, attend, positions_of
from kvcalc.nn.indexer import Indexer
from kvcalc.nn.rope import Rope, config_dict, softmax_scale
from kvcalc.rotary import rope_parameters


class MLA(nn.Module):
    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        q_lora_rank: int | None,
        kv_lora_rank: int,
        qk_nope_head_dim: int,
        qk_rope_head_dim: int,
        v_head_dim: int,
        *,
        layout: str = "latent",
        rope_theta: float = 10000.0,
        rope_interleaved: bool = True,
        yarn_factor: float = 1.0,
        mscale: float = 1.0,
        rope: Rope | None = None,
        eps: float = 1e-6,
        index_n_heads: int | None = None,
        index_head_dim: int | None = None,
        index_topk: int = 2048,
        index_rope_interleaved: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if layout not in ("latent", "decompressed"):
            raise ValueError(f"layout {layout!r}: expected 'latent' or 'decompressed'")
        self.layout = layout
        self.num_heads, self.q_lora_rank, self.kv_lora_rank = num_heads, q_lora_rank, kv_lora_rank
        self.nope, self.rope, self.v_dim = qk_nope_head_dim, qk_rope_head_dim, v_head_dim
        self.qk_dim = qk_nope_head_dim + qk_rope_head_dim
        self.rotary = rope or Rope(qk_rope_head_dim, rope_theta, rope_interleaved)
        if self.rotary.dim != qk_rope_head_dim:
            raise ValueError(f"rope dim {self.rotary.dim}: MLA rotates qk_rope_head_dim {qk_rope_head_dim}")
        self.rope_theta, self.rope_interleaved = self.rotary.theta, self.rotary.interleaved
        self.scale = softmax_scale(self.qk_dim, yarn_factor=yarn_factor, mscale=mscale)
        kw = {"bias": False, "device": device, "dtype": dtype}
        if q_lora_rank is None:
            self.q_proj = nn.Linear(hidden_size, num_heads * self.qk_dim, **kw)
        else:
            self.q_a_proj = nn.Linear(hidden_size, q_lora_rank, **kw)
            self.q_a_layernorm = nn.RMSNorm(q_lora_rank, eps=eps, device=device, dtype=dtype)
            self.q_b_proj = nn.Linear(q_lora_rank, num_heads * self.qk_dim, **kw)
        self.kv_a_proj_with_mqa = nn.Linear(hidden_size, kv_lora_rank + qk_rope_head_dim, **kw)
        self.kv_a_layernorm = nn.RMSNorm(kv_lora_rank, eps=eps, device=device, dtype=dtype)
        self.kv_b_proj = nn.Linear(kv_lora_rank, num_heads * (qk_nope_head_dim + v_head_dim), **kw)
        self.o_proj = nn.Linear(num_heads * v_head_dim, hidden_size, **kw)
        self.indexer = None
        if index_n_heads is not None:
            if q_lora_rank is None or index_head_dim is None:
                raise ValueError("the DSA indexer needs q_lora_rank and index_head_dim")
            self.indexer = Indexer(hidden_size, q_lora_rank, index_n_heads, index_head_dim, qk_rope_head_dim,
                                   index_topk, rope_interleaved=index_rope_interleaved, device=device,
                                   dtype=dtype)
        self.cache: TokenCache | None = None

    @classmethod
    def from_config(cls, config, layout: str = "latent", *, device=None, dtype=None) -> MLA:
        """The MLA of a transformers DeepSeek-V3 config (a ``PretrainedConfig`` or its ``to_dict()``).

        Shapes, ``rope_interleave`` (default True) and the rope -- ``rope_parameters`` or
        ``rope_scaling``, over qk_rope_head_dim -- as ``DeepseekV3Attention`` reads them. The softmax
        scale is 1 / sqrt(qk_head_dim), times mscale(factor, mscale_all_dim)² when a scaled rope sets
        ``mscale_all_dim`` (transformers' ``yarn_apply_mscale``); YaRN's own attention factor scales
        cos and sin. The norms' eps is 1e-6, the RMSNorm default DeepseekV3Attention builds them with
        (it does not read ``rms_norm_eps``).

        A DSA config's ``index_n_heads``, ``index_head_dim`` and ``index_topk`` (default 2048) add
        the indexer of ``DeepseekV32Attention``; its RoPE is interleaved where
        ``indexer_rope_interleave`` says so (GLM-5's config, read as vLLM reads it), else by
        ``model_type`` as transformers builds it: ``glm_moe_dsa`` interleaved, the others half-split.
        """
        c = config_dict(config)
        if c.get("attention_bias"):
            raise ValueError(f"attention_bias {c['attention_bias']!r}: biased projections are not modelled")
        params, rope_dim = rope_parameters(c), c["qk_rope_head_dim"]
        rope = Rope.from_parameters(params, rope_dim, interleaved=c.get("rope_interleave", True),
                                    max_position_embeddings=c.get("max_position_embeddings"))
        all_dim = params.get("mscale_all_dim") if params["rope_type"] != "default" else None
        yarn = {"yarn_factor": params["factor"], "mscale": all_dim} if all_dim else {}
        index = _index_args(c) if c.get("index_n_heads") else {}
        return cls(c["hidden_size"], c["num_attention_heads"], c.get("q_lora_rank"), c["kv_lora_rank"],
                   c["qk_nope_head_dim"], rope_dim, c["v_head_dim"], layout=layout, rope=rope,
                   **yarn, **index, device=device, dtype=dtype)

    def load_reference(self, module: nn.Module) -> MLA:
        """Load ``DeepseekV3Attention``'s weights (``DeepseekV32Attention``'s or ``GlmMoeDsaAttention``'s
        with the indexer): the names are the same, loaded strictly."""
        self.load_state_dict(module.state_dict(), strict=True)
        return self

    def allocate_cache(self, batch: int, max_tokens: int, dtype: torch.dtype) -> TokenCache:
        if self.layout == "latent":  # latent and rope key side by side in one row, as vLLM/FlashMLA
            widths = {"latent_rope": (self.kv_lora_rank + self.rope,)}  # (B, T, d_c + d_R)
        else:  # (B, H, T, nope + rope) and (B, H, T, v)
            widths = {"k": (self.num_heads, self.qk_dim), "v": (self.num_heads, self.v_dim)}
        own = {}
        if self.indexer is not None:  # + the indexer's fp8 key and scales, (B, T, D) and (B, T, D / 128)
            widths, own = {**widths, **self.indexer.widths}, self.indexer.dtypes
        self.cache = TokenCache(widths, batch=batch, capacity=max_tokens, dtype=dtype,
                                device=self.kv_b_proj.weight.device, dtypes=own)
        return self.cache

    def forward(self, x: torch.Tensor, start_pos: int = 0) -> torch.Tensor:
        """x (B, S, hidden) at positions start_pos .. start_pos + S - 1 -> (B, S, hidden)."""
        b, s, _ = x.shape
        positions = positions_of(self.cache, start_pos, s, x.device)
        cos, sin = self.rotary.angles(positions)  # (S, d_R / 2)
        q_latent = self._q_latent(x)
        q = self._query(x, q_latent).view(b, s, self.num_heads, self.qk_dim)
        q_nope, q_pe = q.split([self.nope, self.rope], dim=-1)
        q_pe = self.rotary.rotate(q_pe, cos, sin)
        latent, k_pe = self.kv_a_proj_with_mqa(x).split([self.kv_lora_rank, self.rope], dim=-1)
        latent = self.kv_a_layernorm(latent)  # (B, S, d_c)
        k_pe = self.rotary.rotate(k_pe[:, :, None, :], cos, sin)  # (B, S, 1, d_R)
        if self.rotary.interleaved:  # the order transformers caches k_rot in; q . k is the same
            q_pe, k_pe = _pairs_split(q_pe), _pairs_split(k_pe)
        index_k = None if self.indexer is None else self.indexer.key(x, cos, sin)
        if self.cache is not None:
            self._remember(start_pos, latent, k_pe, index_k)
        held, k_pos = (None, positions) if start_pos == 0 else self.cache.read(x.dtype)
        keep = None
        if self.indexer is not None:
            stored = index_k if start_pos == 0 else {n: held[n] for n in self.indexer.widths}
            keep = self.indexer.select(x, q_latent, stored, cos, sin, positions, k_pos)
        if start_pos == 0:  # prefill: per-head K and V of the tokens at hand (vLLM, SGLang)
            out = self._multi_head(q_nope, q_pe, latent, k_pe, positions, positions, keep)
        elif self.layout == "latent":
            out = self._absorbed(q_nope, q_pe, held, positions, k_pos, keep)
        else:  # (B, H, T, nope + rope), (B, H, T, v)
            q = torch.cat([q_nope, q_pe], dim=-1)
            out = attend(q, held["k"], held["v"], positions, k_pos, keep=keep, scale=self.scale)
        return self.o_proj(out.reshape(b, s, self.num_heads * self.v_dim))

    def _q_latent(self, x: torch.Tensor) -> torch.Tensor | None:
        """The query's low-rank latent (B, S, q_lora_rank), which the indexer reads too."""
        return None if self.q_lora_rank is None else self.q_a_layernorm(self.q_a_proj(x))

    def _query(self, x: torch.Tensor, q_latent: torch.Tensor | None) -> torch.Tensor:
        return self.q_proj(x) if q_latent is None else self.q_b_proj(q_latent)

    def _up_projection(self) -> tuple[torch.Tensor, torch.Tensor]:
        """kv_b_proj's weight split per head: W_UK (H, nope, d_c) and W_UV (H, v, d_c)."""
        w = self.kv_b_proj.weight.view(self.num_heads, self.nope + self.v_dim, self.kv_lora_rank)
        return w[:, : self.nope], w[:, self.nope :]

    def _per_head(self, latent: torch.Tensor, k_pe: torch.Tensor):
        """K (B, S, H, nope + rope) and V (B, S, H, v) rebuilt from the latent by kv_b_proj."""
        b, s = latent.shape[:2]
        kv = self.kv_b_proj(latent).view(b, s, self.num_heads, self.nope + self.v_dim)
        k_nope, v = kv.split([self.nope, self.v_dim], dim=-1)
        return torch.cat([k_nope, k_pe.expand(-1, -1, self.num_heads, -1)], dim=-1), v

    def _remember(self, start_pos: int, latent: torch.Tensor, k_pe: torch.Tensor, index_k) -> None:
        extra = index_k or {}
        if self.layout == "latent":
            self.cache.write(start_pos, latent_rope=torch.cat([latent, k_pe[:, :, 0]], dim=-1), **extra)
        else:
            k, v = self._per_head(latent, k_pe)
            self.cache.write(start_pos, k=k, v=v, **extra)

    def _multi_head(self, q_nope, q_pe, latent, k_pe, q_pos, k_pos, keep=None) -> torch.Tensor:
        k, v = self._per_head(latent, k_pe)
        q = torch.cat([q_nope, q_pe], dim=-1)  # (B, S, H, nope + rope)
        return attend(q, k.transpose(1, 2), v.transpose(1, 2), q_pos, k_pos, keep=keep, scale=self.scale)

    def _absorbed(self, q_nope, q_pe, held, positions, k_pos, keep=None) -> torch.Tensor:
        """Decode over the cached latent: W_UK folded into the query, W_UV into the output."""
        k = held["latent_rope"][:, None]  # one shared "KV head": (B, 1, T, d_c + d_R)
        w_uk, w_uv = self._up_projection()
        q_latent = torch.einsum("bshd,hdc->bshc", q_nope, w_uk)  # (B, S, H, d_c)
        q = torch.cat([q_latent, q_pe], dim=-1)  # (B, S, H, d_c + d_R)
        # V is the latent, a prefix of K: attend with V = K and cut the output (no copy).
        out_latent = attend(q, k, k, positions, k_pos, keep=keep, scale=self.scale)[..., : self.kv_lora_rank]
        return torch.einsum("bshc,hvc->bshv", out_latent, w_uv)  # (B, S, H, v)


def _index_args(c: dict) -> dict:
    """The DSA indexer's arguments from a config dict (transformers' ``DeepseekV32Config`` fields)."""
    interleaved = c.get("indexer_rope_interleave")
    if interleaved is None:
        interleaved = c.get("model_type") == "glm_moe_dsa"
    return {"index_n_heads": c["index_n_heads"], "index_head_dim": c["index_head_dim"],
            "index_topk": c.get("index_topk", 2048), "index_rope_interleaved": bool(interleaved)}


def _pairs_split(x: torch.Tensor) -> torch.Tensor:
    """An interleaved-rope vector's pairs (2i, 2i + 1) moved to (i, i + d/2): the order in which
    transformers' ``apply_rotary_pos_emb_interleave`` leaves the rope key it caches. Applied to q and
    k alike it changes no score."""
    return torch.cat([x[..., 0::2], x[..., 1::2]], dim=-1)
