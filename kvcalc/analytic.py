"""Exact KV-cache footprints: pure integer arithmetic from a spec and options.

Elements cached per token per layer (KV-CACHE-FACTS section 1):

- standard attention: K ``n_kv x d_k`` and V ``n_kv x d_v`` (MHA n_kv = n_h, MQA n_kv = 1);
- MLA, latent layout: latent ``d_c`` plus decoupled rope key ``d_R`` -- no x2, no head count;
- MLA, decompressed layout: K ``n_h x (d_nope + d_R)`` and V ``n_h x d_v``.

Layers are grouped by kind (full, sliding), so a footprint costs the same for 4 layers or 400.
An engine profile (``engines.py``) decides the MLA layout, the pages and the sliding-window rule;
a ``Parallel`` (``parallel.py``) decides what one GPU holds. A ``Curve`` holds everything but the
length -- rows per layer kind, for the whole cache and for each GPU stage -- and every figure, a
footprint's named parts included, is read from it.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field, replace
from enum import StrEnum

from kvcalc.engines import Engine, IndexerKeys, MlaCache, WindowRule, get_engine
from kvcalc.errors import OptionError
from kvcalc.formats import Format, PackedMlaFormat, get_format
from kvcalc.parallel import Parallel, ceil_div, stage_layer_counts, stages
from kvcalc.spec import LayerKind, MlaAttention, ModelSpec, StandardAttention


class Layout(StrEnum):
    """Engine-neutral MLA layout (``--layout``). Standard attention always caches K and V."""

    LATENT = "latent"
    DECOMPRESSED = "decompressed"


STANDARD_LAYOUT = "kv"
INDEXER_KEY = "indexer key"
INDEXER_SCALE_GROUP = 128


@dataclass(frozen=True)
class Options:
    seq_len: int
    batch: int = 1
    kv_dtype: str = "bf16"
    layout: Layout | None = None
    """MLA layout for engine-neutral figures; None: latent (or the engine's own)."""
    mtp: bool = False
    engine: str | None = None
    block_size: int | None = None
    parallel: Parallel = field(default_factory=Parallel)


@dataclass(frozen=True)
class Factor:
    """One factor of a part's width, e.g. ``Factor(8, "KV heads")``."""

    size: int
    label: str


@dataclass(frozen=True)
class Part:
    """One cached tensor (K, V, latent, rope key) across all layers of one kind."""

    name: str
    layer_kind: LayerKind
    layers: int
    factors: tuple[Factor, ...]
    """Its width per token and layer as a product; ``values`` is their product."""
    bytes_per_token_layer: int
    cells: int
    """Token slots held for all sequences: tokens after windows, pages and padding."""

    @property
    def values(self) -> int:
        return math.prod(f.size for f in self.factors)

    @property
    def bytes_per_token(self) -> int:
        return self.bytes_per_token_layer * self.layers

    @property
    def total_bytes(self) -> int:
        return self.bytes_per_token * self.cells


@dataclass(frozen=True)
class Footprint:
    model: str
    display_name: str
    attention: str
    """MHA, GQA, MQA or MLA."""
    layout: str
    """kv (standard attention), or the MLA cache: latent, decompressed, ..."""
    kv_dtype: str
    engine: Engine
    seq_len: int
    batch: int
    mtp_layers: int
    """MTP layers counted (0 unless ``--mtp``)."""
    sliding_window: int | None
    parts: tuple[Part, ...]
    """The whole cache: every layer, every head, every sequence, one copy."""
    parallel: Parallel
    gpu_parts: tuple[Part, ...]
    """What the fullest GPU holds."""
    notes: tuple[str, ...]
    """Replication and splitting, in words."""

    @property
    def bytes_per_token(self) -> int:
        """Bytes per token of one sequence over all layers, at the full-context rate."""
        return sum(p.bytes_per_token for p in self.parts)

    @property
    def total_bytes(self) -> int:
        """Bytes for ``batch`` sequences of ``seq_len`` tokens under the engine's rules."""
        return sum(p.total_bytes for p in self.parts)

    @property
    def per_gpu_bytes(self) -> int:
        return sum(p.total_bytes for p in self.gpu_parts)

    @property
    def gpu_bytes_per_token(self) -> int:
        return sum(p.bytes_per_token for p in self.gpu_parts)

    @property
    def gpus(self) -> int:
        return self.parallel.tp * self.parallel.pp


@dataclass(frozen=True)
class Comparison:
    """A footprint beside its MHA-equivalent: one row of ``kvcalc compare``."""

    footprint: Footprint
    mha_equivalent: Footprint


def compare(spec: ModelSpec, options: Options) -> Comparison:
    return Comparison(footprint(spec, options), mha_equivalent(spec, options))


@dataclass(frozen=True)
class Row:
    """One cached tensor's row: its width and bytes per token in one layer."""

    name: str
    factors: tuple[Factor, ...]
    bytes: int


@dataclass(frozen=True)
class Group:
    """The layers of one kind (on one GPU), each caching the same rows."""

    kind: LayerKind
    layers: int
    rows: tuple[Row, ...]

    @property
    def bytes_per_token(self) -> int:
        return sum(r.bytes for r in self.rows) * self.layers


@dataclass(frozen=True)
class Curve:
    """Everything about a cache except its length: bytes as a function of (seq_len, batch).

    Built once per model and options, evaluated in constant time -- the fit solver and the plots
    evaluate it many times. ``stages`` holds what one GPU caches on each pipeline stage.
    """

    engine: Engine
    window: int | None
    parallel: Parallel
    whole: tuple[Group, ...]
    stages: tuple[tuple[Group, ...], ...]

    def total_bytes(self, seq_len: int, batch: int = 1) -> int:
        """The whole cache: every layer, every head, every sequence, one copy."""
        return _bytes(self.whole, self.engine, seq_len, batch, self.window)

    def per_gpu_bytes(self, seq_len: int, batch: int = 1) -> int:
        """What the fullest GPU holds."""
        tokens, seqs = self._per_rank(seq_len, batch)
        return max(_bytes(stage, self.engine, tokens, seqs, self.window) for stage in self.stages)

    @property
    def per_gpu_bytes_per_token(self) -> int:
        """One sequence's bytes per token on the fullest GPU stage, at the full-context rate."""
        return max(sum(g.bytes_per_token for g in stage) for stage in self.stages)

    def _per_rank(self, seq_len: int, batch: int) -> tuple[int, int]:
        return ceil_div(seq_len, self.parallel.dcp), ceil_div(batch, self.parallel.dp_attention)

    def parts(self, seq_len: int, batch: int, *, per_gpu: bool) -> tuple[Part, ...]:
        """The named parts at one length: the whole cache, or the fullest GPU's share."""
        if not per_gpu:
            return _materialise(self.whole, self.engine, seq_len, batch, self.window)
        tokens, seqs = self._per_rank(seq_len, batch)
        stage = max(self.stages, key=lambda g: _bytes(g, self.engine, tokens, seqs, self.window))
        return _materialise(stage, self.engine, tokens, seqs, self.window)


def curve(spec: ModelSpec, options: Options) -> Curve:
    """The cache of ``spec`` under ``options``, for any length (``options.seq_len`` unused)."""
    return _prepared(spec, options)[0]


def footprint(spec: ModelSpec, options: Options) -> Footprint:
    """The exact KV-cache footprint of ``spec`` under ``options``."""
    _check_options(options)
    c, cache, fmt, mtp = _prepared(spec, options)
    par = options.parallel
    whole = c.parts(options.seq_len, options.batch, per_gpu=False)
    gpu = whole if par.is_single_gpu else c.parts(options.seq_len, options.batch, per_gpu=True)
    return Footprint(
        model=spec.name,
        display_name=spec.display_name,
        attention=spec.attention.variant,
        layout=str(cache) if cache else STANDARD_LAYOUT,
        kv_dtype=fmt.name,
        engine=c.engine,
        seq_len=options.seq_len,
        batch=options.batch,
        mtp_layers=mtp,
        sliding_window=spec.sliding_window,
        parts=whole,
        parallel=par,
        gpu_parts=gpu,
        notes=tuple(_notes(spec, cache, par, options, mtp)),
    )


def _prepared(spec: ModelSpec, options: Options):
    """(curve, MLA cache, format, MTP layers counted) after checking every option."""
    attn = spec.attention
    is_mla = isinstance(attn, MlaAttention)
    fmt = get_format(options.kv_dtype)
    engine = get_engine(options.engine, is_mla=is_mla, block_size=options.block_size)
    dsa = is_mla and attn.index_head_dim is not None
    engine.check(fmt.name, is_mla, has_indexer=dsa, shared=bool(spec.layer_counts[LayerKind.SHARED]))
    if dsa:
        engine = engine.for_dsa(options.block_size)
        _check_dsa_parallel(engine, options.parallel)
    cache = _mla_cache(engine, options.layout) if is_mla else None
    par = options.parallel
    par.check(spec)
    mtp = spec.mtp_layers if options.mtp else 0
    whole = _groups(spec, fmt, cache, engine, 1, Counter(spec.layer_counts) + Counter({LayerKind.FULL: mtp}))
    stages = tuple(
        _groups(spec, fmt, cache, engine, par.attention_tp, counts)
        for counts in stage_layer_counts(spec, par.pp, mtp)
    )
    return Curve(engine, spec.sliding_window, par, whole, stages), cache, fmt, mtp


def _groups(spec, fmt, cache, engine: Engine, tp: int, counts) -> tuple[Group, ...]:
    rows = tuple(
        Row(name, factors, _row_bytes(fmt, engine, name, factors, spec, cache))
        for name, factors in _widths(spec.attention, cache, tp)
    )
    return tuple(
        Group(kind, counts[kind], rows) for kind in (LayerKind.FULL, LayerKind.SLIDING) if counts[kind]
    )


def _bytes(groups, engine: Engine, tokens: int, seqs: int, window: int | None) -> int:
    return sum(g.bytes_per_token * _cells(engine, g.kind, tokens, seqs, window) for g in groups)


def _materialise(groups, engine: Engine, tokens: int, seqs: int, window) -> tuple[Part, ...]:
    return tuple(
        Part(r.name, g.kind, g.layers, r.factors, r.bytes, _cells(engine, g.kind, tokens, seqs, window))
        for g in groups
        for r in g.rows
    )


def mha_equivalent(spec: ModelSpec, options: Options) -> Footprint:
    """The same heads without sharing: every query head with its own K and V.

    For MLA that is the decompressed layout; for GQA/MQA, ``num_kv_heads = num_heads``. Engine-neutral
    (exact tokens, no pages), in the same storage format -- except that ``fp8_ds_mla``, which packs
    only the latent, becomes plain fp8. Parallelism is kept, so per-GPU figures compare too.
    """
    kv_dtype = "fp8" if isinstance(get_format(options.kv_dtype), PackedMlaFormat) else options.kv_dtype
    neutral = replace(options, kv_dtype=kv_dtype, engine=None, block_size=None)
    attn = spec.attention
    if isinstance(attn, MlaAttention):
        return footprint(spec, replace(neutral, layout=Layout.DECOMPRESSED))
    mha = replace(attn, num_kv_heads=attn.num_heads)
    return footprint(spec.replace(attention=mha), neutral)


def _check_dsa_parallel(engine: Engine, par: Parallel) -> None:
    """Decode context parallelism over a DSA indexer is not modelled for the engines (SGLang keeps
    the indexer keys whole on every DCP rank)."""
    if par.dcp > 1 and engine.dsa_page is not None:
        raise OptionError(f"--dcp {par.dcp}: how {engine.name} splits a DSA model's indexer keys "
                          "across DCP ranks is not modelled")


def _check_options(options: Options) -> None:
    if options.seq_len < 1:
        raise OptionError(f"--seq: {options.seq_len} must be at least 1 token")
    if options.batch < 1:
        raise OptionError(f"--batch: {options.batch} must be at least 1")


def _mla_cache(engine: Engine, layout: Layout | None) -> MlaCache:
    if engine.mla_cache is None:
        return MlaCache.DECOMPRESSED if layout == Layout.DECOMPRESSED else MlaCache.LATENT
    if layout is not None:
        raise OptionError(
            f"--layout {layout}: {engine.name} caches MLA {engine.mla_cache}; pick the engine "
            "variant instead (vllm@no-mla, llama.cpp@2024, transformers@5.14, reference@naive)"
        )
    return engine.mla_cache


def _widths(attn, cache: MlaCache | None, tp: int) -> list[tuple[str, tuple[Factor, ...]]]:
    """Each cached tensor's name and its width per token and layer on one of ``tp`` ranks."""
    if isinstance(attn, StandardAttention):
        heads = Factor(max(1, attn.num_kv_heads // tp), "KV heads")
        v_label = "v_head_dim" if attn.v_head_dim else "head_dim"
        return [
            ("K", (heads, Factor(attn.head_dim, "head_dim"))),
            ("V", (heads, Factor(attn.value_dim, v_label))),
        ]
    # The DSA indexer's key: one head, the same on every TP rank, whatever the MLA layout.
    indexer = [] if attn.index_head_dim is None else [
        (INDEXER_KEY, (Factor(attn.index_head_dim, "index_head_dim"),))
    ]
    latent = ("latent", (Factor(attn.kv_lora_rank, "kv_lora_rank"),))
    rope = ("rope key", (Factor(attn.qk_rope_head_dim, "qk_rope_head_dim"),))
    if cache == MlaCache.LATENT:
        return [latent, rope, *indexer]  # the same on every TP rank: replicated, never split
    if cache == MlaCache.LATENT_KV:
        return [latent, rope, ("V (latent again)", latent[1]), *indexer]
    heads = Factor(attn.num_heads // tp, "heads")
    qk_dim = attn.qk_nope_head_dim + attn.qk_rope_head_dim
    k = ("K", (heads, Factor(qk_dim, "qk_nope_head_dim + qk_rope_head_dim")))
    if cache == MlaCache.DECOMPRESSED_PADDED:
        return [k, ("V", (heads, Factor(max(qk_dim, attn.v_head_dim), "v_head_dim padded to K"))), *indexer]
    return [k, ("V", (heads, Factor(attn.v_head_dim, "v_head_dim"))), *indexer]


def _cells(engine: Engine, kind: LayerKind, tokens: int, seqs: int, window: int | None) -> int:
    """Token slots one GPU holds in a layer of ``kind`` for ``seqs`` sequences of ``tokens``."""
    page, pad = engine.page_tokens, engine.context_pad
    full = _round_up(_round_up(tokens, page) * seqs, pad)
    if kind is LayerKind.FULL or window is None:
        return full
    rule = engine.window_rule
    if rule is WindowRule.UBATCH:  # llama.cpp: one SWA cache for all sequences + a ubatch
        return _round_up(min(full, window * seqs + 512), pad)
    if rule is WindowRule.PAGE_SPAN and tokens > window:
        first = tokens - window  # the oldest token still inside the window
        return ((tokens - 1) // page - first // page + 1) * page * seqs
    held = min(tokens, window - 1 if rule is WindowRule.WINDOW_MINUS_ONE else window)
    return _round_up(_round_up(held, page) * seqs, pad)


def indexer_fp8_bytes(values: int) -> int:
    """DeepSeek's indexer key format: ``values`` fp8 bytes + one fp32 scale per 128 values
    (132 B for index_head_dim 128)."""
    return values + ceil_div(values, INDEXER_SCALE_GROUP) * 4


def _round_up(n: int, multiple: int) -> int:
    return ceil_div(n, multiple) * multiple


def _row_bytes(fmt: Format, engine: Engine, name: str, factors, spec: ModelSpec, cache) -> int:
    """Bytes of one token's row of this part in one layer; blocks run along the row."""
    if name == INDEXER_KEY and engine.indexer_keys is IndexerKeys.FP8_SCALED:
        return indexer_fp8_bytes(math.prod(f.size for f in factors))
    if not isinstance(fmt, PackedMlaFormat):
        return fmt.row_bytes(math.prod(f.size for f in factors))
    _check_packed(fmt, spec, cache)
    return fmt.latent_bytes() if name == "latent" else fmt.rope_bytes()


def _check_packed(fmt: PackedMlaFormat, spec: ModelSpec, cache: MlaCache | None) -> None:
    attn = spec.attention
    if not isinstance(attn, MlaAttention):
        raise OptionError(
            f"--kv-dtype {fmt.name}: packs an MLA latent, but {spec.name} uses "
            f"{attn.variant} attention"
        )
    if cache != MlaCache.LATENT:
        raise OptionError(f"--kv-dtype {fmt.name}: exists only for the latent layout, not {cache}")
    shape = (attn.kv_lora_rank, attn.qk_rope_head_dim)
    if shape != (fmt.kv_lora_rank, fmt.qk_rope_head_dim):
        raise OptionError(
            f"--kv-dtype {fmt.name}: defined for kv_lora_rank {fmt.kv_lora_rank} + "
            f"qk_rope_head_dim {fmt.qk_rope_head_dim}; {spec.name} has {shape[0]} + {shape[1]}"
        )


def _notes(spec: ModelSpec, cache, par: Parallel, options: Options, mtp: int) -> list[str]:
    """What parallelism does to this cache, in words."""
    notes = []
    tp = par.attention_tp
    attn = spec.attention
    if tp > 1 and cache in (MlaCache.LATENT, MlaCache.LATENT_KV):
        avoid = "" if par.dp_attention > 1 else "; --dp-attention avoids this"
        what = "latent and DSA indexer keys" if attn.index_head_dim is not None else "latent"
        notes.append(f"{what} replicated on {tp} attention-TP ranks: {tp}× the single copy{avoid}")
    elif tp > 1 and isinstance(attn, StandardAttention) and tp > attn.num_kv_heads:
        copies = tp // attn.num_kv_heads
        notes.append(
            f"{attn.num_kv_heads} KV heads on {tp} attention-TP ranks: one per rank, every KV "
            f"head replicated {copies}×"
        )
    elif tp > 1:
        notes.append(f"heads split {tp} ways by tensor parallelism")
    if par.dp_attention > 1:
        seqs = ceil_div(options.batch, par.dp_attention)
        notes.append(
            f"DP attention: {par.dp_attention} groups of {tp} rank{'s' * (tp > 1)}, each holding "
            f"{seqs} of the {options.batch} sequences"
        )
    if par.dcp > 1:
        tokens = ceil_div(options.seq_len, par.dcp)
        notes.append(f"DCP {par.dcp}: each rank holds {tokens:,} of the {options.seq_len:,} tokens")
    if par.pp > 1:
        sizes = ", ".join(str(len(r)) for r in stages(spec.num_layers, par.pp))
        extra = f" (+{mtp} MTP on the last)" if mtp else ""
        notes.append(f"pp {par.pp}: stages of {sizes} layers{extra}; the fullest stage is counted")
    return notes
