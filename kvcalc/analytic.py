"""Exact KV-cache footprints: pure integer arithmetic from a spec and options.

Elements cached per token per layer (KV-CACHE-FACTS section 1):

- standard attention: K ``n_kv x d_k`` and V ``n_kv x d_v`` (MHA n_kv = n_h, MQA n_kv = 1);
- MLA, latent layout: latent ``d_c`` plus decoupled rope key ``d_R`` -- no x2, no head count;
- MLA, decompressed layout: K ``n_h x (d_nope + d_R)`` and V ``n_h x d_v``.

A footprint groups layers by kind (full, sliding), so evaluating one costs the same for 4 layers
or 400. Sliding layers hold ``min(seq_len, window)`` tokens; MTP layers, when counted, are full
layers of the same attention.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from kvcalc.errors import OptionError
from kvcalc.formats import Format, PackedMlaFormat, get_format
from kvcalc.spec import LayerKind, MlaAttention, ModelSpec, StandardAttention


class Layout(StrEnum):
    """How an MLA model's cache is laid out. Standard attention always caches K and V ("kv")."""

    LATENT = "latent"
    DECOMPRESSED = "decompressed"


STANDARD_LAYOUT = "kv"


@dataclass(frozen=True)
class Options:
    seq_len: int
    batch: int = 1
    kv_dtype: str = "bf16"
    layout: Layout = Layout.LATENT
    mtp: bool = False


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
    tokens: int
    """Tokens each sequence holds in these layers."""
    batch: int

    @property
    def values(self) -> int:
        return math.prod(f.size for f in self.factors)

    @property
    def bytes_per_token(self) -> int:
        return self.bytes_per_token_layer * self.layers

    @property
    def total_bytes(self) -> int:
        return self.bytes_per_token * self.tokens * self.batch


@dataclass(frozen=True)
class Footprint:
    model: str
    display_name: str
    attention: str
    """MHA, GQA, MQA or MLA."""
    layout: str
    kv_dtype: str
    seq_len: int
    batch: int
    mtp_layers: int
    """MTP layers counted (0 unless ``--mtp``)."""
    sliding_window: int | None
    parts: tuple[Part, ...]

    @property
    def bytes_per_token(self) -> int:
        """Bytes per token of one sequence over all layers, at the full-context rate."""
        return sum(p.bytes_per_token for p in self.parts)

    @property
    def total_bytes(self) -> int:
        """Bytes for ``batch`` sequences of ``seq_len`` tokens (sliding layers capped)."""
        return sum(p.total_bytes for p in self.parts)

    @property
    def per_gpu_bytes(self) -> int:
        """Bytes on one GPU; the whole cache until parallelism is modelled."""
        return self.total_bytes


def footprint(spec: ModelSpec, options: Options) -> Footprint:
    """The exact KV-cache footprint of ``spec`` under ``options``."""
    _check_options(options)
    fmt = get_format(options.kv_dtype)
    attn = spec.attention
    layout = _layout_of(attn, options.layout)
    widths = _widths(attn, layout)
    mtp = spec.mtp_layers if options.mtp else 0
    parts = []
    for kind, layers, tokens in _layer_groups(spec, options.seq_len, mtp):
        for name, factors in widths:
            row = _row_bytes(fmt, name, math.prod(f.size for f in factors), spec, layout)
            parts.append(Part(name, kind, layers, factors, row, tokens, options.batch))
    return Footprint(
        model=spec.name,
        display_name=spec.display_name,
        attention=attn.variant,
        layout=layout,
        kv_dtype=fmt.name,
        seq_len=options.seq_len,
        batch=options.batch,
        mtp_layers=mtp,
        sliding_window=spec.sliding_window,
        parts=tuple(parts),
    )


def mha_equivalent(spec: ModelSpec, options: Options) -> Footprint:
    """The same heads without sharing: every query head with its own K and V.

    For MLA that is the decompressed layout; for GQA/MQA, ``num_kv_heads = num_heads``. The storage
    format is kept, except that ``fp8_ds_mla`` (which packs only the latent) becomes plain fp8.
    """
    if isinstance(get_format(options.kv_dtype), PackedMlaFormat):
        options = _replace(options, kv_dtype="fp8")
    attn = spec.attention
    if isinstance(attn, MlaAttention):
        return footprint(spec, _replace(options, layout=Layout.DECOMPRESSED))
    mha = attn.model_copy(update={"num_kv_heads": attn.num_heads})
    return footprint(spec.model_copy(update={"attention": mha}), options)


def _replace(options: Options, **changes) -> Options:
    return Options(**{**options.__dict__, **changes})


def _check_options(options: Options) -> None:
    if options.seq_len < 1:
        raise OptionError(f"--seq: {options.seq_len} must be at least 1 token")
    if options.batch < 1:
        raise OptionError(f"--batch: {options.batch} must be at least 1")


def _layout_of(attn: StandardAttention | MlaAttention, layout: Layout) -> str:
    return str(layout) if isinstance(attn, MlaAttention) else STANDARD_LAYOUT


def _widths(attn: StandardAttention | MlaAttention, layout: str) -> list[tuple[str, tuple]]:
    """Each cached tensor's name and its width per token and layer, as factors."""
    if isinstance(attn, StandardAttention):
        heads = Factor(attn.num_kv_heads, "KV heads")
        return [
            ("K", (heads, Factor(attn.head_dim, "head_dim"))),
            ("V", (heads, Factor(attn.value_dim, "v_head_dim" if attn.v_head_dim else "head_dim"))),
        ]
    if layout == Layout.LATENT:
        return [
            ("latent", (Factor(attn.kv_lora_rank, "kv_lora_rank"),)),
            ("rope key", (Factor(attn.qk_rope_head_dim, "qk_rope_head_dim"),)),
        ]
    heads = Factor(attn.num_heads, "heads")
    qk_dim = attn.qk_nope_head_dim + attn.qk_rope_head_dim
    return [
        ("K", (heads, Factor(qk_dim, "qk_nope_head_dim + qk_rope_head_dim"))),
        ("V", (heads, Factor(attn.v_head_dim, "v_head_dim"))),
    ]


def _layer_groups(spec: ModelSpec, seq_len: int, mtp: int) -> list[tuple[LayerKind, int, int]]:
    """(kind, layers, tokens held) for each kind of layer present."""
    counts = spec.layer_counts
    groups = []
    full = counts[LayerKind.FULL] + mtp
    if full:
        groups.append((LayerKind.FULL, full, seq_len))
    if counts[LayerKind.SLIDING]:
        window = spec.sliding_window or seq_len
        groups.append((LayerKind.SLIDING, counts[LayerKind.SLIDING], min(seq_len, window)))
    return groups


def _row_bytes(fmt: Format, name: str, values: int, spec: ModelSpec, layout: str) -> int:
    """Bytes of one token's row of this part in one layer; blocks run along the row."""
    if not isinstance(fmt, PackedMlaFormat):
        return fmt.row_bytes(values)
    _check_packed(fmt, spec, layout)
    return fmt.latent_bytes() if name == "latent" else fmt.rope_bytes()


def _check_packed(fmt: PackedMlaFormat, spec: ModelSpec, layout: str) -> None:
    attn = spec.attention
    if not isinstance(attn, MlaAttention):
        raise OptionError(
            f"--kv-dtype {fmt.name}: packs an MLA latent, but {spec.name} uses "
            f"{attn.variant} attention"
        )
    if layout != Layout.LATENT:
        raise OptionError(f"--kv-dtype {fmt.name}: exists only for the latent layout, not {layout}")
    shape = (attn.kv_lora_rank, attn.qk_rope_head_dim)
    if shape != (fmt.kv_lora_rank, fmt.qk_rope_head_dim):
        raise OptionError(
            f"--kv-dtype {fmt.name}: defined for kv_lora_rank {fmt.kv_lora_rank} + "
            f"qk_rope_head_dim {fmt.qk_rope_head_dim}; {spec.name} has {shape[0]} + {shape[1]}"
        )


@dataclass(frozen=True)
class Comparison:
    """A footprint beside its MHA-equivalent: one row of ``kvcalc compare``."""

    footprint: Footprint
    mha_equivalent: Footprint


def compare(spec: ModelSpec, options: Options) -> Comparison:
    return Comparison(footprint(spec, options), mha_equivalent(spec, options))
