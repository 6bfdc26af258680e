"""The ``kvcalc`` command line: one short function per command -- parse, call the core, render.

Data goes to stdout (or ``--output``), diagnostics to stderr. Every ``KvcalcError`` becomes one line
on stderr and exit status 2, in ``main``; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from kvcalc import __version__, views
from kvcalc.analytic import Layout, Options, compare, footprint, mha_equivalent
from kvcalc.catalog import bundled_specs, load_spec_file, resolve
from kvcalc.engines import engine_names
from kvcalc.errors import KvcalcError, OptionError
from kvcalc.formats import FORMATS
from kvcalc.parallel import Parallel
from kvcalc.render import OutputFormat, render, render_lines
from kvcalc.spec import MlaAttention, ModelSpec
from kvcalc.units import (
    humanize_tokens,
    parse_bytes,
    parse_token_list,
    parse_tokens,
)

app = typer.Typer(
    name="kvcalc",
    help="Exact KV-cache memory for MHA, GQA, MQA and MLA models.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

ModelArg = Annotated[
    str, typer.Argument(help="Bundled model name (see `kvcalc list`) or path to a spec file.")
]
FormatOpt = Annotated[OutputFormat, typer.Option("--format", "-f", help="Output format.")]
OutputOpt = Annotated[
    Path | None,
    typer.Option("--output", "-o", help="Write to FILE (atomically) instead of stdout."),
]
KvDtypeOpt = Annotated[
    str, typer.Option("--kv-dtype", help=f"Cache storage format: {', '.join(FORMATS)}.")
]
LayoutOpt = Annotated[
    Layout | None,
    typer.Option(
        "--layout",
        help="MLA cache layout for engine-neutral figures [default: latent]. Engines fix their own.",
    ),
]
EngineOpt = Annotated[
    str | None,
    typer.Option(
        "--engine",
        help=f"Engine rules: {', '.join(engine_names())} [default: engine-neutral ideal].",
    ),
]
BlockSizeOpt = Annotated[
    int | None, typer.Option("--block-size", help="Tokens per page (overrides the engine's).")
]
TpOpt = Annotated[int, typer.Option("--tp", help="Tensor-parallel GPUs.")]
PpOpt = Annotated[int, typer.Option("--pp", help="Pipeline-parallel stages.")]
DcpOpt = Annotated[int, typer.Option("--dcp", help="Decode-context-parallel ways (divides --tp).")]
DpAttentionOpt = Annotated[
    int,
    typer.Option("--dp-attention", help="Data-parallel attention groups within --tp."),
]
MtpOpt = Annotated[
    bool, typer.Option("--mtp", help="Also cache the model's multi-token-prediction layers.")
]


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"kvcalc {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Exact KV-cache memory for MHA, GQA, MQA and MLA models."""


@app.command("list")
def list_models(
    fmt: FormatOpt = OutputFormat.TABLE,
    output: OutputOpt = None,
) -> None:
    """List the bundled models with their bf16 cache per token."""
    rows = [(s, footprint(s, Options(seq_len=1))) for s in bundled_specs()]
    _emit(render(views.LIST_COLUMNS, rows, fmt, title="Bundled models (bf16, latent layout)"), output)


@app.command()
def show(
    model: ModelArg,
    explain_: Annotated[
        bool, typer.Option("--explain", help="Derive every figure from the model's numbers.")
    ] = False,
    seq: Annotated[
        str | None, typer.Option("--seq", help="Also total the cache at this many tokens (4k).")
    ] = None,
    batch: Annotated[int, typer.Option("--batch", help="Concurrent sequences.")] = 1,
    kv_dtype: KvDtypeOpt = "bf16",
    layout: LayoutOpt = None,
    mtp: MtpOpt = False,
    engine: EngineOpt = None,
    block_size: BlockSizeOpt = None,
    tp: TpOpt = 1,
    pp: PpOpt = 1,
    dcp: DcpOpt = 1,
    dp_attention: DpAttentionOpt = 1,
    fmt: FormatOpt = OutputFormat.TABLE,
    output: OutputOpt = None,
) -> None:
    """Show one model's cache: its parts, and with --explain the formula behind each figure."""
    from kvcalc.explain import explain

    spec = resolve(model)
    seq_len = parse_tokens(seq) if seq is not None else None
    parallel = Parallel(tp, pp, dcp, dp_attention)
    options = Options(seq_len or 1, batch, kv_dtype, layout, mtp, engine, block_size, parallel)
    fp, mha = footprint(spec, options), mha_equivalent(spec, options)
    lines = explain(spec, fp, mha, with_totals=seq_len is not None)
    if fmt is OutputFormat.JSON:
        text = json.dumps(views.show_document(spec, fp, mha, lines, seq_len is not None), indent=2) + "\n"
    elif explain_ and fmt is not OutputFormat.CSV:
        text = render_lines(lines, fmt)
    else:
        columns = views.PART_COLUMNS if seq_len else views.PART_COLUMNS_PER_TOKEN
        notes = views.show_notes(fp, mha, seq_len) + [f"assumed: {a}" for a in spec.assumptions]
        text = render(columns, fp.parts, fmt, title=lines[0], notes=notes)
    _emit(text, output)


@app.command("compare")
def compare_models(
    models: Annotated[list[str], typer.Argument(help="Bundled model names or spec files.")],
    seq: Annotated[
        str, typer.Option("--seq", help="Comma-separated token counts: 4096, 4k, 128k, 1M.")
    ] = "4k,32k,128k",
    batch: Annotated[int, typer.Option("--batch", help="Concurrent sequences.")] = 1,
    kv_dtype: KvDtypeOpt = "bf16",
    layout: LayoutOpt = None,
    mtp: MtpOpt = False,
    engine: EngineOpt = None,
    block_size: BlockSizeOpt = None,
    tp: TpOpt = 1,
    pp: PpOpt = 1,
    dcp: DcpOpt = 1,
    dp_attention: DpAttentionOpt = 1,
    fmt: FormatOpt = OutputFormat.TABLE,
    output: OutputOpt = None,
) -> None:
    """Compare the KV cache of several models at several context lengths."""
    specs = [resolve(m) for m in models]
    seq_lens = parse_token_list(seq)
    parallel = Parallel(tp, pp, dcp, dp_attention)
    rows = [
        compare(spec, Options(n, batch, kv_dtype, layout, mtp, engine, block_size, parallel))
        for spec in specs
        for n in seq_lens
    ]
    title = views.compare_title(rows[0].footprint, layout)
    notes = sorted({f"{r.footprint.model}: {note}" for r in rows for note in r.footprint.notes})
    _emit(render(views.COMPARE_COLUMNS, rows, fmt, title=title, notes=notes), output)


@app.command()
def measure(
    models: Annotated[list[str], typer.Argument(help="Bundled model names or spec files.")],
    seq: Annotated[str, typer.Option("--seq", help="Comma-separated token counts.")] = "4k",
    batch: Annotated[int, typer.Option("--batch", help="Concurrent sequences.")] = 1,
    kv_dtype: Annotated[
        str, typer.Option("--kv-dtype", help="Cache dtype: fp32, bf16, fp16, fp8, fp8_e4m3, fp8_e5m2.")
    ] = "bf16",
    layout: Annotated[
        str, typer.Option("--layout", help="MLA layouts, comma-separated: latent, decompressed.")
    ] = "latent",
    layers: Annotated[int, typer.Option("--layers", help="Real layers built per layer kind.")] = 1,
    decode_steps: Annotated[int, typer.Option("--decode-steps", help="Decode steps timed.")] = 8,
    device: Annotated[str, typer.Option("--device", help="auto (CUDA when present), cpu, cuda.")] = "auto",
    tp: Annotated[
        int, typer.Option("--tp", help="Tensor-parallel ranks (torch.distributed; joins torchrun).")
    ] = 1,
    fmt: FormatOpt = OutputFormat.TABLE,
    output: OutputOpt = None,
) -> None:
    """Build real layers, run prefill and decode, and show measured cache bytes beside the formula."""
    specs = [resolve(m) for m in models]
    layouts = [_layout(value) for value in layout.split(",")]
    runs = [
        MeasureRequest(spec, n, lay)
        for spec in specs
        for n in parse_token_list(seq)
        for lay in (layouts if isinstance(spec.attention, MlaAttention) else layouts[:1])
    ]
    from kvcalc import measure as m  # torch: only here

    options = [
        m.MeasureOptions(r.seq_len, batch, kv_dtype, r.layout, layers, decode_steps, tp) for r in runs
    ]
    for r, o in zip(runs, options, strict=True):
        m.check_options(o)
        Parallel(tp=tp).check(r.spec)
    jobs = [(r.spec, o) for r, o in zip(runs, options, strict=True)]
    if tp > 1:
        from kvcalc.distributed import measure_ranks

        rows = measure_ranks(jobs, tp, device)
        if rows is None:  # a torchrun rank other than 0: rank 0 reports
            return
        where = rows[0].device.split(":")[0] if rows else device
    else:
        where = m.resolve_device(device)
        rows = _with_progress(jobs, lambda s, o: m.measure(s, o, where))
    notes = [f"{r.model} at {humanize_tokens(r.seq_len)}: not measured: {r.error}" for r in rows if r.error]
    if tp > 1:  # what the per-GPU figures mean: replication or a split, in words
        for spec in specs:
            fp = footprint(spec, Options(1, parallel=Parallel(tp=tp), layout=layouts[0]))
            notes += [f"{spec.name}: {note}" for note in fp.notes]
    notes += [
        f"{r.model} at {humanize_tokens(r.seq_len)}: measured differs by {r.difference_bytes:+,} B"
        for r in rows if r.match is False
    ]
    cuda = str(where).startswith("cuda")
    columns = views.measure_columns(tp, cuda)
    ranks = f", tp {tp}: one row per rank, bytes per GPU" if tp > 1 else ""
    title = (f"Measured on {where}, {kv_dtype} cache, batch {batch}{ranks}; "
             "model totals scaled from the layers")
    _emit(render(columns, rows, fmt, title=title, notes=notes), output)
    if any(r.error or not r.match for r in rows):
        raise typer.Exit(1)


GpuOpt = Annotated[str | None, typer.Option("--gpu", help="GPU name (h200, h100-sxm, ...).")]
GpuMemOpt = Annotated[
    str | None, typer.Option("--gpu-mem", help="GPU memory: 80GiB, 80GB or bytes (overrides --gpu).")
]
WeightsDtypeOpt = Annotated[
    str, typer.Option("--weights-dtype", help="bf16, fp16, fp32, fp8, fp8-block, int8, int4, mxfp4, nvfp4.")
]
MemUtilOpt = Annotated[
    str, typer.Option("--mem-util", help="Fraction of GPU memory the engine may use (vLLM: 0.9).")
]
ReserveOpt = Annotated[
    str | None,
    typer.Option("--reserve", help="Activations and runtime per GPU [default: per engine, see README]."),
]


@app.command("fit")
def fit_command(
    model: ModelArg,
    gpu: GpuOpt = None,
    gpu_mem: GpuMemOpt = None,
    gpus: Annotated[int | None, typer.Option("--gpus", help="GPUs in all (tp x pp).")] = None,
    seq: Annotated[str, typer.Option("--seq", help="Context per sequence for concurrency.")] = "128k",
    kv_dtype: KvDtypeOpt = "bf16",
    weights_dtype: WeightsDtypeOpt = "bf16",
    layout: LayoutOpt = None,
    mtp: MtpOpt = False,
    engine: EngineOpt = None,
    block_size: BlockSizeOpt = None,
    tp: TpOpt = 1,
    pp: PpOpt = 1,
    dcp: DcpOpt = 1,
    dp_attention: DpAttentionOpt = 1,
    mem_util: MemUtilOpt = "0.9",
    reserve: ReserveOpt = None,
    fmt: FormatOpt = OutputFormat.TABLE,
    output: OutputOpt = None,
) -> None:
    """How many tokens, sequences and how long a context fit in a GPU budget."""
    from kvcalc.fit import check_parallel, fit

    spec = resolve(model)
    name, memory = _gpu_memory(gpu, gpu_mem)
    parallel = check_parallel(Parallel(tp, pp, dcp, dp_attention), gpus)
    options = Options(parse_tokens(seq), 1, kv_dtype, layout, mtp, engine, block_size, parallel)
    reserve_bytes = parse_bytes(reserve, "--reserve") if reserve is not None else None
    result = fit(spec, options, gpu_name=name, gpu_mem_bytes=memory, weights_dtype=weights_dtype,
                 mem_util=mem_util, reserve_bytes=reserve_bytes)
    if fmt in (OutputFormat.JSON, OutputFormat.CSV):
        text = render(views.FIT_COLUMNS, [result], fmt)
    else:
        title = (f"{result.display_name} on {result.gpus} x {result.gpu}, {result.engine}, "
                 f"KV {result.kv_dtype}, weights {result.weights_dtype}")
        text = render(views.BREAKDOWN_COLUMNS, views.breakdown(result), fmt, title=title, notes=result.notes)
    _emit(text, output)


@app.command()
def plot(
    models: Annotated[list[str], typer.Argument(help="Bundled model names or spec files.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Chart file: .png or .svg.")],
    seq_max: Annotated[str, typer.Option("--seq-max", help="Longest context plotted.")] = "1M",
    gpu: GpuOpt = None,
    gpu_mem: GpuMemOpt = None,
    batch: Annotated[int, typer.Option("--batch", help="Concurrent sequences.")] = 1,
    kv_dtype: KvDtypeOpt = "bf16",
    weights_dtype: WeightsDtypeOpt = "bf16",
    layout: LayoutOpt = None,
    mtp: MtpOpt = False,
    engine: EngineOpt = None,
    block_size: BlockSizeOpt = None,
    tp: TpOpt = 1,
    pp: PpOpt = 1,
    dcp: DcpOpt = 1,
    dp_attention: DpAttentionOpt = 1,
    mem_util: MemUtilOpt = "0.9",
    reserve: ReserveOpt = None,
) -> None:
    """Chart KV cache per GPU against context, with each model's KV budget on the GPU."""
    from kvcalc.analytic import curve
    from kvcalc.fit import gpu_budget
    from kvcalc.plot import Series, render_plot

    parallel = Parallel(tp, pp, dcp, dp_attention)
    top = parse_tokens(seq_max, "--seq-max")
    reserve_bytes = parse_bytes(reserve, "--reserve") if reserve is not None else None
    gpu_name, memory = _gpu_memory(gpu, gpu_mem) if (gpu or gpu_mem) else (None, None)
    series = []
    for spec in [resolve(m) for m in models]:
        options = Options(top, batch, kv_dtype, layout, mtp, engine, block_size, parallel)
        budget = None
        if memory is not None:
            budget = gpu_budget(spec, options, gpu_mem_bytes=memory, weights_dtype=weights_dtype,
                                mem_util=mem_util, reserve_bytes=reserve_bytes).kv_bytes
        series.append(Series(spec.display_name, curve(spec, options), budget))
    where = f" on {gpu_name}, dashed: KV budget after {weights_dtype} weights" if gpu_name else ""
    title = f"KV cache per GPU, {kv_dtype}, {engine or 'engine-neutral'}, tp {tp}{where}"
    write_atomic(output, render_plot(series, top, output, title, batch))


def _gpu_memory(gpu: str | None, gpu_mem: str | None) -> tuple[str, int]:
    if gpu_mem is not None:
        return (gpu or gpu_mem), parse_bytes(gpu_mem, "--gpu-mem")
    if gpu is None:
        raise OptionError("--gpu or --gpu-mem: say which GPU (e.g. --gpu h200 or --gpu-mem 80GiB)")
    from kvcalc.hardware import get_gpu

    card = get_gpu(gpu)
    return card.display_name, card.memory_bytes


@dataclass(frozen=True)
class MeasureRequest:
    spec: ModelSpec
    seq_len: int
    layout: Layout


def _layout(value: str) -> Layout:
    try:
        return Layout(value.strip())
    except ValueError:
        raise OptionError(f"--layout: {value!r} is not latent or decompressed") from None


def _with_progress(jobs: list, run) -> list:
    """Run jobs with a progress bar on stderr (for sweeps); results in order."""
    from rich.console import Console
    from rich.progress import Progress

    results = []
    with Progress(console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("measuring", total=len(jobs))
        for spec, options in jobs:
            progress.update(task, description=f"{spec.name} {humanize_tokens(options.seq_len)}")
            results.append(run(spec, options))
            progress.advance(task)
    return results


@app.command("import")
def import_config(
    config: Annotated[
        Path, typer.Argument(help="A Hugging Face config.json or DeepSeek reference config.")
    ],
    name: Annotated[
        str | None, typer.Option("--name", help="Model name [default: from the path].")
    ] = None,
    fmt: Annotated[views.SpecFormat, typer.Option("--format", "-f", help="Spec file format.")] = (
        views.SpecFormat.YAML
    ),
    output: OutputOpt = None,
) -> None:
    """Write the kvcalc spec a config describes, to keep and edit (kvcalc show reads it back)."""
    spec = load_spec_file(config, name)
    _emit(views.spec_text(spec, fmt, origin=str(config)), output)


def _emit(text: str, output: Path | None) -> None:
    """Write ``text`` to stdout, or to ``output`` through a temporary file and a rename."""
    if output is None:
        sys.stdout.write(text)
        return
    write_atomic(output, text.encode("utf-8"))


def write_atomic(output: Path, data: bytes) -> None:
    """Write ``data`` to ``output`` through a temporary file and a rename: never a partial file."""
    if output.is_dir():
        raise OptionError(f"--output: {output} is a folder")
    folder = output.parent
    if not folder.is_dir():
        raise OptionError(f"--output: folder {folder} does not exist")
    import tempfile  # only when writing a file: keeps start-up lean

    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{output.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, output)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    typer.echo(f"kvcalc: wrote {output}", err=True)


def main(argv: list[str] | None = None) -> None:
    """Console entry point. Every error a user can act on is one line on stderr:
    domain errors and unreadable files exit 2, as do usage errors (``--batch 0``)."""
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        code = app(args=args, prog_name="kvcalc", standalone_mode=False)
    except KvcalcError as e:
        _fail(args, e, str(e), 2)
    except OSError as e:
        _fail(args, e, f"{e.filename or 'kvcalc'}: {e.strerror}", 2)
    except Exception as e:
        if not hasattr(e, "format_message"):  # a bug: show it whole
            raise
        # The CLI library's usage errors (bad option values, unknown commands).
        _fail(args, e, e.format_message(), getattr(e, "exit_code", 2))
    sys.exit(code if isinstance(code, int) else 0)


def _fail(args: list[str], error: Exception, message: str, status: int) -> None:
    if "--debug" in args:
        raise error
    lines = message.strip().splitlines()
    if lines:  # a usage error with no message (bare `kvcalc`) has already shown the help
        print(f"kvcalc: error: {lines[0]}", file=sys.stderr)
    sys.exit(status)
