"""vLLM's DeepSeek-V4 cache (vLLM 0.33, FlashMLA on Hopper): its page specs and how its hybrid
allocator packs them into blocks shared by every layer. Facts read from vLLM's source:

- The KV dtype resolves to ``fp8_ds_mla``: one 584-B entry per token or compressed entry (448 fp8
  NoPE + 64 bf16 RoPE values + 7 UE8M0 scales + 1 pad; models/deepseek_v4/attention.py).
- Specs per layer (page bytes padded to a multiple of 576, kv_cache_interface.py
  ``_apply_alignment_padding``): every layer's sliding-window K = V (``SlidingWindowMLASpec``,
  blocks of 64 tokens, v1/attention/backends/mla/sparse_swa.py); on compressed layers the entries
  (``MLAAttentionSpec``, blocks of 256 tokens holding 256 / R entries) and the compressor's state
  (fp32 kv and score rows of 2 x series x head_dim, a sliding window of series x R tokens in
  blocks of 4 (R = 4) or 8 (R = 128), models/deepseek_v4/compressor.py); on CSA layers the
  indexer's key (132 B per entry) and its compressor's state too. vLLM runs only R = 4 and 128,
  head_dim 512 with 64 RoPE values, and an indexer key of 128.
- Packing (v1/core/kv_cache_planning.py ``_get_packed_kv_cache_groups``; the V4 indexer needs a
  block-outermost layout): specs with the same block size and window form a bucket; a bucket whose
  page sizes come in equal numbers repeats a pattern, and the repeats per group are chosen by
  ``_approximate_gcd`` (least padding, at least the largest such pattern); buckets are split into
  that many repeats per group. Every block id holds one page of each layer of a group side by
  side: a block costs the widest group's bytes, ``bytes_per_block``, in every group.
- A request holds, per group, its pages: every page of the sequence for the entries (256 tokens
  each), the pages spanning the window for the sliding ones (single_type_kv_cache_manager.py).

``stage_rows`` gives, per group, a row for each spec (bytes per token or entry = padded page /
rows per page) and one for the block's padding beyond the group's own pages.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from kvcalc.errors import OptionError
from kvcalc.parallel import ceil_div
from kvcalc.plan import INDEXER_KEY, Factor
from kvcalc.spec import CompressedAttention, LayerKind

ENTRY_BYTES = 584
"""fp8_ds_mla's DeepSeek-V4 entry: 448 fp8 NoPE + 64 bf16 RoPE values + 7 scales + 1 pad."""
INDEXER_ENTRY_BYTES = 132
ALIGNMENT = 576
MAIN_BLOCK = 256
SWA_BLOCK = 64
STATE_BLOCK = {4: 4, 128: 8}
"""Compressor state blocks by compress rate (compressor.py: sized to share pages with the KV)."""
PADDING = "block padding"


@dataclass(frozen=True)
class Spec:
    """One vLLM KV-cache spec of one kind of layer."""

    name: str
    kind: LayerKind
    factors: tuple[Factor, ...]
    page_bytes: int
    """The page, padded to a multiple of 576."""
    block: int
    """Tokens per block."""
    window: int | None
    """A sliding window (None: every token)."""
    rate: int = 1
    """Tokens per row: R for compressed entries."""

    @property
    def rows(self) -> int:
        """Rows (tokens, or entries) per page."""
        return self.block // self.rate

    @property
    def bucket(self) -> tuple[int, int | None]:
        return self.block, self.window


def check(attn: CompressedAttention, kv_dtype: str, block_size: int | None) -> None:
    """What vLLM 0.33 runs of DeepSeek-V4, as kvcalc models it."""
    if kv_dtype != "fp8_ds_mla":
        raise OptionError(f"--kv-dtype {kv_dtype}: vLLM's FlashMLA (Hopper) stores DeepSeek-V4 as "
                          "fp8_ds_mla, 584-B entries (models/deepseek_v4/attention.py); its FlashInfer rows "
                          "(Blackwell) are not modelled: --kv-dtype fp8_ds_mla")
    shape = (attn.head_dim, attn.qk_rope_head_dim, attn.index_head_dim, attn.csa_rate, attn.hca_rate)
    if shape != (512, 64, 128, 4, 128):
        raise OptionError("vLLM runs DeepSeek-V4 with head_dim 512 (64 RoPE), index_head_dim 128 and "
                          f"compress rates 4 and 128 only; this model has {shape[0]} ({shape[1]}), "
                          f"{shape[2]}, {shape[3]} and {shape[4]}")
    if block_size not in (None, MAIN_BLOCK):
        raise OptionError(f"--block-size {block_size}: vLLM runs DeepSeek-V4 with blocks of {MAIN_BLOCK} "
                          "tokens (its FlashMLA and indexer kernels take no other)")


def specs(attn: CompressedAttention, kind: LayerKind, window: int) -> tuple[Spec, ...]:
    """The specs one layer of ``kind`` registers (layers that only slide: the window alone)."""
    d, index = attn.head_dim, attn.index_head_dim
    head = Factor(d, "head_dim")
    result = [Spec("K = V", kind, (head,), _padded(SWA_BLOCK * ENTRY_BYTES), SWA_BLOCK, window)]
    rate = attn.rate(kind)
    if rate is None:
        return tuple(result)
    entries = MAIN_BLOCK // rate
    page = _padded(entries * ENTRY_BYTES)
    result.append(Spec("compressed K = V", kind, (head,), page, MAIN_BLOCK, None, rate))
    result.append(_state("compressor state", kind, head, rate))
    if kind is LayerKind.COMPRESSED_SPARSE:
        result.append(Spec(INDEXER_KEY, kind, (Factor(index, "index_head_dim"),),
                           _padded(entries * INDEXER_ENTRY_BYTES), MAIN_BLOCK, None, rate))
        result.append(_state("indexer compressor state", kind, Factor(index, "index_head_dim"), rate))
    return tuple(result)


def _state(name: str, kind: LayerKind, width: Factor, rate: int) -> Spec:
    """fp32 kv and score rows of every token in a window of series x R (CSA: two series)."""
    series = 2 if rate == 4 else 1
    factors = (Factor(2, "kv and score"), Factor(series, "series"), width)
    block = STATE_BLOCK[rate]
    return Spec(name, kind, factors, _padded(block * 2 * series * width.size * 4), block, series * rate)


def _padded(size: int) -> int:
    return ceil_div(size, ALIGNMENT) * ALIGNMENT


@dataclass(frozen=True)
class Group:
    """One KV-cache group: layers of one bucket, each with a page in every block id."""

    layers: Counter[Spec]
    block: int
    window: int | None

    @property
    def page_bytes(self) -> int:
        return sum(spec.page_bytes * n for spec, n in self.layers.items())


def groups(attn: CompressedAttention, kinds: tuple[LayerKind, ...],
           window: int) -> tuple[tuple[Group, ...], int]:
    """The groups vLLM forms from the layers of one stage (``kinds``, in layer order) and the bytes
    of one block id: the widest group's pages."""
    per_kind = {kind: specs(attn, kind, window) for kind in set(kinds)}
    buckets: dict[tuple[int, int | None], dict[int, list[Spec]]] = {}
    for kind in kinds:  # vLLM registers layer by layer; a bucket lists each page size's layers in order
        for spec in per_kind[kind]:
            buckets.setdefault(spec.bucket, {}).setdefault(spec.page_bytes, []).append(spec)
    balanced = {key: len({len(layers) for layers in pages.values()}) == 1 for key, pages in buckets.items()}
    floor = max((len(next(iter(pages.values()))) for key, pages in buckets.items()
                 if balanced[key] and len(pages) > 1), default=0)
    repeats = None
    if floor:
        patterns = [max(map(len, pages.values())) for key, pages in buckets.items() if balanced[key]]
        repeats = _approximate_gcd(patterns, floor)
    elif any(key[1] is not None and sum(map(len, pages.values())) > 1 for key, pages in buckets.items()):
        raise OptionError("vLLM would split DeepSeek-V4's sliding buckets by how many pages fit a block (a "
                          "model with no CSA layer sets no pattern to follow): not modelled")
    result = []
    for key, pages in buckets.items():
        count = ceil_div(max(map(len, pages.values())), repeats) if balanced[key] and repeats else 1
        for i in range(count):  # pattern repeat j (one layer of each page size) goes to group j mod count
            dealt = [spec for layers in pages.values() for spec in layers[i::count]]
            result.append(Group(Counter(dealt), *key))
    return tuple(result), max(g.page_bytes for g in result)


def _approximate_gcd(values: list[int], lower_bound: int) -> int:
    """vLLM's choice of repeats per group: the d from ``lower_bound`` to max(values) that least pads
    the values up to multiples of d, the larger on ties."""
    low, high = max(1, lower_bound), max(values)
    if low > high:
        return low
    return min(range(low, high + 1), key=lambda d: (sum((d - x % d) % d for x in values), -d))
