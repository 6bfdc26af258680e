"""What each command shows: its columns over its rows, and the few texts built from results.

``render.py`` turns these into a table or Markdown; ``data_text`` makes a command's CSV or JSON
document, checked against its model in ``contract.py`` (a data column's key is its model's field).
Nothing here prints.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from kvcalc import __version__
from kvcalc.analytic import Comparison, Footprint, Layout
from kvcalc.plan import Growth
from kvcalc.render import Column, Kind, OutputFormat, records, render_data
from kvcalc.spec import COMPRESSED_KINDS, LayerKind, ModelSpec
from kvcalc.units import humanize_bytes, humanize_saving, humanize_tokens


@dataclass(frozen=True)
class BreakdownLine:
    quantity: str
    value: str
    bytes: int | None = None


def breakdown(f) -> list[BreakdownLine]:
    """The budget as lines that add up, then the answers."""
    context = "any length (every layer slides)" if f.max_context is None else (
        f"{f.max_context:,} tokens" + (" (max_position_embeddings)" if f.context_capped else "")
    )
    def size(label: str, nbytes: int) -> BreakdownLine:
        return BreakdownLine(label, humanize_bytes(nbytes), nbytes)

    lines = [
        size("GPU memory", f.gpu_mem_bytes),
        size(f"× {'mem_fraction_static' if f.engine.startswith('sglang') else 'mem-util'} {f.mem_util}",
             f.usable_bytes),
        size("− weights on this GPU", f.weights_bytes_per_gpu),
        size("− reserve (activations, runtime)", f.reserve_bytes),
        size("= KV budget per GPU", f.kv_budget_bytes_per_gpu),
        BreakdownLine("KV per token per GPU", f"{f.kv_bytes_per_token_per_gpu:,} B",
                      f.kv_bytes_per_token_per_gpu),
    ]
    if not f.weights_fit:
        return lines
    vllm = f.max_num_batched_tokens is not None
    if vllm:
        lines.append(size(f"reserved to admit one {humanize_tokens(f.seq_len)} sequence",
                          f.request_bytes_per_gpu))
    admitted = " (vLLM's reservation)" if vllm else ""
    return lines + [
        BreakdownLine("tokens, as vLLM logs them" if vllm else f"tokens that fit (pages of {f.page_tokens})",
                      f"{f.max_tokens:,}"),
        BreakdownLine(f"concurrent sequences at {humanize_tokens(f.seq_len)}{admitted}",
                      f"{f.max_concurrency:,}"),
        BreakdownLine(f"longest context, one sequence{admitted}", context),
    ]


BREAKDOWN_COLUMNS = (
    Column("quantity", "", lambda line: line.quantity),
    Column("value", "", lambda line: line.value, Kind.COUNT_TEXT),
    Column("bytes", "bytes", lambda line: line.bytes, Kind.COUNT),
)


def _fit_value(key: str):
    if key == "mem_util":  # kept as given ("0.903"), printed as a number
        return lambda f: float(f.mem_util)
    return lambda f: getattr(f, key)


FIT_COLUMNS = tuple(
    Column(key, key, _fit_value(key))
    for key in (
        "model", "display_name", "gpu", "gpus", "engine", "kv_dtype", "weights_dtype", "seq_len",
        "gpu_mem_bytes", "mem_util", "usable_bytes", "weights_bytes_per_gpu", "reserve_bytes",
        "kv_budget_bytes_per_gpu", "kv_bytes_per_token_per_gpu", "page_tokens", "max_tokens",
        "max_concurrency", "max_context", "context_capped", "weights_fit", "smallest_tp",
        "max_num_batched_tokens", "request_bytes_per_gpu", "engine_log",
    )
)
"""``fit``'s one data row; the table is ``breakdown``."""


CHECK_COLUMNS = (
    Column("figure", "Figure", lambda f: f.name),
    Column("logged", "Log", lambda f: f.logged, Kind.COUNT_TEXT),
    Column("computed", "kvcalc", lambda f: f.computed, Kind.COUNT_TEXT),
    Column("verdict", "", lambda f: str(f.verdict)),
    Column("source", "", lambda f: f.source, human=False),
)


MEASURE_COLUMNS = (
    Column("model", "Model", lambda r: r.model),
    Column("device", "Device", lambda r: r.device, human=False),
    Column("layout", "Layout", lambda r: r.layout),
    Column("kv_dtype", "Dtype", lambda r: r.kv_dtype, human=False),
    Column("seq_len", "Tokens", lambda r: r.seq_len, Kind.TOKENS),
    Column("batch", "Batch", lambda r: r.batch, Kind.COUNT, human=False),
    Column("layers", "Layers", lambda r: r.layers, Kind.COUNT),
    Column("tp", "TP", lambda r: r.tp, Kind.COUNT, human=False),
    Column("rank", "Rank", lambda r: r.rank, Kind.COUNT, human=False),
    Column("analytic_bytes", "Analytic B", lambda r: r.analytic_bytes, Kind.COUNT),
    Column("measured_bytes", "Measured B", lambda r: r.measured_bytes, Kind.COUNT),
    Column("match", "Match", lambda r: r.match, data=True, human=False),
    Column("match_text", "Match", lambda r: _match_text(r), data=False),
    Column("model_bytes", "Model (formula)", lambda r: r.model_bytes, Kind.BYTES, human=False),
    Column("model_bytes_scaled", "Model (scaled)", lambda r: r.model_bytes_scaled, Kind.BYTES),
    Column("prefill_s", "Prefill s", lambda r: _round(r.prefill_s, 3)),
    Column("decode_s_per_token", "Decode ms/tok", lambda r: r.decode_s_per_token, human=False),
    Column("decode_ms", "Decode ms/tok", lambda r: _ms(r.decode_s_per_token), data=False),
    Column("decode_bytes_per_s", "GB/s", lambda r: r.decode_bytes_per_s, human=False),
    Column("decode_gb_s", "GB/s", lambda r: _gb(r.decode_bytes_per_s), data=False),
    Column("error", "", lambda r: r.error, human=False),
)


def measure_columns(tp: int, cuda: bool) -> tuple[Column, ...]:
    """The measure table: a Rank column under tensor parallelism, the allocator's view on CUDA (CSV
    and JSON carry both always, null off CUDA)."""
    columns = MEASURE_COLUMNS
    if tp > 1:
        at = next(i for i, c in enumerate(columns) if c.key == "rank")
        shown = Column("rank", "Rank", lambda r: r.rank, Kind.COUNT, data=False)
        columns = (*columns[: at + 1], shown, *columns[at + 1 :])
    return columns + tuple(c if cuda else replace(c, human=False) for c in MEASURE_CUDA_COLUMNS)


MEASURE_CUDA_COLUMNS = (
    Column("cuda_allocated_bytes", "Alloc Δ", lambda r: r.cuda_allocated_bytes, Kind.BYTES),
    Column("cuda_reserved_bytes", "Reserved", lambda r: r.cuda_reserved_bytes, Kind.BYTES),
    Column("cuda_peak_prefill_bytes", "Peak prefill", lambda r: r.cuda_peak_prefill_bytes, Kind.BYTES),
)


def _match_text(row) -> str:
    if row.error:
        return "not measured"
    return "exact" if row.match else f"off by {row.difference_bytes:+,}"


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _ms(seconds: float | None) -> str | None:
    return None if seconds is None else f"{seconds * 1000:.2f}"


def _gb(bytes_per_s: float | None) -> str | None:
    return None if bytes_per_s is None else f"{bytes_per_s / 1e9:.1f}"


class SpecFormat(StrEnum):
    YAML = "yaml"
    JSON = "json"


def spec_text(spec: ModelSpec, fmt: SpecFormat, origin: str) -> str:
    """A spec as a file that ``kvcalc`` reads back to the same spec."""
    data = _without_defaults(spec.to_dict())
    if fmt is SpecFormat.JSON:
        return json.dumps(data, indent=2) + "\n"
    import yaml

    header = f"# kvcalc spec imported from {origin}\n"
    return header + yaml.safe_dump(data, sort_keys=False, width=100)


def _without_defaults(data: dict) -> dict:
    """Top-level fields left at their defaults dropped, for a short spec file."""
    return {k: v for k, v in data.items() if v not in (None, [], ()) and (k, v) != ("mtp_layers", 0)}


def _fp(row: Comparison) -> Footprint:
    return row.footprint


COMPARE_COLUMNS = (
    Column("model", "Model", lambda r: _fp(r).model, human=False),
    Column("display_name", "Model", lambda r: _fp(r).display_name),
    Column("attention", "Attn", lambda r: _fp(r).attention),
    Column("layout", "Layout", lambda r: _fp(r).layout),
    Column("kv_dtype", "Dtype", lambda r: _fp(r).kv_dtype, human=False),
    Column("engine", "Engine", lambda r: _fp(r).engine.name, human=False),
    Column("seq_len", "Tokens", lambda r: _fp(r).seq_len, Kind.TOKENS),
    Column("batch", "Batch", lambda r: _fp(r).batch, Kind.COUNT, human=False),
    Column("mtp_layers", "MTP", lambda r: _fp(r).mtp_layers, Kind.COUNT, human=False),
    Column("bytes_per_token", "B/token", lambda r: _fp(r).bytes_per_token, Kind.COUNT),
    Column("total_bytes", "KV cache", lambda r: _fp(r).total_bytes, Kind.BYTES),
    Column("per_gpu_bytes", "Per GPU", lambda r: _fp(r).per_gpu_bytes, Kind.BYTES),
    Column("request_bytes", "Reserved", lambda r: _fp(r).request_bytes, Kind.BYTES, human=False),
    Column("state_bytes_per_sequence", "State/seq", lambda r: _fp(r).state_bytes_per_sequence, Kind.BYTES),
    Column("gpus", "GPUs", lambda r: _fp(r).gpus, Kind.COUNT, human=False),
    Column(
        "mha_equivalent_bytes", "MHA-equiv", lambda r: r.mha_equivalent.total_bytes, Kind.BYTES
    ),
    Column(
        "saving",
        "vs MHA",
        lambda r: humanize_saving(_fp(r).total_bytes, r.mha_equivalent.total_bytes),
        data=False,
    ),
)


def compare_columns(rows: list[Comparison]) -> tuple[Column, ...]:
    """``COMPARE_COLUMNS``; the table leaves out "Per GPU" when every row is on one GPU, where it
    would repeat "KV cache", and "State/seq" when no model keeps a recurrent state (CSV and JSON keep
    both)."""
    hidden = set()
    if not any(_fp(r).gpus > 1 for r in rows):
        hidden.add("per_gpu_bytes")
    if not any(_fp(r).state_bytes_per_sequence for r in rows):
        hidden.add("state_bytes_per_sequence")
    return tuple(replace(c, human=False) if c.key in hidden else c for c in COMPARE_COLUMNS)


LIST_COLUMNS = (
    Column("name", "Name", lambda r: r[0].name),
    Column("display_name", "Model", lambda r: r[0].display_name, human=False),
    Column("attention", "Attn", lambda r: r[1].attention),
    Column("num_layers", "Layers", lambda r: r[0].num_layers, Kind.COUNT),
    Column("mtp_layers", "MTP", lambda r: r[0].mtp_layers, Kind.COUNT, human=False),
    Column("cache_shape", "Cached per layer", lambda r: _cache_shape(r[1])),
    Column("sliding_window", "Window", lambda r: _window(r[0]), data=False),
    Column("sliding_window", "", lambda r: r[0].sliding_window, human=False),
    Column("sliding_layers", "", lambda r: r[0].layer_counts["sliding"], human=False),
    Column("attention_chunk_size", "", lambda r: r[0].attention_chunk_size, human=False),
    Column("chunked_layers", "", lambda r: r[0].layer_counts["chunked"], human=False),
    Column("shared_layers", "", lambda r: r[0].layer_counts["shared"], human=False),
    Column("bytes_per_token", "B/token bf16", lambda r: r[1].bytes_per_token, Kind.COUNT),
    Column("state_bytes_per_sequence", "", lambda r: r[1].state_bytes_per_sequence, human=False),
    Column("params", "Params", lambda r: r[0].params, human=False),
    Column("source", "Source", lambda r: r[0].source, human=False),
)


PART_COLUMNS_PER_TOKEN = (
    Column("part", "Part", lambda p: p.name),
    Column("layer_kind", "Layers", lambda p: str(p.layer_kind)),
    Column("span", "", lambda p: p.span, human=False),  # the window or chunk; null: every token
    Column("layers", "Count", lambda p: p.layers, Kind.COUNT),
    Column("values", "Values", lambda p: p.values, Kind.COUNT),
    Column("bytes_per_token_layer", "B/token/layer", lambda p: p.bytes_per_token_layer, Kind.COUNT),
    Column("bytes_per_token", "B/token", lambda p: p.bytes_per_token, Kind.COUNT),
)


PART_COLUMNS = (
    *PART_COLUMNS_PER_TOKEN,
    Column("cells", "Token slots", lambda p: p.cells, Kind.COUNT),
    Column("total_bytes", "Bytes", lambda p: p.total_bytes, Kind.BYTES),
)


def part_columns(totals: bool) -> tuple[Column, ...]:
    """``show``'s parts; without ``--seq`` the table leaves out the totals, CSV and JSON print null."""
    if totals:
        return PART_COLUMNS
    return (*PART_COLUMNS_PER_TOKEN, *(Column(c.key, c.title, lambda p: None, c.kind, human=False)
                                       for c in PART_COLUMNS[len(PART_COLUMNS_PER_TOKEN):]))


def _cache_shape(fp: Footprint) -> str:
    """Each part's width; per layer kind when the kinds cache different shapes (Gemma-4); compressed
    entries with their rate, compressor state in one word (DeepSeek-V4)."""
    kinds: dict[str, str] = {}
    for p in fp.parts:
        if p.growth is Growth.STATE:
            text = "state per sequence"
            if text not in kinds.get(p.layer_kind, ""):
                kinds[p.layer_kind] = f"{kinds[p.layer_kind]} + {text}" if p.layer_kind in kinds else text
            continue
        if p.growth.per_sequence:
            if "+ compressor state" not in kinds[p.layer_kind]:
                kinds[p.layer_kind] += " + compressor state"
            continue
        shape = f"{p.name} {' × '.join(str(f.size) for f in p.factors)}"
        if p.growth is Growth.COMPRESSED:
            shape += f" per {p.span}"
        kinds[p.layer_kind] = f"{kinds[p.layer_kind]} + {shape}" if p.layer_kind in kinds else shape
    if len(set(kinds.values())) == 1:
        return next(iter(kinds.values()))
    return "; ".join(f"{kind}: {shape}" for kind, shape in kinds.items())


def _window(spec: ModelSpec) -> str | None:
    """``1,024 on 52/62`` (sliding), ``chunk 8,192 on 36/48`` (chunked); every DeepSeek-V4 layer
    has a window."""
    spans = []
    counts = spec.layer_counts
    for kind, label in ((LayerKind.SLIDING, ""), (LayerKind.CHUNKED, "chunk ")):
        layers = counts[kind] + (sum(counts[k] for k in COMPRESSED_KINDS) if kind is LayerKind.SLIDING else 0)
        if layers:
            spans.append(f"{label}{spec.span(kind):,} on {layers}/{spec.num_layers}")
    return ", ".join(spans) or None


def compare_title(footprints: list[Footprint], layout: Layout | None, any_mla: bool) -> str:
    """The options every row shares, in one line (the MLA layout only when a model has MLA; the
    engines when a spec names its own, as a GGUF file's does)."""
    fp = footprints[0]
    engines = list(dict.fromkeys(f.engine.name for f in footprints))
    names = ["engine-neutral" if e == "ideal" else e for e in engines]
    where = names[0] if len(names) == 1 else f"engines {' and '.join(names)} (by model)"
    mla = f", MLA {layout or Layout.LATENT} layout" if "ideal" in engines and any_mla else ""
    p = fp.parallel
    gpus = "" if p.is_single_gpu else (
        f", tp {p.tp} pp {p.pp} dcp {p.dcp} dp-attention {p.dp_attention} ({fp.gpus} GPUs)"
    )
    return f"KV cache, {fp.kv_dtype}, {where}{mla}, batch {fp.batch}{gpus}"


def show_notes(fp: Footprint, mha: Footprint, seq_len: int | None) -> list[str]:
    notes = [
        f"{fp.bytes_per_token:,} B/token over all layers; MHA equivalent "
        f"{mha.bytes_per_token:,} B/token ({humanize_saving(fp.bytes_per_token, mha.bytes_per_token)})"
    ]
    if seq_len:
        notes.append(f"{fp.total_bytes:,} B at {humanize_tokens(seq_len)} tokens × batch {fp.batch}")
    return notes


def show_data(fmt: OutputFormat, spec: ModelSpec, fp: Footprint, mha: Footprint, lines: list[str],
              totals: bool) -> str:
    """``show``'s document: the footprint's figures, its parts as rows, the spec and the
    explanation; the totals null without ``--seq`` (``totals``)."""
    columns = part_columns(totals)

    def total(value: int) -> int | None:
        return value if totals else None

    return data_text(
        fmt, "show", columns, fp.parts, fp.notes,
        model=fp.model, display_name=fp.display_name, attention=fp.attention, layout=fp.layout,
        kv_dtype=fp.kv_dtype, engine=fp.engine.name, mtp_layers=fp.mtp_layers, seq_len=total(fp.seq_len),
        batch=fp.batch, gpus=fp.gpus, bytes_per_token=fp.bytes_per_token,
        state_bytes_per_sequence=fp.state_bytes_per_sequence,
        mha_equivalent_bytes_per_token=mha.bytes_per_token, total_bytes=total(fp.total_bytes),
        request_bytes=total(fp.request_bytes), per_gpu_bytes=total(fp.per_gpu_bytes),
        spec=spec.to_dict(), explain=lines, gpu_parts=records(columns, fp.gpu_parts),
    )


def check_data(fmt: OutputFormat, result) -> str:
    """``check``'s document: what the log says and kvcalc read from it, its figures as rows."""
    return data_text(fmt, "check", CHECK_COLUMNS, result.figures, engine=result.engine,
                     version=result.version, model=result.model, logged_model=result.logged_model,
                     settings=dict(result.settings), agrees=result.agrees)


def data_text(fmt: OutputFormat, command: str, columns: Sequence[Column], rows: Iterable[Any],
              notes: Iterable[str] = (), **fields: Any) -> str:
    """A command's CSV or JSON: ``{"kvcalc", "command", **fields, "rows", "notes"}`` checked against
    its model in ``contract.py`` (pydantic, imported here only), then rendered."""
    from kvcalc.contract import document

    doc = document({"kvcalc": __version__, "command": command, **fields,
                    "rows": records(columns, rows), "notes": list(notes)})
    return render_data(doc.model_dump(mode="json"), list(doc.Row.model_fields), fmt)
