"""Tensor-parallel shards of the attention layers (Megatron-style, as vLLM and SGLang shard them).

- Column-parallel: ``q_proj`` / ``k_proj`` / ``v_proj``, MLA's ``q_b_proj`` (or ``q_proj``) and
  ``kv_b_proj`` keep the rows of this rank's heads.
- Row-parallel: ``o_proj`` keeps the columns of this rank's heads; the partial outputs are summed
  across ranks with an all-reduce.
- Replicated: MLA's ``q_a_proj``, ``kv_a_proj_with_mqa`` and their norms -- so the latent and its
  cache are whole on every rank. KV heads are split max(1, n_kv // tp) per rank; when tp > n_kv each
  KV head is copied to the tp / n_kv ranks whose query heads read it.

A shard is a layer of the same class with fewer heads, loaded with ``strict=True`` from slices of
the full layer's weights, so every shape is checked.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from kvcalc.nn.attention import Attention
from kvcalc.nn.mla import MLA


@dataclass(frozen=True)
class Shard:
    rank: int = 0
    size: int = 1


def shard_layer(full: nn.Module, shard: Shard) -> nn.Module:
    """This rank's slice of ``full`` (a new module on the same device and dtype)."""
    if shard.size == 1:
        return full
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
                      rope_theta=full.rope_theta, rope_interleaved=full.rope_interleaved,
                      device=weight.device, dtype=weight.dtype)
    local.load_state_dict({
        "q_proj.weight": _rows(w["q_proj.weight"], shard.rank * heads * d, heads * d),
        "k_proj.weight": _rows(w["k_proj.weight"], kv_first * d, kv * d),
        "v_proj.weight": _rows(w["v_proj.weight"], kv_first * dv, kv * dv),
        "o_proj.weight": _columns(w["o_proj.weight"], shard.rank * heads * dv, heads * dv),
    }, strict=True)
    return local


def _shard_mla(full: MLA, shard: Shard) -> MLA:
    heads = _local(full.num_heads, shard, "query heads")
    w = full.state_dict()
    hidden = w["o_proj.weight"].shape[0]
    index = full.indexer  # the DSA indexer: replicated, like the latent it sits beside
    index_args = {} if index is None else {"index_n_heads": index.n_heads, "index_head_dim": index.head_dim,
                                           "index_topk": index.topk}
    local = MLA(hidden, heads, full.q_lora_rank, full.kv_lora_rank, full.nope, full.rope, full.v_dim,
                layout=full.layout, rope_theta=full.rope_theta, rope_interleaved=full.rope_interleaved,
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


class TensorParallel(nn.Module):
    """A shard whose row-parallel output is summed across the tensor-parallel group."""

    def __init__(self, local: nn.Module, group=None) -> None:
        super().__init__()
        self.local = local
        self.group = group

    def allocate_cache(self, batch: int, max_tokens: int, dtype: torch.dtype):
        return self.local.allocate_cache(batch, max_tokens, dtype)

    def forward(self, x: torch.Tensor, start_pos: int = 0) -> torch.Tensor:
        out = self.local(x, start_pos)
        torch.distributed.all_reduce(out, group=self.group)
        return out


def _local(total: int, shard: Shard, what: str) -> int:
    if total % shard.size:
        raise ValueError(f"tp {shard.size} does not divide the {total} {what}")
    return total // shard.size


def _rows(weight: torch.Tensor, start: int, count: int) -> torch.Tensor:
    return weight[start : start + count].clone()


def _columns(weight: torch.Tensor, start: int, count: int) -> torch.Tensor:
    return weight[:, start : start + count].clone()
