"""The cache plan: what each layer of a model caches, and how each part grows with the sequence.

Data flows spec -> plan -> footprint. The plan lists, for every kind of layer a model has (full,
sliding, chunked), the attention those layers use, how many tokens they hold (their growth law) and
the parts they cache. Each part has a width per token as a product of named factors, a rule for
tensor parallelism (split by heads, or the same on every rank) and a storage rule (the cache's
dtype, or the DSA indexer's own format where the engine keeps one). Layers that share another
layer's cache (Gemma-3n) hold nothing and have no entry.

A plan has one entry per distinct layer kind, never one per layer or per token, so a footprint costs
the same for 4 layers or 400 and for 1k tokens or 1M.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from kvcalc.engines import MlaCache
from kvcalc.spec import Attention, LayerKind, MlaAttention, ModelSpec, StandardAttention

INDEXER_KEY = "indexer key"


class Growth(StrEnum):
    """How many of a sequence's tokens a layer holds."""

    EVERY = "every token"
    WINDOW = "the last W tokens"
    CHUNK = "the current chunk of C tokens"


class Split(StrEnum):
    """What tensor parallelism does to a part."""

    HEADS = "split by heads"
    """The first factor counts heads; each of tp ranks holds max(1, heads // tp) of them."""
    REPLICATED = "replicated"
    """Every rank holds all of it (the MLA latent, the DSA indexer key)."""


class Storage(StrEnum):
    CACHE = "cache dtype"
    """In ``--kv-dtype``."""
    INDEXER = "indexer format"
    """As the engine keeps DSA indexer keys (``engines.IndexerKeys``)."""


@dataclass(frozen=True)
class Factor:
    """One factor of a part's width, e.g. ``Factor(8, "KV heads")``."""

    size: int
    label: str


@dataclass(frozen=True)
class PartPlan:
    """One cached tensor of a layer: its width per token, TP rule and storage."""

    name: str
    factors: tuple[Factor, ...]
    split: Split = Split.REPLICATED
    storage: Storage = Storage.CACHE

    def on_rank(self, tp: int) -> tuple[Factor, ...]:
        """The factors one of ``tp`` ranks holds."""
        if self.split is Split.REPLICATED or tp == 1:
            return self.factors
        heads, *rest = self.factors
        return (Factor(max(1, heads.size // tp), heads.label), *rest)


@dataclass(frozen=True)
class LayerPlan:
    """What every layer of one kind caches."""

    kind: LayerKind
    attention: Attention
    growth: Growth
    span: int | None
    """W for a window, C for a chunk; None when the layer holds every token."""
    parts: tuple[PartPlan, ...]


_GROWTH = {LayerKind.FULL: Growth.EVERY, LayerKind.SLIDING: Growth.WINDOW, LayerKind.CHUNKED: Growth.CHUNK}


def cache_plan(spec: ModelSpec, mla_cache: MlaCache | None) -> tuple[LayerPlan, ...]:
    """The plan of ``spec`` with MLA cached as ``mla_cache`` (the engine's choice; None for a
    model without MLA): one entry per kind of layer that holds a cache, in ``LayerKind`` order
    (full always: MTP layers, when counted, are full layers of the main attention)."""
    counts = spec.layer_counts
    return tuple(
        LayerPlan(kind, spec.attention_for(kind), _GROWTH[kind], spec.span(kind),
                  parts(spec.attention_for(kind), mla_cache))
        for kind in LayerKind if (counts[kind] or kind is LayerKind.FULL) and kind is not LayerKind.SHARED
    )


def parts(attn: Attention, cache: MlaCache | None) -> tuple[PartPlan, ...]:
    """The tensors one layer of ``attn`` caches per token, whole (before any TP split)."""
    if isinstance(attn, StandardAttention):
        heads = Factor(attn.num_kv_heads, "KV heads")
        v_label = "v_head_dim" if attn.v_head_dim else "head_dim"
        return (PartPlan("K", (heads, Factor(attn.head_dim, "head_dim")), Split.HEADS),
                PartPlan("V", (heads, Factor(attn.value_dim, v_label)), Split.HEADS))
    return _mla_parts(attn, cache) + _indexer(attn)


def _mla_parts(attn: MlaAttention, cache: MlaCache | None) -> tuple[PartPlan, ...]:
    latent = PartPlan("latent", (Factor(attn.kv_lora_rank, "kv_lora_rank"),))
    rope = PartPlan("rope key", (Factor(attn.qk_rope_head_dim, "qk_rope_head_dim"),))
    if cache in (None, MlaCache.LATENT):
        return latent, rope
    if cache is MlaCache.LATENT_KV:
        return latent, rope, PartPlan("V (latent again)", latent.factors)
    heads = Factor(attn.num_heads, "heads")
    qk_dim = attn.qk_nope_head_dim + attn.qk_rope_head_dim
    k = PartPlan("K", (heads, Factor(qk_dim, "qk_nope_head_dim + qk_rope_head_dim")), Split.HEADS)
    if cache is MlaCache.DECOMPRESSED_PADDED:
        v_dim = Factor(max(qk_dim, attn.v_head_dim), "v_head_dim padded to K")
    else:
        v_dim = Factor(attn.v_head_dim, "v_head_dim")
    return k, PartPlan("V", (heads, v_dim), Split.HEADS)


def _indexer(attn: MlaAttention) -> tuple[PartPlan, ...]:
    """The DSA indexer's key: one head, the same on every TP rank, whatever the MLA layout."""
    if attn.index_head_dim is None:
        return ()
    return (PartPlan(INDEXER_KEY, (Factor(attn.index_head_dim, "index_head_dim"),), storage=Storage.INDEXER),)
