"""A footprint written out as formulas with the model's own numbers, e.g.

    (512 + 64) × 2 B × 61 layers = 70,272 B/token

Pure text: the CLI decides where it goes.
"""

from __future__ import annotations

from kvcalc.analytic import (
    COMPRESSED_LAYOUT,
    INDEXER_SCALE_GROUP,
    Footprint,
    Part,
    admission_cells,
    indexer_fp8_bytes,
)
from kvcalc.engines import COMPRESSED_RULES, CompressedCache, Engine, WindowRule
from kvcalc.formats import PackedMlaFormat, StorageFormat, get_format
from kvcalc.packing import PADDING
from kvcalc.parallel import ceil_div
from kvcalc.plan import INDEXER_KEY, Growth
from kvcalc.spec import LayerKind, ModelSpec
from kvcalc.units import humanize_bytes, humanize_saving, humanize_tokens


def explain(spec: ModelSpec, fp: Footprint, mha: Footprint, *, with_totals: bool) -> list[str]:
    """Lines that derive ``fp`` from ``spec``; ``with_totals`` adds the sequence/batch step."""
    fmt = get_format(fp.kv_dtype)
    lines = [f"{fp.display_name} ({fp.model}): {_headline(fp)}"]
    if spec.source:
        lines.append(f"source: {spec.source}")
    if spec.assumptions:
        lines += ["", "Assumed where the config is silent:"]
        lines += [f"  - {a}" for a in spec.assumptions]
    groups = _groups(fp)
    lines += ["", "Cached per token and layer:"]
    lines += _width_lines(fp.parts)
    packed = fp.engine.compressed is CompressedCache.VLLM and fp.layout == COMPRESSED_LAYOUT
    rule = "fp8_ds_mla (vLLM's DeepSeek-V4 pages)" if packed else _format_rule(fmt)
    lines += ["", f"Bytes per token, {rule}:"]
    for parts in groups.values():
        lines += _group_lines(fp, fmt, parts, labelled=len(groups) > 1)
    if len(groups) > 1:
        lines.append(f"  all layers: {fp.bytes_per_token:,} B/token (full-context rate)")
    if shared := shared_layers_text(spec):
        lines.append(f"  {shared}")
    if fp.engine.name != "ideal":
        mla = (fp.engine.mla_rule,) if fp.attention.startswith("MLA") else ()
        rules = fp.engine.rules
        if fp.engine.compressed and fp.layout == COMPRESSED_LAYOUT:
            mla = (COMPRESSED_RULES[fp.engine.compressed],)
            rules = () if packed else rules  # its own pages: the profile's others do not apply
        lines += ["", f"Engine {fp.engine.name}, after {fp.engine.source}:"]
        lines += [f"  - {rule}" for rule in (*mla, *rules)]
    if with_totals:
        lines += ["", *_total_lines(fp, groups)]
    if not fp.parallel.is_single_gpu:
        lines += ["", *_gpu_lines(fp, with_totals)]
    lines += ["", _mha_line(fp, mha)]
    return lines


def shared_layers_text(spec: ModelSpec) -> str | None:
    """The layers that hold no cache of their own, in words (None when there are none)."""
    shared = spec.layer_counts[LayerKind.SHARED]
    if not shared:
        return None
    return (f"shared layers: {shared} of {spec.num_layers} reuse an earlier layer's cache "
            "(num_kv_shared_layers): 0 B of their own")


def _headline(fp: Footprint) -> str:
    layout = "" if fp.layout == "kv" else f", {fp.layout} layout"
    mtp = f", counting {fp.mtp_layers} MTP layer{'s' * (fp.mtp_layers > 1)}" if fp.mtp_layers else ""
    engine = "" if fp.engine.name == "ideal" else f", {fp.engine.name}"
    return f"{fp.attention}{layout}, {fp.kv_dtype}{mtp}{engine}"


Key = tuple[LayerKind, Growth, int | None]


def _groups(fp: Footprint) -> dict[Key, list[Part]]:
    """The parts by layer kind and growth law: rows that grow alike are explained together."""
    groups: dict[Key, list[Part]] = {}
    for part in fp.parts:
        groups.setdefault((part.layer_kind, part.growth, part.span), []).append(part)
    return groups


def _width_lines(all_parts: tuple[Part, ...]) -> list[str]:
    """Each part's width, once for all layers when every kind caches the same shape."""
    groups: dict[LayerKind, list[Part]] = {}
    for part in all_parts:
        if part.factors:  # not a row of vLLM's block padding
            groups.setdefault(part.layer_kind, []).append(part)
    shapes = {kind: [(p.name, p.factors) for p in parts] for kind, parts in groups.items()}
    first = next(iter(groups.values()))
    if len({tuple(s) for s in shapes.values()}) == 1:
        return [f"  {p.name} = {_factors(p)} = {p.values:,} values" for p in first]
    return [f"  {p.name} ({kind} layers) = {_factors(p)} = {p.values:,} values"
            for kind, parts in groups.items() for p in parts]


def _factors(part: Part) -> str:
    return " × ".join(f"{f.size} ({f.label})" for f in part.factors)


def _format_rule(fmt: StorageFormat | PackedMlaFormat) -> str:
    if isinstance(fmt, PackedMlaFormat):
        return f"{fmt.name} ({fmt.description})"
    if fmt.is_blocked:
        return f"{fmt.name} (blocks of {fmt.block_values} values = {fmt.block_bytes} B along each row)"
    return f"{fmt.name} ({fmt.block_bytes} B per value)"


def _group_lines(fp, fmt, parts: list[Part], *, labelled: bool) -> list[str]:
    first = parts[0]
    layers = _layers_text(fp, first.layer_kind, first.layers)
    label = f"{_kind_text(first)}: " if labelled else ""
    result = _per_row(parts)
    if isinstance(fmt, StorageFormat) and not fmt.is_blocked and all(_plain(fmt, p) for p in parts):
        return [f"  {label}{_values_expr(parts)} × {fmt.block_bytes} B × {layers} = {result}"]
    rows = [f"  {p.name}: {_row_text(fmt, p)}" for p in parts]
    row_sum = " + ".join(f"{p.bytes_per_token_layer:,}" for p in parts)
    row_sum = f"({row_sum})" if len(parts) > 1 else row_sum
    return rows + [f"  {label}{row_sum} B × {layers} = {result}"]


def _per_row(parts: list[Part]) -> str:
    """A group's bytes per row over its layers, and what a token adds: all of it for tokens, 1/R
    for compressed entries, nothing for compressor state."""
    first = parts[0]
    row = sum(p.bytes_per_token_layer for p in parts) * first.layers
    rate = sum(p.bytes_per_token for p in parts)
    if first.growth is Growth.COMPRESSED:
        exact = "" if row % first.span == 0 else " (rounded up)"
        return f"{row:,} B per entry; per token {row:,} / {first.span} = {rate:,} B/token{exact}"
    if first.growth is Growth.STATE:
        return f"{row:,} B per sequence, whatever its length"
    if first.growth.per_sequence:
        return f"{row:,} B per row of state (bounded: not per token)"
    return f"{rate:,} B/token"


def _plain(fmt: StorageFormat, part: Part) -> bool:
    """Whether the part is stored in the cache's format (a DSA indexer key may not be)."""
    return part.bytes_per_token_layer == fmt.row_bytes(part.values)


def _values_expr(parts: list[Part]) -> str:
    exprs = [" × ".join(str(f.size) for f in p.factors) for p in parts]
    if len(exprs) > 1 and len(set(exprs)) == 1:
        return f"{len(exprs)} × {exprs[0]}"
    return exprs[0] if len(exprs) == 1 else "(" + " + ".join(exprs) + ")"


_WIDTHS = {2: "bf16", 4: "fp32"}
"""Bytes per value of the state an engine keeps in its own dtype, whatever the cache dtype."""


def _row_text(fmt: StorageFormat | PackedMlaFormat, part: Part) -> str:
    if part.page is not None:
        return _page_text(part)
    if not part.factors:  # a page sized by the engine (vLLM's recurrent state page): its rule says how
        return f"{part.bytes_per_token_layer:,} B"
    if part.name == INDEXER_KEY and part.bytes_per_token_layer == indexer_fp8_bytes(part.values):
        scales = ceil_div(part.values, INDEXER_SCALE_GROUP)
        return (f"{part.values} fp8 values × 1 B + {scales} fp32 scale{'s' * (scales > 1)} × 4 B "
                f"= {part.bytes_per_token_layer:,} B (DeepSeek's indexer format, whatever the cache dtype)")
    if part.bytes_per_token_layer == 4 * part.values and fmt.name != "fp32" and not _plain(fmt, part):
        return (f"{part.values:,} fp32 values × 4 B = {part.bytes_per_token_layer:,} B "
                "(fp32 whatever the cache dtype)")
    size, rest = divmod(part.bytes_per_token_layer, part.values or 1)
    if not rest and size in _WIDTHS and not isinstance(fmt, PackedMlaFormat) and not _plain(fmt, part):
        return (f"{part.values:,} {_WIDTHS[size]} values × {size} B = {part.bytes_per_token_layer:,} B "
                f"({_WIDTHS[size]} whatever the cache dtype)")
    if isinstance(fmt, PackedMlaFormat):
        if part.name == "latent":
            scales = fmt.kv_lora_rank // fmt.scale_group
            bits = fmt.latent_value_bits
            value = f"{bits // 8} B" if bits % 8 == 0 else f"{bits} bits"
            return (
                f"{part.values} × {value} + {scales} scales × "
                f"{fmt.scale_bytes} B = {part.bytes_per_token_layer:,} B"
            )
        return f"{part.values} × {fmt.rope_value_bytes} B = {part.bytes_per_token_layer:,} B"
    if not fmt.is_blocked:
        return f"{part.values:,} values × {fmt.block_bytes} B = {part.bytes_per_token_layer:,} B"
    blocks = fmt.blocks(part.values)
    return (
        f"{part.values:,} values = {blocks} {fmt.name} blocks × {fmt.block_bytes} B"
        f" = {part.bytes_per_token_layer:,} B"
    )


_SPAN_TEXT = {
    Growth.WINDOW: "window {:,}", Growth.CHUNK: "chunk {:,}", Growth.COMPRESSED: "one entry per {:,} tokens",
    Growth.OPEN_WINDOW: "compressor's open window of {:,}",
    Growth.OPEN_WINDOW_ROOM: "compressor's open window of {:,}",
    Growth.OVERLAP: "compressor's last window of {:,}",
    Growth.STATE_WINDOW: "compressor state of the last {:,} tokens",
}


def _page_text(part: Part) -> str:
    """A row of vLLM's DeepSeek-V4 pages: the padded page over the rows it holds."""
    entries = part.growth is Growth.COMPRESSED
    rows = part.page // part.span if entries else part.page
    unit = "entry" if entries else "token"
    page = part.bytes_per_token_layer * rows
    if not part.factors:
        return (f"{page:,} B of each {part.page}-token block beyond the group's pages = "
                f"{part.bytes_per_token_layer:,} B per token")
    units = unit if rows == 1 else "entries" if entries else "tokens"
    return (f"a {page:,}-B page (padded to a multiple of 576 B) of {rows} {units} "
            f"= {part.bytes_per_token_layer:,} B per {unit}")


def _kind_text(part: Part) -> str:
    """``full layers``, ``sliding layers (window 4,096)``, ``chunked layers (chunk 8,192)``,
    ``compressed_sparse layers (one entry per 4 tokens)``."""
    layers = part.layer_kind if part.layer_kind == PADDING else f"{part.layer_kind} layers"
    if part.growth is Growth.EVERY:
        return layers
    if part.growth is Growth.STATE:
        return f"{layers} (state)"
    return f"{layers} ({_SPAN_TEXT[part.growth].format(part.span)})"


def _layers_text(fp: Footprint, kind: LayerKind, layers: int) -> str:
    text = f"{layers} layer{'s' * (layers != 1)}"
    if kind is LayerKind.FULL and fp.mtp_layers:
        text += f" ({layers - fp.mtp_layers} + {fp.mtp_layers} MTP)"
    return text


def _total_lines(fp: Footprint, groups: dict[Key, list[Part]]) -> list[str]:
    lines = [f"At {humanize_tokens(fp.seq_len)} tokens, batch {fp.batch}:"]
    labelled = len({kind for kind, _, _ in groups}) < len(groups)
    for parts in groups.values():
        first = parts[0]
        row = sum(p.bytes_per_token_layer for p in parts) * first.layers
        group_total = sum(p.total_bytes for p in parts)
        held = _held_text(fp, first, first.cells)
        label = _kind_text(first) if labelled else f"{first.layer_kind} layers"
        unit = ("B/token" if first.growth in (Growth.EVERY, Growth.WINDOW, Growth.CHUNK)
                else "B/sequence" if first.growth is Growth.STATE else "B")
        lines.append(f"  {label}: {row:,} {unit} × {held} = {group_total:,} B")
    lines.append(f"  total: {fp.total_bytes:,} B ({humanize_bytes(fp.total_bytes)})")
    if fp.request_bytes != fp.total_bytes:
        lines += _reservation_lines(fp)
    return lines


def _reservation_lines(fp: Footprint) -> list[str]:
    """vLLM's admission reservation (``request_bytes``), per growth law, in pages of the sequence."""
    seq, engine = fp.seq_len, fp.engine
    lines = ["", f"vLLM reserves, to admit each sequence ({fp.in_flight:,} tokens in flight: "
             "max_num_batched_tokens x the batches it keeps in flight):"]
    laws: dict[tuple, Part] = {}
    for p in fp.parts:
        laws.setdefault((p.growth, p.span, p.page or engine.page_tokens), p)
    for (growth, span, page), part in laws.items():
        pages = admission_cells(engine, growth, span, page, seq, fp.in_flight) // (
            page // span if growth is Growth.COMPRESSED else page)
        if growth is Growth.STATE:
            lines.append(f"  {_kind_text(part)}: {span} state pages per layer (2, and {span - 2} prefill "
                         "checkpoint)")
            continue
        if growth in (Growth.WINDOW, Growth.STATE_WINDOW):
            rule = f"cdiv(min({span:,} - 1 + {fp.in_flight:,}, {seq:,}), {page}) + 1"
        elif growth is Growth.CHUNK:
            rule = f"cdiv(min({span:,} + {fp.in_flight:,}, {seq:,}), {page})"
        else:
            rule = f"cdiv({seq:,}, {page})"
        lines.append(f"  {_kind_text(part)}: {rule} = {pages:,} pages of {page} tokens")
    lines.append(f"  request_bytes: {fp.request_bytes:,} B ({humanize_bytes(fp.request_bytes)}), "
                 f"beside {fp.total_bytes:,} B held")
    return lines


def _held_text(fp: Footprint, part: Part, cells: int) -> str:
    """``cells`` explained: tokens, windows, chunks, pages, padding, entries, state rows."""
    batch = f" × batch {fp.batch}" if fp.batch > 1 else ""
    seq, span = fp.seq_len, part.span
    page = part.page or fp.engine.page_tokens
    if part.growth is Growth.COMPRESSED:
        held = f"floor({seq:,} / {span:,}) = {seq // span:,} entries{batch}"
        if cells == seq // span * fp.batch:
            return held
        pages = f"{ceil_div(seq, page):,} pages of {page} tokens, {page // span} entries each"
        return f"{held} → {cells:,} ({pages})"
    if part.growth is Growth.STATE:
        return f"{fp.batch} sequence{'s' * (fp.batch > 1)}"
    if part.growth is Growth.OPEN_WINDOW:
        return f"({seq:,} mod {span:,}) = {seq % span:,} row{'s' * (seq % span != 1)}{batch}"
    if part.growth is Growth.OPEN_WINDOW_ROOM:
        room = min(seq, span - 1)
        return f"min({seq:,}, {span:,} - 1) = {room:,} row{'s' * (room != 1)}{batch}"
    if part.growth is Growth.OVERLAP:
        closed = "a window has closed" if seq >= span else "no window has closed yet"
        return f"{span if seq >= span else 0:,} rows ({closed}){batch}"
    rule = fp.engine.chunk_rule if part.growth is Growth.CHUNK else fp.engine.window_rule
    if part.growth is not Growth.EVERY and rule is WindowRule.POOL_SHARE:
        tokens = ceil_div(seq, page) * page * fp.batch
        return f"ceil(0.8 × {tokens:,} tokens) = {cells:,} cells (SGLang's SWA pool share)"
    if part.growth is Growth.EVERY:
        tokens = fp.seq_len
        held = f"{tokens:,} tokens{batch}"
    else:
        tokens = min(fp.seq_len, part.span)
        held = f"min({fp.seq_len:,}, {part.span:,}) = {tokens:,} tokens{batch}"
    if cells == tokens * fp.batch:
        return held
    return f"{held} → {cells:,} cells ({_cell_rule(fp.engine, part.growth, page)})"


def _cell_rule(engine: Engine, growth: Growth, page: int) -> str:
    span = "chunk" if growth is Growth.CHUNK else "window"
    rule = engine.chunk_rule if growth is Growth.CHUNK else engine.window_rule
    if rule is WindowRule.ALL:
        return f"every token: no {span} kept apart"
    if rule is WindowRule.POOL_SHARE:
        return f"the SWA pool's share: ceil(0.8 × {span} layers' tokens), whatever the {span}"
    if growth is not Growth.EVERY and rule is WindowRule.WINDOW_MINUS_ONE:
        return f"the last {span} - 1 tokens"
    if growth is not Growth.EVERY and rule is WindowRule.UBATCH:
        return f"{span} × sequences + 512, padded to 256"
    if growth is Growth.WINDOW and rule is WindowRule.PAGE_SPAN:
        return f"the {page}-token pages spanning the window"
    if growth is Growth.CHUNK and rule is WindowRule.CHUNK_PAGES:
        return f"the most {page}-token pages one chunk spans"
    if engine.context_pad > 1:
        return f"padded to {engine.context_pad}"
    return f"whole pages of {page}"


def _gpu_lines(fp: Footprint, with_totals: bool) -> list[str]:
    p = fp.parallel
    lines = [
        f"Per GPU (tp {p.tp}, pp {p.pp}, dcp {p.dcp}, dp-attention {p.dp_attention}; "
        f"{fp.gpus} GPUs):"
    ]
    lines += [f"  - {note}" for note in fp.notes]
    shape = ", ".join(f"{part.name} {_factors(part)}" for part in _first_group_of(fp.gpu_parts))
    lines.append(f"  one GPU caches {shape}")
    lines.append(f"  one GPU: {fp.gpu_bytes_per_token:,} B/token")
    state = [part for part in fp.gpu_parts if part.growth is Growth.STATE]
    if state and p.attention_tp > 1:
        held = ", ".join(f"{part.name} {_factors(part)}" if part.factors else part.name for part in state)
        lines.append(f"  one GPU keeps, per sequence, the state of its share of the mixer's heads: {held} "
                     f"per recurrent layer (heads split across the {p.attention_tp} attention-TP ranks)")
    if with_totals:
        lines.append(
            f"  one GPU: {fp.per_gpu_bytes:,} B ({humanize_bytes(fp.per_gpu_bytes)}) at "
            f"{humanize_tokens(fp.seq_len)} tokens, batch {fp.batch}"
        )
    return lines


def _first_group_of(parts: tuple[Part, ...]) -> list[Part]:
    return [p for p in parts if p.layer_kind == parts[0].layer_kind]


def _mha_line(fp: Footprint, mha: Footprint) -> str:
    what = "decompressed layout" if fp.attention.startswith("MLA") else "one KV head per query head"
    saving = humanize_saving(fp.bytes_per_token, mha.bytes_per_token)
    return (
        f"MHA equivalent ({what}, {mha.kv_dtype}): {mha.bytes_per_token:,} B/token "
        f"(this cache: {saving})"
    )
