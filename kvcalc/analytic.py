"""Exact KV-cache footprints: pure integer arithmetic from a spec and options.

Elements cached per token per layer (KV-CACHE-FACTS section 1):

- standard attention: K ``n_kv x d_k`` and V ``n_kv x d_v`` (MHA n_kv = n_h, MQA n_kv = 1);
- MLA, latent layout: latent ``d_c`` plus decoupled rope key ``d_R`` -- no x2, no head count;
- MLA, decompressed layout: K ``n_h x (d_nope + d_R)`` and V ``n_h x d_v``.

The cache plan (``plan.py``) says what each kind of layer caches and how it grows; a footprint
reads it, so it costs the same for 4 layers or 400. An engine profile (``engines.py``) decides the
MLA layout, the pages and the window and chunk rules;
a ``Parallel`` (``parallel.py``) decides what one GPU holds. A ``Curve`` holds everything but the
length -- rows per layer kind, for the whole cache and for each GPU stage -- and every figure, a
footprint's named parts included, is read from it.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field, replace
from enum import StrEnum

from kvcalc import packing
from kvcalc.engines import (
    DEFAULT_BATCHED_TOKENS,
    SWA_RATIO,
    CompressedCache,
    Engine,
    IndexerKeys,
    MlaCache,
    WindowRule,
    get_engine,
    in_flight_batches,
)
from kvcalc.errors import OptionError
from kvcalc.formats import Format, PackedMlaFormat, get_format
from kvcalc.parallel import Parallel, ceil_div, stage_layer_counts, stages
from kvcalc.plan import (
    Factor,
    Growth,
    LayerPlan,
    PartPlan,
    Storage,
    cache_plan,
    conv_channels_on_rank,
    state_factors,
)
from kvcalc.spec import (
    NO_CACHE_KINDS,
    STATE_DTYPES,
    Attention,
    CompressedAttention,
    LayerKind,
    MlaAttention,
    ModelSpec,
    RecurrentKind,
    StandardAttention,
)


class Layout(StrEnum):
    """Engine-neutral MLA layout (``--layout``). Standard attention always caches K and V."""

    LATENT = "latent"
    DECOMPRESSED = "decompressed"


STANDARD_LAYOUT = "kv"
COMPRESSED_LAYOUT = "compressed"
"""DeepSeek-V4: one K = V entry per token of the window, plus compressed entries."""
_MAX_PEAK_LENGTHS = 100_000
"""The most lengths ``Curve.peak_per_gpu_bytes`` evaluates (DeepSeek-V4's rates 4 and 128: 33)."""
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
    max_num_batched_tokens: int | None = None
    """vLLM's scheduler budget per step, which its admission reservation for sliding and chunked
    layers counts (None: ``engines.DEFAULT_BATCHED_TOKENS``)."""
    state_dtype: str | None = None
    """A serving engine's SSM-state dtype (vLLM's --mamba-ssm-cache-dtype, SGLang's
    --mamba-ssm-dtype); None: the engine's own choice (``vllm_state_dtype``, ``sglang_state_dtype``)."""


def in_flight_tokens(options: Options) -> int:
    """vLLM's ``max_in_flight_tokens``: max_num_batched_tokens x the batches in flight."""
    batched = options.max_num_batched_tokens or DEFAULT_BATCHED_TOKENS
    return batched * in_flight_batches(options.parallel.pp)


@dataclass(frozen=True)
class Part:
    """One cached tensor (K, V, latent, rope key, compressed entries, compressor state) across all
    layers of one kind."""

    name: str
    layer_kind: LayerKind | str
    """A layer kind, or ``packing.PADDING`` (vLLM's block padding)."""
    growth: Growth
    span: int | None
    """The window, chunk or compress rate of ``growth`` (None: every token)."""
    layers: int
    factors: tuple[Factor, ...]
    """Its width per row and layer as a product; ``values`` is their product."""
    bytes_per_token_layer: int
    """Bytes of one row (a token, a compressed entry, a row of compressor state) in one layer."""
    cells: int
    """Rows held for all sequences: tokens after windows, pages and padding; entries; state rows."""
    page: int | None = None
    """Tokens per page where the part is paged apart from the engine's page (vLLM's V4)."""

    @property
    def values(self) -> int:
        """Values per row (0 for a row of padding, which holds none)."""
        return math.prod(f.size for f in self.factors) if self.factors else 0

    @property
    def bytes_per_token(self) -> int:
        """What one more token adds in the long run, over all layers of the kind (``_rate``)."""
        return _rate(self.bytes_per_token_layer * self.layers, self.growth, self.span)

    @property
    def total_bytes(self) -> int:
        return self.bytes_per_token_layer * self.layers * self.cells


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
    parts: tuple[Part, ...]
    """The whole cache: every layer, every head, every sequence, one copy."""
    request_bytes: int
    """What the engine reserves to admit ``batch`` sequences of ``seq_len`` tokens, over the whole
    cache: vLLM's admission reservation; ``total_bytes`` where an engine reserves what it holds."""
    in_flight: int
    """vLLM's tokens scheduled but not settled, which its reservation counts (0 elsewhere)."""
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
    def state_bytes_per_sequence(self) -> int:
        """What one sequence holds whatever its length: linear-attention and Mamba state."""
        return sum(p.bytes_per_token_layer * p.layers for p in self.parts if p.growth is Growth.STATE)

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
    """One cached tensor's row: its width, bytes per row in one layer, and how rows grow."""

    name: str
    factors: tuple[Factor, ...]
    bytes: int
    growth: Growth
    span: int | None
    page: int | None = None
    """Tokens per page of this row when it is paged apart from the engine's page (vLLM's V4)."""


@dataclass(frozen=True)
class Group:
    """The layers of one kind (on one GPU), each caching the same rows."""

    kind: LayerKind | str
    """A layer kind, or ``packing.PADDING`` (the unused bytes of vLLM's shared blocks)."""
    layers: int
    rows: tuple[Row, ...]

    @property
    def bytes_per_token(self) -> int:
        return sum(_rate(r.bytes * self.layers, r.growth, r.span) for r in self.rows)


def _rate(row_bytes: int, growth: Growth, span: int | None) -> int:
    """Bytes per token at the full-context rate: a token, window or chunk row counts whole (as if
    the layer held every token), a compressed entry 1/R of itself (rounded up to a whole byte), and
    compressor state nothing (it does not grow with the sequence)."""
    if growth is Growth.COMPRESSED:
        return ceil_div(row_bytes, span)
    return 0 if growth.per_sequence else row_bytes


Term = tuple[Growth, int | None, int | None, int]
"""(growth, span, page, bytes per row summed over every layer and part that grows so)."""


def _terms(groups: tuple[Group, ...]) -> tuple[Term, ...]:
    """The rows of ``groups`` merged by growth law, so that a length costs one cell count per law."""
    merged: dict[tuple[Growth, int | None, int | None], int] = {}
    for g in groups:
        for r in g.rows:
            key = (r.growth, r.span, r.page)
            merged[key] = merged.get(key, 0) + r.bytes * g.layers
    return tuple((*key, size) for key, size in merged.items())


@dataclass(frozen=True)
class Curve:
    """Everything about a cache except its length: bytes as a function of (seq_len, batch).

    Built once per model and options, evaluated in constant time -- the fit solver and the plots
    evaluate it many times. ``stages`` holds what one GPU caches on each pipeline stage.
    """

    engine: Engine
    parallel: Parallel
    whole: tuple[Group, ...]
    stages: tuple[tuple[Group, ...], ...]
    whole_terms: tuple[Term, ...] = field(init=False)
    """``whole`` merged by growth law (``_terms``): what an evaluation sums."""
    stage_terms: tuple[tuple[Term, ...], ...] = field(init=False)
    block_bytes: tuple[int, ...] | None = None
    """vLLM: the bytes of one block id on each stage's GPU -- one page of every layer of the widest
    KV-cache group, all groups drawing ids from one pool (v1/core/kv_cache_planning.py
    ``_get_kv_cache_bytes_per_block``); None for engines that reserve what they hold."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "whole_terms", _terms(self.whole))
        object.__setattr__(self, "stage_terms", tuple(_terms(stage) for stage in self.stages))

    def total_bytes(self, seq_len: int, batch: int = 1) -> int:
        """The whole cache: every layer, every head, every sequence, one copy."""
        check_lengths(seq_len, batch)
        return _bytes(self.whole_terms, self.engine, seq_len, batch)

    def per_gpu_bytes(self, seq_len: int, batch: int = 1) -> int:
        """What the fullest GPU holds."""
        check_lengths(seq_len, batch)
        tokens, seqs = self._per_rank(seq_len, batch)
        return max(_bytes(stage, self.engine, tokens, seqs) for stage in self.stage_terms)

    def request_bytes(self, seq_len: int, batch: int = 1, in_flight: int = 0) -> int:
        """What the engine reserves to admit ``batch`` sequences of ``seq_len`` tokens, the whole
        cache (``admission_cells``); what they hold where it reserves that."""
        check_lengths(seq_len, batch, in_flight=in_flight)
        if self.block_bytes is None:
            return self.total_bytes(seq_len, batch)
        return _admission_bytes(self.whole_terms, self.engine, seq_len, batch, in_flight)

    def request_per_gpu_bytes(self, seq_len: int, batch: int = 1, in_flight: int = 0) -> int:
        """What the fullest GPU reserves to admit ``batch`` sequences of ``seq_len`` tokens (vLLM)."""
        check_lengths(seq_len, batch, in_flight=in_flight)
        if self.block_bytes is None:
            raise ValueError("only a vLLM curve reserves apart from what it holds")
        tokens, seqs = self._per_rank(seq_len, batch)
        return max(_admission_bytes(terms, self.engine, tokens, seqs, in_flight)
                   for terms in self.stage_terms)

    def request_blocks(self, seq_len: int, in_flight: int) -> int:
        """vLLM's blocks per request of ``seq_len`` tokens, summed over its KV-cache groups: what
        ``get_max_concurrency_for_kv_cache_config`` divides the pool by (the same on every stage)."""
        if self.block_bytes is None:
            raise ValueError("only a vLLM curve counts blocks")
        tokens, _ = self._per_rank(seq_len, 1)
        counts = set()
        for terms, block in zip(self.stage_terms, self.block_bytes, strict=True):
            if not block:  # a stage of shared layers only: no pool
                continue
            reserved = _admission_bytes(terms, self.engine, tokens, 1, in_flight)
            if reserved % block:
                raise AssertionError(f"{reserved:,} B reserved is not whole blocks of {block:,} B")
            counts.add(reserved // block)
        return max(counts)

    def usable_blocks(self, budget: int) -> int:
        """vLLM: the blocks ``budget`` bytes per GPU give a request -- the pool of the stage with the
        fewest, less its null block (v1/core/block_pool.py)."""
        if self.block_bytes is None:
            raise ValueError("only a vLLM curve counts blocks")
        return min(budget // b for b in self.block_bytes if b) - 1

    @property
    def uniform(self) -> bool:
        """Whether every row holds every token in the engine's own pages (no window, chunk,
        compressed entry or state)."""
        return all(growth is Growth.EVERY and page is None for growth, _, page, _ in self.whole_terms)

    @property
    def monotone(self) -> bool:
        """Whether the cache never shrinks as a sequence grows (a compressor's open window empties
        each time R tokens close into one entry)."""
        return all(growth is not Growth.OPEN_WINDOW for growth, *_ in self.whole_terms)

    def peak_per_gpu_bytes(self, seq_len: int, batch: int = 1) -> int:
        """The most the fullest GPU holds at any length up to ``seq_len``: what a sequence needs to
        grow that long.

        The cache is g(n), which never shrinks, plus open windows a_R x (n mod R). From a length
        where no window is about to close (n mod R < R - 1 for every R) one more token raises every
        term, so the peak is at ``seq_len`` or where some n mod R = R - 1; and as the open windows
        repeat every L = lcm of the rates while g grows, at one of those within the last L tokens.
        """
        check_lengths(seq_len, batch)
        if self.monotone:
            return self.per_gpu_bytes(seq_len, batch)
        rates = sorted({span for growth, span, *_ in self.whole_terms if growth is Growth.OPEN_WINDOW})
        period = math.lcm(*rates)
        if sum(period // r for r in rates) > _MAX_PEAK_LENGTHS:
            raise OptionError(f"compress rates {', '.join(map(str, rates))}: their open windows repeat only "
                              f"every {period:,} tokens; kvcalc does not search that far for the peak")
        low = max(1, seq_len - period + 1)
        lengths = {seq_len} | {n for r in rates for n in range(low + (r - 1 - low) % r, seq_len + 1, r)}
        return max(self.per_gpu_bytes(n, batch) for n in lengths)

    @property
    def per_gpu_state_bytes(self) -> int:
        """What one sequence holds on the fullest GPU stage whatever its length (recurrent state)."""
        return max(sum(size for growth, _, _, size in terms if growth is Growth.STATE)
                   for terms in self.stage_terms)

    @property
    def per_gpu_bytes_per_token(self) -> int:
        """One sequence's bytes per token on the fullest GPU stage, at the full-context rate."""
        return max(sum(g.bytes_per_token for g in stage) for stage in self.stages)

    def _per_rank(self, seq_len: int, batch: int) -> tuple[int, int]:
        return ceil_div(seq_len, self.parallel.dcp), ceil_div(batch, self.parallel.dp_attention)

    def parts(self, seq_len: int, batch: int, *, per_gpu: bool) -> tuple[Part, ...]:
        """The named parts at one length: the whole cache, or the fullest GPU's share."""
        check_lengths(seq_len, batch)
        if not per_gpu:
            return _materialise(self.whole, self.engine, seq_len, batch)
        tokens, seqs = self._per_rank(seq_len, batch)
        sizes = [_bytes(terms, self.engine, tokens, seqs) for terms in self.stage_terms]
        stage = sizes.index(max(sizes))
        return _materialise(self.stages[stage], self.engine, tokens, seqs)


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
    request = c.request_bytes(options.seq_len, options.batch, in_flight_tokens(options))
    return Footprint(
        model=spec.name,
        display_name=spec.display_name,
        attention=spec.attention.variant + (f"+{spec.recurrent.variant}" if spec.recurrent else ""),
        layout=_layout_name(spec, cache),
        kv_dtype=fmt.name,
        engine=c.engine,
        seq_len=options.seq_len,
        batch=options.batch,
        mtp_layers=mtp,
        parts=whole,
        request_bytes=request,
        in_flight=in_flight_tokens(options) if c.block_bytes else 0,
        parallel=par,
        gpu_parts=gpu,
        notes=tuple(_notes(spec, cache, par, options, mtp)),
    )


def _layout_name(spec: ModelSpec, cache: MlaCache | None) -> str:
    if cache is not None:
        return str(cache)
    return COMPRESSED_LAYOUT if isinstance(spec.attention, CompressedAttention) else STANDARD_LAYOUT


def with_default_engine(spec: ModelSpec, options: Options) -> Options:
    """``options`` with the spec's own engine (a GGUF file's llama.cpp) where --engine is not given."""
    if options.engine is None and spec.default_engine is not None:
        return replace(options, engine=spec.default_engine)
    return options


def _prepared(spec: ModelSpec, options: Options):
    """(curve, MLA cache, format, MTP layers counted) after checking every option."""
    _check_options(options)
    options = with_default_engine(spec, options)
    attn = spec.attention
    is_mla = isinstance(attn, MlaAttention)
    fmt = get_format(options.kv_dtype)
    engine = get_engine(options.engine, is_mla=is_mla, block_size=options.block_size)
    dsa = is_mla and attn.index_head_dim is not None
    counts = spec.layer_counts
    compressed = isinstance(attn, CompressedAttention)
    if options.max_num_batched_tokens is not None:
        if not engine.block_pool:
            raise OptionError(f"--max-num-batched-tokens: vLLM's scheduler budget; {engine.name} does not "
                              "take it (--engine vllm)")
        if options.max_num_batched_tokens < 1:
            raise OptionError(f"--max-num-batched-tokens: {options.max_num_batched_tokens} must be at "
                              "least 1")
    if options.state_dtype is not None:
        _check_state_dtype(options.state_dtype, engine, spec)
    attends = any(counts[k] for k in LayerKind if k not in (*NO_CACHE_KINDS, LayerKind.RECURRENT))
    engine.check(fmt.name, is_mla, has_indexer=dsa, shared=bool(counts[LayerKind.SHARED]),
                 chunked=bool(counts[LayerKind.CHUNKED]), kind_shapes=len(spec.attentions) > 1,
                 compressed=compressed, recurrent=spec.recurrent is not None,
                 attends=attends)
    windowed = bool(counts[LayerKind.SLIDING] or counts[LayerKind.CHUNKED])
    engine = engine.for_architecture(spec.architecture, windowed)
    if compressed:
        _check_compressed(spec, options)
        if engine.compressed is CompressedCache.VLLM:
            return _packed_curve(spec, fmt, engine, options.parallel, options.block_size), None, fmt, 0
    if dsa:
        engine = engine.for_dsa(options.block_size)
        _check_dsa_parallel(engine, options.parallel)
    cache = _mla_cache(engine, options.layout) if is_mla else None
    if isinstance(fmt, PackedMlaFormat):
        _check_packed(fmt, spec, cache)
    par = options.parallel
    par.check(spec)
    mtp = spec.mtp_layers if options.mtp else 0
    plan = cache_plan(spec, cache, engine.compressed)
    whole = _groups(plan, fmt, engine, 1, Counter(counts) + Counter({LayerKind.FULL: mtp}))
    stage_groups = tuple(
        _groups(plan, fmt, engine, par.attention_tp, stage)
        for stage in stage_layer_counts(spec, par.pp, mtp)
    )
    blocks = None
    if spec.recurrent is not None and (engine.state_slots or engine.block_pool) and not attends:
        raise OptionError(f"--engine {engine.name}: how it serves a model without attention layers (every "
                          f"layer {spec.recurrent.kind}) is not modelled")
    if mtp and spec.recurrent is not None and (engine.state_slots or engine.block_pool):
        raise OptionError(f"--mtp: {engine.name} decodes MTP drafts with extra state per recurrent layer "
                          "(num_speculative_tokens more conv inputs and state blocks in vLLM, intermediate "
                          "state in SGLang): not modelled")
    if engine.state_slots and spec.recurrent is not None:
        if par.dcp > 1:
            raise OptionError(f"--dcp {par.dcp}: how SGLang splits a hybrid's state pool under decode "
                              "context parallelism is not modelled")
        engine, whole, stage_groups = _sglang_state(spec, engine, whole, stage_groups, options.state_dtype)
    if engine.block_pool and spec.recurrent is not None:
        engine, whole, stage_groups = _vllm_state(spec, engine, whole, stage_groups, options)
    if engine.block_pool:
        for groups in stage_groups:  # as each GPU holds its layers
            _check_equal_pages(engine, groups)
        _check_vllm_windows(spec, par)
        whole, stage_groups, widths = _hybrid_padding(spec, mtp, par, whole, stage_groups)
        blocks = tuple(width * _layer_page_bytes(sg, engine)
                       for width, sg in zip(widths, stage_groups, strict=True))
    return Curve(engine, par, whole, stage_groups, block_bytes=blocks), cache, fmt, mtp


def _layer_page_bytes(groups: tuple[Group, ...], engine: Engine) -> int:
    """One layer's page on this GPU (every kind's is the same: ``_check_equal_pages``); 0 on a stage
    whose layers all share another's cache."""
    own = [g for g in groups if g.kind != packing.PADDING]
    return _page_bytes(own[0], engine) if own else 0


def _page_bytes(group: Group, engine: Engine) -> int:
    """A page of one layer of ``group``: its token rows for a page of tokens; a state page whole."""
    return sum(r.bytes if r.growth is Growth.STATE else r.bytes * engine.page_tokens for r in group.rows)


_GDN, _MAMBA2 = (64, 1), (16, 1)
VLLM_STATE = {
    "Qwen3NextForCausalLM": _GDN, "Qwen3_5ForCausalLM": _GDN, "Qwen3_5ForConditionalGeneration": _GDN,
    "Qwen3_5MoeForCausalLM": _GDN, "Qwen3_5MoeForConditionalGeneration": _GDN,
    "JambaForCausalLM": (16, 0), "GraniteMoeHybridForCausalLM": _MAMBA2, "NemotronHForCausalLM": _MAMBA2,
    "FalconH1ForCausalLM": _MAMBA2, "KimiLinearForCausalLM": (16, 0),
}
"""The hybrid architectures whose state kvcalc pages as vLLM 0.33 does on Hopper, with the block
alignment and the prefill-checkpoint blocks of their mixer: gated DeltaNet prefills with FlashInfer
on SM90 (alignment 64, one checkpoint block; layers/mamba/gdn/qwen_gdn_linear_attn.py), Mamba2
keeps one checkpoint block (mamba_mixer2.py), Mamba1 and KDA none; a model with MLA aligns its
block to 128 (platforms/interface.py). docs/facts/vllm-sglang-recurrent-state.md"""
_MINIMAX = ("MiniMaxForCausalLM", "MiniMaxText01ForCausalLM", "MiniMaxM1ForCausalLM")
_VLLM_STATE_REFUSED = dict.fromkeys(_MINIMAX, "vLLM dropped MiniMax-Text-01 / M1 after 0.23 "
                                    "(model_executor/models/registry.py _PREVIOUSLY_SUPPORTED_MODELS)")


def _check_state_dtype(dtype: str, engine: Engine, spec: ModelSpec) -> None:
    if dtype not in STATE_DTYPES:
        raise OptionError(f"--state-dtype {dtype}: expected one of {', '.join(STATE_DTYPES)}")
    if not (engine.block_pool or engine.state_slots):
        raise OptionError(f"--state-dtype {dtype}: the state dtype is a serving engine's setting (--engine "
                          f"vllm or sglang); {engine.name} keeps it as transformers' kernels return it "
                          "(fp32; lightning: the cache dtype)")
    if spec.recurrent is None:
        raise OptionError(f"--state-dtype {dtype}: {spec.name} has no recurrent layers")


def vllm_state_dtype(spec: ModelSpec, given: str | None = None) -> tuple[str, str]:
    """The dtype vLLM 0.33 keeps a hybrid's SSM / recurrent state in, and why: --mamba-ssm-cache-dtype
    (``given``), else the model dtype (its "auto"; bf16 assumed) unless the model overrides it
    (model_executor/models/config.py, layers/mamba/mamba_utils.py). KDA layers pass no SSM dtype:
    float32 whatever is given."""
    mixer, name = spec.recurrent, spec.architecture or ""
    if mixer.kind is RecurrentKind.KDA:
        return "float32", "float32 for KDA (its layer passes no --mamba-ssm-cache-dtype)"
    if given is not None:
        return given, "--mamba-ssm-cache-dtype"
    if name.startswith("NemotronH"):
        return mixer.ssm_cache_dtype or "float32", (
            "the config's mamba_ssm_cache_dtype" if mixer.ssm_cache_dtype else
            "float32 for Nemotron-H when the config names no mamba_ssm_cache_dtype")
    if name.startswith("Qwen3_5") and mixer.ssm_dtype:
        return mixer.ssm_dtype, "the config's mamba_ssm_dtype"
    return "bfloat16", "the model dtype, bf16 assumed"


def _vllm_state(spec: ModelSpec, engine: Engine, whole, stages, options: Options):
    """vLLM 0.33's recurrent layers (platforms/interface.py, v1/kv_cache_interface.py ``MambaSpec``):
    each holds per sequence one page of its conv state (conv_kernel - 1 inputs, in the model dtype)
    and its state (``vllm_state_dtype``), both split by heads across the ``tp`` ranks; the attention
    block size rises to the smallest multiple of the alignment whose page on a rank holds that
    state, and the state page is padded to the attention page. With prefix caching (its default) a
    request reserves 2 + checkpoint pages per recurrent group. A layer holding attention and Mamba
    side by side (Falcon-H1) is two layers to vLLM, one of each. The whole model's state is the
    ranks' pages together."""
    name, block_size, tp = spec.architecture, options.block_size, options.parallel.attention_tp
    if name not in VLLM_STATE:
        why = _VLLM_STATE_REFUSED.get(name or "", f"how it pages the state of {name or 'this architecture'} "
                                      "is not modelled")
        raise OptionError(f"--engine {engine.name}: {why} ({spec.recurrent.kind} state)")
    if block_size is not None:
        raise OptionError(f"--block-size {block_size}: vLLM sets a hybrid model's attention block size "
                          "itself (to hold the recurrent state's page)")
    if options.parallel.dcp > 1:
        raise OptionError(f"--dcp {options.parallel.dcp}: vLLM does not run recurrent layers with decode "
                          "context parallelism (v1/core/single_type_kv_cache_manager.py: \"DCP not support "
                          "mamba now.\")")
    align, checkpoint = VLLM_STATE[name]
    if isinstance(spec.attention, MlaAttention):
        align = max(align, 128)
    mixer = spec.recurrent
    dtype, why = vllm_state_dtype(spec, options.state_dtype)
    channels = conv_channels_on_rank(mixer, tp) if tp > 1 else mixer.conv_channels
    conv = (mixer.conv_kernel - 1) * channels * 2
    state = math.prod(f.size for f in state_factors(mixer)) // tp * STATE_DTYPES[dtype]
    attends = next(g for groups in stages for g in groups if g.kind is not LayerKind.RECURRENT)
    token = sum(r.bytes for r in attends.rows if r.growth is not Growth.STATE)
    block = max(16, 16 * ceil_div(align * ceil_div(conv + state, align * token), 16))
    page = block * token
    shown = f"state page: conv ({mixer.conv_kernel - 1} × {channels:,}) + state ({dtype}), padded"

    def paged(groups, ranks: int):
        label = shown + (f", on each of {ranks} ranks" if ranks > 1 else "")
        row = Row(label, (), page * ranks, Growth.STATE, 2 + checkpoint)
        out = []
        for g in groups:
            if g.kind is LayerKind.HYBRID:
                out += [replace(g, rows=tuple(r for r in g.rows if r.growth is not Growth.STATE)),
                        Group(LayerKind.RECURRENT, g.layers, (row,))]
            else:
                out.append(replace(g, rows=(row,)) if g.kind is LayerKind.RECURRENT else g)
        return tuple(out)

    on_rank = f" on each of {tp} ranks" if tp > 1 else ""
    engine = replace(engine, page_tokens=block, rules=(
        f"pages of {block} tokens: each sequence rounded up to whole pages",
        *(r for r in engine.rules if not r.startswith("pages of")),
        f"recurrent layers: a page of conv state ({mixer.conv_kernel - 1} inputs, bf16) and state "
        f"({dtype}: {why}), {conv + state:,} B{on_rank}; the attention block size rises to {block} "
        f"tokens, a multiple of {align}, so that its page ({page:,} B) holds it, and the state page is "
        "padded to it (platforms/interface.py); a sequence holds one state page per layer, and admission "
        f"reserves {2 + checkpoint} (v1/kv_cache_interface.py MambaSpec, prefix caching on)"))
    return engine, paged(whole, tp), tuple(paged(stage, 1) for stage in stages)


SGLANG_STATE = {
    "Qwen3NextForCausalLM": True, "Qwen3_5ForCausalLM": True, "Qwen3_5ForConditionalGeneration": True,
    "Qwen3_5MoeForCausalLM": True, "Qwen3_5MoeForConditionalGeneration": True, "NemotronHForCausalLM": True,
    "FalconH1ForCausalLM": True, "GraniteMoeHybridForCausalLM": False, "KimiLinearForCausalLM": False,
}
"""The hybrid architectures SGLang 0.5.23 serves with a MambaPool (srt/configs/hybrid_arch.py), and
whether it reads the SSM-state dtype from the config (``mamba_ssm_dtype``; srt/configs/mamba_utils.py
``mamba2_state_dtype``): Granite-4.0-H and Kimi-Linear pass no config, so keep float32."""
_SGLANG_STATE_REFUSED = {
    "JambaForCausalLM": "SGLang 0.5.23 has no Jamba model (srt/models)",
    **dict.fromkeys(_MINIMAX, "SGLang 0.5.23 has no MiniMax-Text-01 / M1 model (srt/models)"),
}


def sglang_state_dtype(spec: ModelSpec, given: str | None = None) -> tuple[str, str]:
    """The dtype SGLang 0.5.23 keeps a hybrid's SSM / recurrent state in, and why: --mamba-ssm-dtype
    (``given``; it sets ``SGLANG_MAMBA_SSM_DTYPE``), else the config's ``mamba_ssm_dtype`` where
    SGLang reads it, else float32."""
    if given is not None:
        return given, "--mamba-ssm-dtype"
    if SGLANG_STATE.get(spec.architecture or "", False) and spec.recurrent.ssm_dtype:
        return spec.recurrent.ssm_dtype, "the config's mamba_ssm_dtype"
    return "float32", "SGLang's default"


def _sglang_state(spec: ModelSpec, engine: Engine, whole, stages, given: str | None):
    """SGLang 0.5.23's MambaPool slot (srt/configs/mamba_utils.py): a recurrent layer keeps its conv
    inputs' last conv_kernel - 1 (in bf16, ``SGLANG_MAMBA_CONV_DTYPE``) and its state
    (``sglang_state_dtype``), heads split across the attention tp ranks as the plan splits them."""
    name = spec.architecture
    if name not in SGLANG_STATE:
        unknown = f"how it holds the state of {name or 'this architecture'} is not modelled"
        why = _SGLANG_STATE_REFUSED.get(name or "", unknown)
        raise OptionError(f"--engine {engine.name}: {why} ({spec.recurrent.kind} state)")
    dtype, source = sglang_state_dtype(spec, given)

    def slot(row: Row) -> Row:
        if row.growth is not Growth.STATE:
            return row
        values = math.prod(f.size for f in row.factors)
        if row.name == "conv state":
            channels, kernel = row.factors
            width = Factor(kernel.size - 1, "conv_kernel - 1")
            return replace(row, factors=(channels, width), bytes=channels.size * width.size * 2)
        return replace(row, name=f"{row.name} ({dtype})", bytes=values * STATE_DTYPES[dtype])

    def slots(groups):
        return tuple(replace(g, rows=tuple(map(slot, g.rows))) for g in groups)

    engine = replace(engine, rules=(*engine.rules, (
        f"recurrent layers: a slot per request in a pool of its own (MambaPool): the conv state's last "
        f"conv_kernel - 1 inputs in bf16 (SGLANG_MAMBA_CONV_DTYPE) and the state in {dtype} ({source}; "
        "--mamba-ssm-dtype overrides), heads split across the attention tp ranks "
        "(srt/configs/mamba_utils.py)")))
    return engine, slots(whole), tuple(slots(stage) for stage in stages)


def _check_vllm_windows(spec: ModelSpec, par: Parallel) -> None:
    counts = spec.layer_counts
    if par.dcp > 1 and (counts[LayerKind.SLIDING] or counts[LayerKind.CHUNKED]):
        raise OptionError(f"--dcp {par.dcp}: vLLM does not run sliding or chunked layers with decode "
                          "context parallelism (v1/kv_cache_interface.py: \"DCP not support sliding "
                          "window\")")


def _hybrid_padding(spec: ModelSpec, mtp: int, par: Parallel, whole, stage_groups):
    """vLLM's hybrid allocator (v1/core/kv_cache_planning.py ``_get_kv_cache_groups_uniform_page_size``)
    deals each kind's layers into KV-cache groups of one size -- the fewest layers of any kind, or
    the most when that is under 1.5 x the fewest -- layer j of a kind going to group j mod its number
    of groups. Every group's block ids share one pool, and on each GPU a block is as wide as the
    group with most layers there, so a kind whose groups are thinner holds padding layers (Gemma-3-27B:
    52 sliding layers in 6 groups of 10). The padding, per kind, joins ``whole`` and each stage;
    with it come the groups' widths per stage (a model of one kind: one group of all its layers)."""
    kinds = [*spec.layer_kinds, *[LayerKind.FULL] * mtp]  # MTP layers: full, on the last stage
    layers: dict[LayerKind, list[int]] = {}
    for i, kind in enumerate(kinds):
        # a hybrid layer is an attention layer and a recurrent one to vLLM (``_vllm_state``)
        for k in (kind, LayerKind.RECURRENT) if kind is LayerKind.HYBRID else (kind,):
            if k is not LayerKind.SHARED and k not in NO_CACHE_KINDS:
                layers.setdefault(k, []).append(i)
    fewest, most = min(map(len, layers.values())), max(map(len, layers.values()))
    size = most if most < fewest * 1.5 else fewest
    groups = {k: [idx[i::ceil_div(len(idx), size)] for i in range(ceil_div(len(idx), size))]
              for k, idx in layers.items()}
    ranges = [range(r.start, r.stop) for r in stages(spec.num_layers // spec.sublayers, par.pp)]
    ranges[-1] = range(ranges[-1].start, len(kinds))
    widths = tuple(_width(groups, span) for span in ranges)
    if len(layers) < 2:  # one group of every layer: nothing to pad
        return whole, stage_groups, widths

    def padded(base: tuple[Group, ...], span: range, width: int) -> tuple[Group, ...]:
        extra = []
        for g in base:
            pad = len(groups[g.kind]) * width - sum(i in span for i in layers[g.kind])
            if pad:
                rows = tuple(replace(r, name=f"{r.name} (padding beside {g.kind})") for r in g.rows)
                extra.append(Group(packing.PADDING, pad, rows))
        return base + tuple(extra)

    per_stage = tuple(padded(sg, r, w) for sg, r, w in zip(stage_groups, ranges, widths, strict=True))
    return padded(whole, range(len(kinds)), _width(groups, range(len(kinds)))), per_stage, widths


def _width(groups: dict, span: range) -> int:
    """Layers of the widest KV-cache group among the layers in ``span``."""
    return max(sum(i in span for i in g) for gs in groups.values() for g in gs)


def _packed_curve(spec: ModelSpec, fmt: Format, engine: Engine, par: Parallel,
                  block_size: int | None) -> Curve:
    """vLLM's DeepSeek-V4: its specs packed into shared blocks (``packing.py``), per pipeline stage;
    every part is replicated across TP ranks (one K = V head, ``max_tp_shards=1``)."""
    packing.check(spec.attention, fmt.name, block_size)
    par.check(spec)
    kinds = spec.layer_kinds
    packed = [_packed(spec, kinds[r.start : r.stop]) for r in stages(spec.num_layers, par.pp)]
    return Curve(engine, par, _packed(spec, kinds)[0], tuple(g for g, _ in packed),
                 block_bytes=tuple(b for _, b in packed))


def _packed(spec: ModelSpec, kinds: tuple[LayerKind, ...]) -> tuple[tuple[Group, ...], int]:
    """Each group's specs as rows, bytes per token or entry from the padded page, and the block's
    bytes beyond the group's own pages as a padding row per token of the group's blocks; and the
    bytes of one block id."""
    groups, block_bytes = packing.groups(spec.attention, kinds, spec.sliding_window)
    layers: Counter[tuple[LayerKind | str, Row]] = Counter()  # a spec split across groups: one row
    for g in groups:
        state = g.window is not None and g.block != packing.SWA_BLOCK
        window = Growth.STATE_WINDOW if state else Growth.WINDOW
        for s, n in g.layers.items():
            growth = window if s.window else Growth.COMPRESSED
            row = Row(s.name, s.factors, _per_row(s.page_bytes, s.rows), growth, s.window or s.rate, s.block)
            layers[s.kind, row] += n
        pad = block_bytes - g.page_bytes
        if pad:
            first = next(iter(g.layers))
            name = f"block padding beside {sum(g.layers.values())} {first.name} pages"
            growth = window if g.window else Growth.EVERY
            row = Row(name, (), _per_row(pad, g.block), growth, g.window, g.block)
            layers[packing.PADDING, row] += 1
    return tuple(Group(kind, n, (row,)) for (kind, row), n in layers.items()), block_bytes


def _per_row(page_bytes: int, rows: int) -> int:
    if page_bytes % rows:
        raise OptionError(f"a vLLM page of {page_bytes:,} B over {rows} rows is not whole bytes per row: "
                          "not modelled")
    return page_bytes // rows


def _check_compressed(spec: ModelSpec, options: Options) -> None:
    """What kvcalc does not model for DeepSeek-V4: its MTP layer's cache, and DCP."""
    if options.mtp and spec.mtp_layers:
        raise OptionError(f"--mtp: how {spec.name}'s MTP layer caches (DeepSeek-V4) is not modelled")
    if options.parallel.dcp > 1:
        raise OptionError(f"--dcp {options.parallel.dcp}: how DeepSeek-V4's compressed entries are split "
                          "across DCP ranks is not modelled")


def _check_equal_pages(engine: Engine, groups: tuple[Group, ...]) -> None:
    """vLLM resizes or pads pages of different byte sizes to one size; kvcalc refuses to guess."""
    sizes = {g.kind: _page_bytes(g, engine) // engine.page_tokens for g in groups}
    if len(set(sizes.values())) > 1:
        shown = ", ".join(f"{kind} {size:,} B" for kind, size in sizes.items())
        raise OptionError(f"--engine {engine.name}: its layers' pages differ in size per token ({shown}); "
                          "how vLLM unifies them (kv_cache_planning.py) is not modelled")


def _groups(layers: tuple[LayerPlan, ...], fmt: Format, engine: Engine, tp: int, counts) -> tuple[Group, ...]:
    """The plan's layers as one GPU of ``tp`` holds them, ``counts`` giving how many of each kind."""
    return tuple(
        Group(layer.kind, counts[layer.kind], tuple(
            _row(part, part.on_rank(tp), fmt, engine) for part in layer.parts
        ))
        for layer in layers if counts[layer.kind]
    )


def _row(part: PartPlan, factors: tuple[Factor, ...], fmt: Format, engine: Engine) -> Row:
    size = _row_bytes(fmt, engine, part, math.prod(f.size for f in factors))
    return Row(part.name, factors, size, part.growth, part.span)


def _bytes(terms: tuple[Term, ...], engine: Engine, tokens: int, seqs: int) -> int:
    return sum(size * _cells(engine, growth, span, tokens, seqs, page) for growth, span, page, size in terms)


def _admission_bytes(terms: tuple[Term, ...], engine: Engine, tokens: int, seqs: int, in_flight: int) -> int:
    return sum(size * admission_cells(engine, growth, span, page, tokens, in_flight)
               for growth, span, page, size in terms) * seqs


def admission_cells(engine: Engine, growth: Growth, span: int | None, page: int | None, tokens: int,
                     in_flight: int) -> int:
    """Rows vLLM reserves in a layer to admit one sequence of ``tokens`` (its max_model_len), with
    ``in_flight`` tokens scheduled but not settled (v1/kv_cache_interface.py
    ``max_admission_blocks_per_request`` and ``max_memory_usage_bytes``): every page of the sequence
    for full attention and compressed entries; for a sliding window the pages of the last
    window - 1 + in_flight tokens (at most the sequence) plus one, as a window may start mid-page;
    for a chunk the pages of chunk + in_flight tokens."""
    page = page or engine.page_tokens
    if growth is Growth.COMPRESSED:
        return ceil_div(tokens, page) * (page // span)
    if growth is Growth.EVERY:
        return ceil_div(tokens, page) * page
    if growth is Growth.STATE:  # a recurrent layer's state pages: span is the pages admission reserves
        return span or 1
    if growth in (Growth.WINDOW, Growth.STATE_WINDOW):
        return (ceil_div(min(span - 1 + in_flight, tokens), page) + 1) * page
    if growth is Growth.CHUNK:
        return ceil_div(min(span + in_flight, tokens), page) * page
    raise AssertionError(f"vLLM reserves no rows that grow as {growth}")


def _materialise(groups, engine: Engine, tokens: int, seqs: int) -> tuple[Part, ...]:
    return tuple(
        Part(r.name, g.kind, r.growth, r.span, g.layers, r.factors, r.bytes,
             _cells(engine, r.growth, r.span, tokens, seqs, r.page), r.page)
        for g in groups
        for r in g.rows
    )


def mha_equivalent(spec: ModelSpec, options: Options) -> Footprint:
    """The same heads without sharing: every query head with its own K and V.

    For MLA that is the decompressed layout; for GQA/MQA, ``num_kv_heads = num_heads``. Engine-neutral
    (exact tokens, no pages), in the same storage format -- except that ``fp8_ds_mla`` (or
    ``nvfp4_ds_mla``: plain nvfp4), which packs
    only the latent, becomes plain fp8. Parallelism is kept, so per-GPU figures compare too.
    """
    fmt = get_format(options.kv_dtype)
    kv_dtype = fmt.plain if isinstance(fmt, PackedMlaFormat) else options.kv_dtype
    spec = spec.replace(default_engine=None)  # engine-neutral, whatever engine the spec is for
    neutral = replace(options, kv_dtype=kv_dtype, engine=None, block_size=None, max_num_batched_tokens=None)
    if isinstance(spec.attention, MlaAttention):
        return footprint(spec, replace(neutral, layout=Layout.DECOMPRESSED))
    if isinstance(spec.attention, CompressedAttention):  # every head its own K and V, nothing compressed
        attn = spec.attention
        kinds = tuple(k if k is LayerKind.SLIDING else LayerKind.FULL for k in spec.layer_kinds)
        sliding = spec.sliding_window if LayerKind.SLIDING in kinds else None
        mha = StandardAttention(num_heads=attn.num_heads, num_kv_heads=attn.num_heads, head_dim=attn.head_dim)
        return footprint(spec.replace(attention=mha, layer_types=kinds, layer_pattern=None,
                                      sliding_window=sliding), neutral)
    mha = spec.replace(attention=_mha(spec.attention),
                       layer_attention={kind: _mha(a) for kind, a in spec.layer_attention.items()})
    return footprint(mha, neutral)


def _mha(attn: Attention) -> Attention:
    return replace(attn, num_kv_heads=attn.num_heads)


def _check_dsa_parallel(engine: Engine, par: Parallel) -> None:
    """Decode context parallelism over a DSA indexer is not modelled for the engines (SGLang keeps
    the indexer keys whole on every DCP rank)."""
    if par.dcp > 1 and engine.dsa_page is not None:
        raise OptionError(f"--dcp {par.dcp}: how {engine.name} splits a DSA model's indexer keys "
                          "across DCP ranks is not modelled")


def check_lengths(seq_len: int, batch: int, **more: int) -> None:
    """Tokens and sequences a curve is evaluated at: whole numbers, none negative (a bool or a
    float is refused, not counted)."""
    for name, value in (("seq_len", seq_len), ("batch", batch), *more.items()):
        if type(value) is not int or value < 0:
            raise OptionError(f"{name}: {value!r} must be a whole number of "
                              f"{'sequences' if name == 'batch' else 'tokens'}, 0 or more")


def _check_options(options: Options) -> None:
    """Every option's type (what the CLI parses; what a Python caller may get wrong) and range."""
    for name, value in (("seq_len", options.seq_len), ("batch", options.batch)):
        if type(value) is not int or value < 1:
            raise OptionError(f"{name}: {value!r} must be a whole number, at least 1")
    for name, value, optional in (("kv_dtype", options.kv_dtype, False), ("engine", options.engine, True),
                                  ("state_dtype", options.state_dtype, True)):
        if not (isinstance(value, str) or (optional and value is None)):
            raise OptionError(f"{name}: {value!r} must be a string" + (" or None" if optional else ""))
    for name, value in (("block_size", options.block_size),
                        ("max_num_batched_tokens", options.max_num_batched_tokens)):
        if value is not None and type(value) is not int:  # its range: where it is used
            raise OptionError(f"{name}: {value!r} must be a whole number or None")
    if options.layout is not None and not isinstance(options.layout, Layout):
        raise OptionError(f"layout: {options.layout!r} must be a Layout (latent or decompressed) or None")
    if type(options.mtp) is not bool:
        raise OptionError(f"mtp: {options.mtp!r} must be True or False")
    if not isinstance(options.parallel, Parallel):
        raise OptionError(f"parallel: {options.parallel!r} must be a Parallel")
    for name, value in options.parallel._options():
        if type(value) is not int:
            raise OptionError(f"{name.removeprefix('--')}: {value!r} must be a whole number")



def _mla_cache(engine: Engine, layout: Layout | None) -> MlaCache:
    if engine.mla_cache is None:
        return MlaCache.DECOMPRESSED if layout == Layout.DECOMPRESSED else MlaCache.LATENT
    if layout is not None:
        raise OptionError(
            f"--layout {layout}: {engine.name} caches MLA {engine.mla_cache}; pick the engine "
            "variant instead (vllm@no-mla, llama.cpp@2024, transformers@5.14, reference@naive)"
        )
    return engine.mla_cache


def _cells(engine: Engine, growth: Growth, span: int | None, tokens: int, seqs: int,
           page: int | None = None) -> int:
    """Rows one GPU holds in a layer for a part growing as ``growth`` over ``span``, for ``seqs``
    sequences of ``tokens``, in pages of ``page`` tokens (None: the engine's). Compressed entries
    fill pages of ``page`` tokens, page / R entries each; compressor state runs unpaged."""
    page = page or engine.page_tokens
    if growth is Growth.STATE:
        return seqs
    if growth is Growth.COMPRESSED:
        return (tokens // span if page == 1 else ceil_div(tokens, page) * (page // span)) * seqs
    if growth is Growth.OPEN_WINDOW:
        return tokens % span * seqs
    if growth is Growth.OPEN_WINDOW_ROOM:
        return min(tokens, span - 1) * seqs
    if growth is Growth.OVERLAP:
        return (span if tokens >= span else 0) * seqs
    pad = engine.context_pad
    full = _round_up(_round_up(tokens, page) * seqs, pad)
    if growth is Growth.EVERY:
        return full
    window = span
    rule = engine.chunk_rule if growth is Growth.CHUNK else engine.window_rule
    if rule is WindowRule.ALL:  # no window kept apart: the layer holds every token
        return full
    if rule is WindowRule.POOL_SHARE:  # SGLang: the SWA pool's share of every token
        return ceil_div(full * SWA_RATIO.numerator, SWA_RATIO.denominator)
    if rule is WindowRule.UBATCH:  # llama.cpp: one SWA cache for all sequences + a ubatch
        return _round_up(min(full, window * seqs + 512), pad)
    if rule is WindowRule.CHUNK_PAGES:
        return chunk_pages(tokens, window, page) * page * seqs
    if rule is WindowRule.PAGE_SPAN and tokens > window:
        first = tokens - window  # the oldest token still inside the window
        return ((tokens - 1) // page - first // page + 1) * page * seqs
    held = min(tokens, window - 1 if rule is WindowRule.WINDOW_MINUS_ONE else window)
    return _round_up(_round_up(held, page) * seqs, pad)


def chunk_pages(tokens: int, chunk: int, page: int) -> int:
    """The most pages of ``page`` tokens that one chunk of a ``tokens``-long sequence spans (chunks
    start at multiples of ``chunk``). Chunk starts repeat modulo the page every page / gcd chunks,
    so at most that many chunks are looked at."""
    whole = tokens // chunk
    most = 0
    for k in range(min(whole, page // math.gcd(chunk, page))):
        start = k * chunk
        most = max(most, (start + chunk - 1) // page - start // page + 1)
    if tokens % chunk:
        start = whole * chunk
        most = max(most, (tokens - 1) // page - start // page + 1)
    return most


def indexer_fp8_bytes(values: int) -> int:
    """DeepSeek's indexer key format: ``values`` fp8 bytes + one fp32 scale per 128 values
    (132 B for index_head_dim 128)."""
    return values + ceil_div(values, INDEXER_SCALE_GROUP) * 4


def _round_up(n: int, multiple: int) -> int:
    return ceil_div(n, multiple) * multiple


def _row_bytes(fmt: Format, engine: Engine, part: PartPlan, values: int) -> int:
    """Bytes of one token's row of this part in one layer; blocks run along the row."""
    if part.storage is Storage.INDEXER and engine.indexer_keys is IndexerKeys.FP8_SCALED:
        return indexer_fp8_bytes(values)
    if part.storage is Storage.FP32:
        return values * 4
    if not isinstance(fmt, PackedMlaFormat):
        return fmt.row_bytes(values)
    return fmt.latent_bytes() if part.name == "latent" else fmt.rope_bytes()


def _check_packed(fmt: PackedMlaFormat, spec: ModelSpec, cache: MlaCache | None) -> None:
    """The packed format fits this model's latent (MLA layers all share one attention)."""
    attn = spec.attention
    if not isinstance(attn, MlaAttention):
        raise OptionError(f"--kv-dtype {fmt.name}: packs an MLA latent, but {spec.name} uses "
                          f"{attn.variant} attention")
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
    if tp > 1 and isinstance(attn, CompressedAttention):
        notes.append(f"one K = V head, its compressed entries and indexer keys replicated on {tp} "
                     f"attention-TP ranks: {tp}× the single copy")
    elif tp > 1 and cache in (MlaCache.LATENT, MlaCache.LATENT_KV):
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
