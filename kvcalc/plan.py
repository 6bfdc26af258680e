"""The cache plan: what each layer of a model caches, and how each part grows with the sequence.

Data flows spec -> plan -> footprint. The plan lists, for every kind of layer a model has (full,
sliding, chunked, DeepSeek-V4's compressed kinds), the attention those layers use and the parts
they cache. Each part has a width per row as a product of named factors, a growth law (how many
rows a sequence holds: every token, a window, a chunk, one entry per R tokens, or compressor state
bounded by R), a rule for tensor parallelism (split by heads, or the same on every rank) and a
storage rule (the cache's dtype, the DSA indexer's own format where the engine keeps one, or fp32).
Layers that share another layer's cache (Gemma-3n) hold nothing and have no entry.

A plan has one entry per distinct layer kind, never one per layer or per token, so a footprint costs
the same for 4 layers or 400 and for 1k tokens or 1M.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

from kvcalc.engines import CompressedCache, MlaCache
from kvcalc.spec import (
    NO_CACHE_KINDS,
    STATE_KINDS,
    Attention,
    CompressedAttention,
    LayerKind,
    MlaAttention,
    ModelSpec,
    RecurrentKind,
    RecurrentState,
    StandardAttention,
)

INDEXER_KEY = "indexer key"


class Growth(StrEnum):
    """How many rows of a part a sequence of ``seq`` tokens holds (``span`` is W, C or R)."""

    EVERY = "every token"
    WINDOW = "the last W tokens"
    CHUNK = "the current chunk of C tokens"
    COMPRESSED = "one entry per R tokens"
    """floor(seq / R): DeepSeek-V4's compressed entries."""
    OPEN_WINDOW = "the tokens of the compressor's open window"
    """seq mod R: what a compressor holds until R tokens close a window into one entry (transformers
    keeps exactly these, so its cache shrinks when a window closes)."""
    OPEN_WINDOW_ROOM = "room for the compressor's longest open window"
    """min(seq, R - 1): a buffer that holds any open window up to this length."""
    STATE_WINDOW = "state rows of the last W tokens"
    """vLLM's DeepSeek-V4 compressor state: a row per token of a short window, in pages."""
    OVERLAP = "the last closed window"
    """R once a window has closed, else 0: CSA's overlapping windows reread the previous one."""
    STATE = "one state per sequence"
    """A linear-attention or Mamba layer's conv and recurrent state: the same size at any length."""

    @property
    def per_sequence(self) -> bool:
        """Bounded by the span whatever the length: state, not a cache that grows."""
        return self in (Growth.OPEN_WINDOW, Growth.OPEN_WINDOW_ROOM, Growth.OVERLAP, Growth.STATE_WINDOW,
                        Growth.STATE)


class Split(StrEnum):
    """What tensor parallelism does to a part."""

    HEADS = "split by heads"
    """The first factor counts heads; each of tp ranks holds max(1, heads // tp) of them."""
    REPLICATED = "replicated"
    """Every rank holds all of it (the MLA latent, the DSA indexer key)."""
    CONV = "split by the mixer's heads and groups"
    """A recurrent mixer's conv inputs: each rank holds the channels of its heads
    (``conv_channels_on_rank``)."""


class Storage(StrEnum):
    CACHE = "cache dtype"
    """In ``--kv-dtype``."""
    INDEXER = "indexer format"
    """As the engine keeps DSA indexer keys (``engines.IndexerKeys``)."""
    FP32 = "fp32"
    """fp32 whatever the cache dtype (transformers' DeepSeek-V4 compressor gates after the fp32
    position bias is added; the recurrent state of gated DeltaNet, KDA and Mamba)."""


@dataclass(frozen=True)
class Factor:
    """One factor of a part's width, e.g. ``Factor(8, "KV heads")``."""

    size: int
    label: str


@dataclass(frozen=True)
class PartPlan:
    """One cached tensor of a layer: its width per row, how many rows it holds, TP rule and storage."""

    name: str
    factors: tuple[Factor, ...]
    split: Split = Split.REPLICATED
    storage: Storage = Storage.CACHE
    growth: Growth = Growth.EVERY
    span: int | None = None
    """W for a window, C for a chunk, R for compressed entries and compressor state; None when the
    part holds every token."""
    mixer: RecurrentState | None = None
    """The mixer whose conv inputs this part holds (``Split.CONV``)."""

    def on_rank(self, tp: int) -> tuple[Factor, ...]:
        """The factors one of ``tp`` ranks holds."""
        if self.split is Split.REPLICATED or tp == 1:
            return self.factors
        first, *rest = self.factors
        if self.split is Split.CONV:
            return (Factor(conv_channels_on_rank(self.mixer, tp), f"({first.label}) / {tp}"), *rest)
        return (Factor(max(1, first.size // tp), first.label), *rest)


def conv_channels_on_rank(mixer: RecurrentState, tp: int) -> int:
    """The conv channels one of ``tp`` ranks holds (vLLM's and SGLang's mamba_utils): the channels
    of its heads; Mamba2's groups, when tp does not divide them, replicated to tp groups so that
    every head's group is on its rank (``Parallel.check`` refuses the splits no engine makes)."""
    if mixer.kind is RecurrentKind.MAMBA2 and mixer.n_groups % tp:
        return (mixer.num_heads * mixer.head_dim + 2 * tp * mixer.d_state) // tp
    return mixer.conv_channels // tp


@dataclass(frozen=True)
class LayerPlan:
    """What every layer of one kind caches."""

    kind: LayerKind
    attention: Attention
    parts: tuple[PartPlan, ...]


_GROWTH = {LayerKind.FULL: Growth.EVERY, LayerKind.SLIDING: Growth.WINDOW, LayerKind.CHUNKED: Growth.CHUNK}


def cache_plan(spec: ModelSpec, mla_cache: MlaCache | None,
               compressed: CompressedCache | None = None) -> tuple[LayerPlan, ...]:
    """The plan of ``spec`` with MLA cached as ``mla_cache`` (the engine's choice; None for a
    model without MLA) and DeepSeek-V4's attention as ``compressed`` (the engine's, for such a
    model): one entry per kind of layer that holds a cache, in ``LayerKind`` order (full always for
    other attention: MTP layers, when counted, are full layers of the main attention)."""
    counts = spec.layer_counts
    if isinstance(spec.attention, CompressedAttention):
        attn = spec.attention
        return tuple(LayerPlan(kind, attn, _compressed_parts(attn, kind, spec.sliding_window, compressed))
                     for kind in LayerKind if counts[kind])
    plans = []
    for kind in LayerKind:
        if not (counts[kind] or kind is LayerKind.FULL) or kind in NO_CACHE_KINDS:
            continue
        attn = spec.attention_for(kind)
        cached = () if kind is LayerKind.RECURRENT else parts(attn, mla_cache)
        growth, span = _GROWTH.get(kind, Growth.EVERY), spec.span(kind)
        state = state_parts(spec.recurrent) if kind in STATE_KINDS else ()
        plans.append(LayerPlan(kind, attn, (*(replace(p, growth=growth, span=span) for p in cached), *state)))
    return tuple(plans)


def state_parts(mixer: RecurrentState) -> tuple[PartPlan, ...]:
    """What one recurrent layer holds per sequence, as transformers 5.23 holds it
    (``LinearAttentionLayer``; MiniMax's ``MiniMaxCache``): the last ``conv_kernel`` inputs of its
    short convolution in the cache dtype, and its recurrent state -- fp32 for gated DeltaNet, KDA
    and Mamba (their kernels return it so), the cache dtype for lightning attention. Heads (Mamba:
    its inner channels) and the conv channels that go with them split across TP ranks."""
    conv = ()
    if mixer.conv_channels is not None:
        conv = (PartPlan("conv state", (Factor(mixer.conv_channels, _CONV_LABEL[mixer.kind]),
                                        Factor(mixer.conv_kernel, "conv_kernel")),
                         Split.CONV, growth=Growth.STATE, mixer=mixer),)
    factors = state_factors(mixer)
    storage = Storage.CACHE if mixer.kind is RecurrentKind.LIGHTNING else Storage.FP32
    name = "SSM state" if mixer.kind in (RecurrentKind.MAMBA, RecurrentKind.MAMBA2) else "recurrent state"
    return (*conv, PartPlan(name, factors, Split.HEADS, storage, Growth.STATE))


def state_factors(mixer: RecurrentState) -> tuple[Factor, ...]:
    """The recurrent state's width per sequence and layer."""
    match mixer.kind:
        case RecurrentKind.GATED_DELTANET:
            return (Factor(mixer.num_v_heads, "value heads"), Factor(mixer.head_k_dim, "head_k_dim"),
                    Factor(mixer.head_v_dim, "head_v_dim"))
        case RecurrentKind.KDA | RecurrentKind.LIGHTNING:
            return (Factor(mixer.num_heads, "heads"), Factor(mixer.head_dim, "head_dim"),
                    Factor(mixer.head_dim, "head_dim"))
        case RecurrentKind.MAMBA2:
            return (Factor(mixer.num_heads, "heads"), Factor(mixer.head_dim, "head_dim"),
                    Factor(mixer.d_state, "d_state"))
    return (Factor(mixer.intermediate_size, "intermediate_size"), Factor(mixer.d_state, "d_state"))


_CONV_LABEL = {
    RecurrentKind.GATED_DELTANET: "2 × key heads × head_k_dim + value heads × head_v_dim",
    RecurrentKind.KDA: "3 × heads × head_dim",
    RecurrentKind.MAMBA2: "heads × head_dim + 2 × n_groups × d_state",
    RecurrentKind.MAMBA: "intermediate_size",
}


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


def _compressed_parts(attn: CompressedAttention, kind: LayerKind, window: int,
                      cache: CompressedCache | None) -> tuple[PartPlan, ...]:
    """One DeepSeek-V4 layer of ``kind``: the window's K = V entry (transformers keeps K and V apart
    on the layers that only slide), and on compressed layers the compressed entries, the CSA
    indexer's compressed key and both compressors' state: the open window's rows (kv and gate;
    CSA's two overlapping series make them twice as wide) and CSA's last closed window (its first
    series only). Every part is one head: replicated across TP ranks."""
    d = Factor(attn.head_dim, "head_dim")
    if kind is LayerKind.SLIDING and cache is CompressedCache.TRANSFORMERS:
        return (PartPlan("K", (d,), growth=Growth.WINDOW, span=window),
                PartPlan("V", (d,), growth=Growth.WINDOW, span=window))
    kv = (PartPlan("K = V", (d,), growth=Growth.WINDOW, span=window),)
    rate = attn.rate(kind)
    if rate is None:
        return kv
    entries = [PartPlan("compressed K = V", (d,), growth=Growth.COMPRESSED, span=rate)]
    state = _compressor("compressor", d, rate, kind, cache)
    if kind is LayerKind.COMPRESSED_SPARSE:
        index = Factor(attn.index_head_dim, "index_head_dim")
        entries.append(PartPlan(INDEXER_KEY, (index,), storage=Storage.INDEXER, growth=Growth.COMPRESSED,
                                span=rate))
        state += _compressor("indexer compressor", index, rate, kind, cache)
    return (*kv, *entries, *state)


def _compressor(name: str, width: Factor, rate: int, kind: LayerKind,
                cache: CompressedCache | None) -> tuple[PartPlan, ...]:
    """A compressor's state: its open window's kv and gate rows (exactly seq mod R in transformers;
    room for the longest, R - 1, in the ideal) and CSA's last closed window."""
    transformers = cache is CompressedCache.TRANSFORMERS
    open_window = Growth.OPEN_WINDOW if transformers else Growth.OPEN_WINDOW_ROOM
    if kind is LayerKind.HEAVILY_COMPRESSED:
        return (PartPlan(f"{name} kv + gate, open window", (Factor(2, "kv and gate"), width),
                         growth=open_window, span=rate),)
    gate = Storage.FP32 if transformers else Storage.CACHE
    return (
        PartPlan(f"{name} kv + gate, open window", (Factor(2, "kv and gate"), Factor(2, "series"), width),
                 growth=open_window, span=rate),
        PartPlan(f"{name} kv, last window", (width,), growth=Growth.OVERLAP, span=rate),
        PartPlan(f"{name} gate, last window", (width,), storage=gate, growth=Growth.OVERLAP, span=rate),
    )
