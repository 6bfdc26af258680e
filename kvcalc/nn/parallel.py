"""Tensor-parallel shards of the attention layers and recurrent mixers (Megatron-style, as vLLM and
SGLang shard them).

- Column-parallel: ``q_proj`` / ``k_proj`` / ``v_proj``, MLA's ``q_b_proj`` (or ``q_proj``) and
  ``kv_b_proj`` keep the rows of this rank's heads.
- Row-parallel: ``o_proj`` keeps the columns of this rank's heads; the partial outputs are summed
  across ranks with an all-reduce.
  Biases of q, k and v and gpt-oss's sinks keep this rank's heads; o_proj's bias is added on rank 0.
- Replicated: MLA's ``q_a_proj``, ``kv_a_proj_with_mqa`` and their norms -- so the latent and its
  cache are whole on every rank -- and the per-head q/k norms. KV heads are split max(1, n_kv // tp)
  per rank; when tp > n_kv each KV head is copied to the tp / n_kv ranks whose query heads read it.

Recurrent mixers (vLLM's and SGLang's ``mamba_utils`` shapes; ``plan.conv_channels_on_rank``):
- Column-parallel: the input projections, the short convolution's channels, and each head's decay,
  gate and bias parameters keep this rank's heads -- gated DeltaNet's num_k_heads / tp key heads
  and num_v_heads / tp value heads, KDA's, lightning's and Mamba2's heads / tp, Mamba's
  intermediate_size / tp channels. Mamba2's B and C keep this rank's n_groups / tp groups; when
  tp is a multiple of n_groups each group is copied to the tp / n_groups ranks whose heads read it.
- Row-parallel: ``out_proj``, and Mamba's ``x_proj`` (its dt, B and C are all-reduced in the layer,
  as vLLM's ``RowParallelLinear`` does).
- Replicated: KDA's low-rank ``f_a_proj`` / ``g_a_proj``, Mamba's dt / B / C norms and every
  per-head norm (gated DeltaNet, KDA). A norm over the whole width (lightning, Mamba2) normalises
  this rank's slice by the all-reduced sum of squares.
- Hybrid (Falcon-H1): attention and mixer sharded each as above.

A shard is a layer of the same class with fewer heads, loaded with ``strict=True`` from slices of
the full layer's weights, so every shape is checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from kvcalc.nn.attention import Attention
from kvcalc.nn.mla import MLA
from kvcalc.nn.recurrent import (
    GatedDeltaNet,
    Hybrid,
    KimiDeltaAttention,
    LightningAttention,
    Mamba,
    Mamba2,
    Mixer,
)


@dataclass(frozen=True)
class Shard:
    rank: int = 0
    size: int = 1


def shard_layer(full: nn.Module, shard: Shard) -> nn.Module:
    """This rank's slice of ``full`` (a new module on the same device and dtype)."""
    if shard.size == 1:
        return full
    if isinstance(full, Hybrid):
        return Hybrid(shard_layer(full.attention, shard), shard_layer(full.mixer, shard))
    if isinstance(full, Mixer):
        local = _MIXERS[type(full)](full, shard)
        local.tp_rank, local.tp_size = shard.rank, shard.size
        return local
    if isinstance(full, MLA):
        return _shard_mla(full, shard)
    return _shard_attention(full, shard)


def _shard_attention(full: Attention, shard: Shard) -> Attention:
    heads = _local(full.num_heads, shard, "query heads")
    kv = max(1, full.num_kv_heads // shard.size)
    if shard.size <= full.num_kv_heads:
        kv_first = shard.rank * kv
    else:  # each KV head serves tp / n_kv consecutive ranks
        kv_first = shard.rank // (shard.size // full.num_kv_heads)
    d, dv = full.head_dim, full.v_head_dim
    w = full.state_dict()
    weight = w["q_proj.weight"]
    local = Attention(weight.shape[1], heads, kv, d, dv, window=full.window, chunk=full.chunk,
                      rope=full.rotary, qkv_bias=full.q_proj.bias is not None,
                      o_bias=full.o_proj.bias is not None, qk_norm=full.qk_norm, norm_eps=full.norm_eps,
                      scale=full.scale, sinks=full.sinks is not None, softcap=full.softcap,
                      rotates=full.rotates, device=weight.device, dtype=weight.dtype)
    first = shard.rank * heads
    state = dict(w)  # the q/k norms: replicated
    for name, start, width in (("q_proj", first * d, heads * d), ("k_proj", kv_first * d, kv * d),
                               ("v_proj", kv_first * dv, kv * dv)):
        for part in ("weight", "bias"):
            if f"{name}.{part}" in w:
                state[f"{name}.{part}"] = _rows(w[f"{name}.{part}"], start, width)
    state["o_proj.weight"] = _columns(w["o_proj.weight"], first * dv, heads * dv)
    if "o_proj.bias" in w and shard.rank:  # added once to the all-reduced sum: on rank 0
        state["o_proj.bias"] = torch.zeros_like(w["o_proj.bias"])
    if "sinks" in w:
        state["sinks"] = _rows(w["sinks"], first, heads)
    local.load_state_dict(state, strict=True)
    return local


def _shard_mla(full: MLA, shard: Shard) -> MLA:
    heads = _local(full.num_heads, shard, "query heads")
    w = full.state_dict()
    hidden = w["o_proj.weight"].shape[0]
    index = full.indexer  # the DSA indexer: replicated, like the latent it sits beside
    index_args = {} if index is None else {"index_n_heads": index.n_heads, "index_head_dim": index.head_dim,
                                           "index_topk": index.topk,
                                           "index_rope_interleaved": index.rope_interleaved}
    local = MLA(hidden, heads, full.q_lora_rank, full.kv_lora_rank, full.nope, full.rope, full.v_dim,
                layout=full.layout, rope=full.rotary,
                device=w["o_proj.weight"].device, dtype=w["o_proj.weight"].dtype, **index_args)
    local.scale = full.scale
    first = shard.rank * heads
    state = dict(w)  # q_a_proj, kv_a_proj_with_mqa, the norms and the indexer: replicated
    q_name = "q_proj.weight" if full.q_lora_rank is None else "q_b_proj.weight"
    state[q_name] = _rows(w[q_name], first * full.qk_dim, heads * full.qk_dim)
    kv_width = full.nope + full.v_dim
    state["kv_b_proj.weight"] = _rows(w["kv_b_proj.weight"], first * kv_width, heads * kv_width)
    state["o_proj.weight"] = _columns(w["o_proj.weight"], first * full.v_dim, heads * full.v_dim)
    local.load_state_dict(state, strict=True)
    return local


Segments = list[tuple[int, int]]
"""A weight's rows (or columns) as consecutive segments of ``units`` heads (groups, channels) of
``width`` rows each: gated DeltaNet's in_proj is [(Hk, dk), (Hk, dk), (Hv, dv), (Hv, dv), (Hv, 1),
(Hv, 1)] for q, k, v, z, b and a."""


def _shard_gated_deltanet(full: GatedDeltaNet, shard: Shard) -> GatedDeltaNet:
    key_heads = _local(full.k_heads, shard, "key heads")
    w = full.state_dict()
    key, value, heads = (full.k_heads, full.dk), (full.v_heads, full.dv), (full.v_heads, 1)
    local = _new(GatedDeltaNet, w["in_proj.weight"], key_heads, full.v_heads // shard.size, full.dk,
                 full.dv, full.kernel, dt_bias=full.dt_bias is not None, norm_eps=full.norm_eps)
    state = _split_held(w, {"in_proj.weight": [key, key, value, value, heads, heads],
                            "conv_weight": [key, key, value], "a_log": [heads], "dt_bias": [heads]}, shard)
    state["norm"] = w["norm"]  # per head: replicated
    state["out_proj.weight"] = _split(w["out_proj.weight"], [value], shard, dim=1)
    local.load_state_dict(state, strict=True)
    return local


def _shard_kda(full: KimiDeltaAttention, shard: Shard) -> KimiDeltaAttention:
    heads = _local(full.heads, shard, "heads")
    w = full.state_dict()
    width, scalar = (full.heads, full.head_dim), (full.heads, 1)
    local = _new(KimiDeltaAttention, w["qkv_proj.weight"], heads, full.head_dim, full.kernel,
                 norm_eps=full.norm_eps)
    state = {**w, **_split_held(w, {  # f_a_proj, g_a_proj (hidden -> head_dim), the per-head norm: replicated
        "qkv_proj.weight": [width] * 3, "conv_weight": [width] * 3, "f_b_proj.weight": [width],
        "dt_bias": [width], "g_b_proj.weight": [width], "a_log": [scalar], "b_proj.weight": [scalar]}, shard)}
    state["out_proj.weight"] = _split(w["out_proj.weight"], [width], shard, dim=1)
    local.load_state_dict(state, strict=True)
    return local


def _shard_lightning(full: LightningAttention, shard: Shard) -> LightningAttention:
    heads = _local(full.heads, shard, "heads")
    w = full.state_dict()
    width = (full.heads, full.head_dim)
    local = _new(LightningAttention, w["qkv_proj.weight"], heads, full.head_dim, layer_idx=full.layer_idx,
                 num_layers=full.num_layers)
    local.load_state_dict({
        "qkv_proj.weight": _split(w["qkv_proj.weight"], [(full.heads, 3 * full.head_dim)], shard),  # per head
        "output_gate.weight": _split(w["output_gate.weight"], [width], shard),
        "norm": _split(w["norm"], [width], shard),
        "out_proj.weight": _split(w["out_proj.weight"], [width], shard, dim=1),
    }, strict=True)
    return local


def _shard_mamba2(full: Mamba2, shard: Shard) -> Mamba2:
    heads = _local(full.heads, shard, "heads")
    if full.groups % shard.size and shard.size % full.groups:
        raise ValueError(f"tp {shard.size} and the {full.groups} groups must divide one another")
    w = full.state_dict()
    inner, groups, scalar = (full.heads, full.head_dim), (full.groups, full.d_state), (full.heads, 1)
    local = _new(Mamba2, w["in_proj.weight"], heads, full.head_dim, full.d_state,
                 _held(full.groups, shard)[1], full.kernel, dt_bias=full.dt_bias is not None,
                 conv_bias="conv_bias" in w, norm_groups=full.norm_groups, norm_eps=full.norm_eps)
    state = _split_held(w, {"in_proj.weight": [inner, inner, groups, groups, scalar],
                            "conv_weight": [inner, groups, groups], "conv_bias": [inner, groups, groups],
                            "a_log": [scalar], "d": [scalar], "dt_bias": [scalar],
                            "norm": [inner]}, shard)  # the norm: per group, by all-reduced sums
    state["out_proj.weight"] = _split(w["out_proj.weight"], [inner], shard, dim=1)
    local.load_state_dict(state, strict=True)
    return local


def _shard_mamba(full: Mamba, shard: Shard) -> Mamba:
    inner = _local(full.inner, shard, "inner channels")
    w = full.state_dict()
    channels = [(full.inner, 1)]
    local = _new(Mamba, w["in_proj.weight"], inner, full.d_state, full.kernel, full.dt_rank,
                 norm_eps=full.norm_eps)
    per_channel = ("conv_weight", "conv_bias", "dt_proj.weight", "dt_proj.bias", "a_log", "d")
    state = {**w, **_split_held(w, {  # the dt, B and C norms: replicated
        **dict.fromkeys(per_channel, channels), "in_proj.weight": channels * 2}, shard)}  # in_proj: x and z
    for name in ("x_proj.weight", "out_proj.weight"):
        state[name] = _split(w[name], channels, shard, dim=1)
    local.load_state_dict(state, strict=True)
    return local


_MIXERS = {GatedDeltaNet: _shard_gated_deltanet, KimiDeltaAttention: _shard_kda,
           LightningAttention: _shard_lightning, Mamba2: _shard_mamba2, Mamba: _shard_mamba}


class TensorParallel(nn.Module):
    """A shard whose row-parallel output is summed across the tensor-parallel group; a mixer's sums
    over every head inside the layer (``tp_sum``) are all-reduced in the same group."""

    def __init__(self, local: nn.Module, group=None) -> None:
        super().__init__()
        self.local = local
        self.group = group
        for module in local.modules():
            if isinstance(module, Mixer):
                module.tp_sum = partial(_all_reduced, group=group)

    def allocate_cache(self, batch: int, max_tokens: int, dtype: torch.dtype):
        return self.local.allocate_cache(batch, max_tokens, dtype)

    def forward(self, x: torch.Tensor, start_pos: int = 0) -> torch.Tensor:
        out = self.local(x, start_pos)
        torch.distributed.all_reduce(out, group=self.group)
        return out


def _all_reduced(partial_sum: torch.Tensor, group=None) -> torch.Tensor:
    torch.distributed.all_reduce(partial_sum, group=group)
    return partial_sum


def _split_held(w: dict[str, torch.Tensor], segments: dict[str, Segments], shard: Shard) -> dict:
    """This rank's rows of each weight of ``segments`` that ``w`` holds (a bias may be absent)."""
    return {name: _split(w[name], parts, shard) for name, parts in segments.items() if name in w}


def _new(cls: type[nn.Module], like: torch.Tensor, *args, **kwargs) -> nn.Module:
    """A ``cls`` with ``like``'s input width, device and dtype (its weights uninitialised until loaded)."""
    with torch.device(like.device):
        return cls(like.shape[1], *args, dtype=like.dtype, **kwargs)


def _held(units: int, shard: Shard) -> tuple[int, int]:
    """(first, count) of the ``units`` this rank holds: units / tp of them, or -- when tp is a multiple
    of units -- the one unit that tp / units consecutive ranks share."""
    if units % shard.size == 0:
        count = units // shard.size
        return shard.rank * count, count
    return shard.rank // (shard.size // units), 1


def _split(weight: torch.Tensor, segments: Segments, shard: Shard, dim: int = 0) -> torch.Tensor:
    """This rank's units of each segment of ``weight`` along ``dim``, concatenated."""
    pieces, start = [], 0
    for units, width in segments:
        first, count = _held(units, shard)
        pieces.append(weight.narrow(dim, start + first * width, count * width))
        start += units * width
    if start != weight.shape[dim]:
        raise ValueError(f"segments of {start} rows for a weight of {weight.shape[dim]}")
    return torch.cat(pieces, dim)


def _local(total: int, shard: Shard, what: str) -> int:
    if total % shard.size:
        raise ValueError(f"tp {shard.size} does not divide the {total} {what}")
    return total // shard.size


def _rows(weight: torch.Tensor, start: int, count: int) -> torch.Tensor:
    return weight[start : start + count].clone()


def _columns(weight: torch.Tensor, start: int, count: int) -> torch.Tensor:
    return weight[:, start : start + count].clone()
