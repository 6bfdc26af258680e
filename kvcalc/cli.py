"""The ``kvcalc`` command line: one short function per command -- parse, call the core, render.

Data goes to stdout (or ``--output``), diagnostics to stderr. Every ``KvcalcError`` becomes one line
on stderr and exit status 2, in ``main``; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import itertools
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperCommand, TyperGroup

from kvcalc import __version__, views
from kvcalc.analytic import Layout, Options, compare, footprint, mha_equivalent
from kvcalc.catalog import bundled_specs, resolve
from kvcalc.engines import engine_names
from kvcalc.errors import KvcalcError, OptionError
from kvcalc.formats import FORMATS
from kvcalc.parallel import Parallel
from kvcalc.render import DATA_FORMATS, Column, OutputFormat, render, render_lines, terminal_width
from kvcalc.spec import MAX_LAYERS, MAX_TOKENS, NAME_PATTERN, MlaAttention, ModelSpec
from kvcalc.units import (
    humanize_tokens,
    parse_bytes,
    parse_token_list,
    parse_tokens,
)


class _PlainFlags:
    """Help that shows a flag (``--mtp``, ``--help``) without typer's ``<bool>`` placeholder."""

    def get_params(self, ctx):
        params = super().get_params(ctx)
        for param in params:
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""
        return params


class _Group(_PlainFlags, TyperGroup):
    pass


class _OnceCommand(_PlainFlags, TyperCommand):
    """A command whose options each take one value: ``--seq 4k --seq 8k`` is an error, not 8k."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        names = {
            opt: param
            for param in self.params
            if isinstance(param, typer.core.TyperOption) and not (param.multiple or param.is_flag)
            for opt in param.opts
        }
        seen: dict[str, str] = {}
        tokens = list(itertools.takewhile(lambda t: t != "--", args))
        for i, token in enumerate(tokens):
            name, equals, value = token.partition("=")
            param = names.get(name)
            if param is None:
                continue
            value = value if equals else (tokens[i + 1] if i + 1 < len(tokens) else "")
            if param.name in seen:
                hint = "; a comma-separated list takes several" if param.name == "seq" else ""
                raise typer.BadParameter(
                    f"given twice ({seen[param.name]!r}, then {value!r}): give it once{hint}",
                    ctx=ctx, param=param,
                )
            seen[param.name] = value
        return super().parse_args(ctx, args)


app = typer.Typer(
    name="kvcalc",
    cls=_Group,
    help="Exact KV-cache memory for MHA, GQA, MQA and MLA models.",
    add_completion=True,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

ModelArg = Annotated[
    str, typer.Argument(help="A bundled name (`kvcalc list`), a spec or config file, a GGUF file, a "
                             "checkpoint folder, a Hugging Face repo id (org/name[@revision]) or - (stdin).")
]
ModelsArg = Annotated[
    list[str], typer.Argument(help="Models: bundled names, spec or config files, GGUF files, folders, "
                                   "repo ids (org/name), - (stdin).")
]
FormatOpt = Annotated[OutputFormat, typer.Option("--format", "-f", help="Output format.")]
OutputOpt = Annotated[
    Path | None,
    typer.Option("--output", "-o", help="Write to FILE (atomically) instead of stdout."),
]
KvDtypeOpt = Annotated[
    str, typer.Option("--kv-dtype", "--kv-cache-dtype", help=f"Cache storage format: {', '.join(FORMATS)}.")
]
LayoutOpt = Annotated[
    Layout | None,
    typer.Option(
        "--layout",
        help="MLA cache layout for engine-neutral figures \\[default: latent]. Engines fix their own.",
    ),
]
EngineOpt = Annotated[
    str | None,
    typer.Option(
        "--engine",
        help=f"Engine rules: {', '.join(engine_names())} \\[default: engine-neutral ideal].",
    ),
]
MAX_GPUS = 1 << 16
MAX_BATCH = 1 << 24
BlockSizeOpt = Annotated[
    int | None,
    typer.Option("--block-size", "--page-size", min=1, max=MAX_TOKENS,
                 help="Tokens per page (overrides the engine's)."),
]
TpOpt = Annotated[int, typer.Option("--tp", "--tensor-parallel-size", "-tp", min=1, max=MAX_GPUS,
                                    help="Tensor-parallel GPUs.")]
PpOpt = Annotated[int, typer.Option("--pp", "--pipeline-parallel-size", "-pp", min=1, max=MAX_GPUS,
                                    help="Pipeline-parallel stages.")]
DcpOpt = Annotated[
    int, typer.Option("--dcp", min=1, max=MAX_GPUS, help="Decode-context-parallel ways (divides --tp).")
]
DpAttentionOpt = Annotated[
    int,
    typer.Option("--dp-attention", min=1, max=MAX_GPUS, help="Data-parallel attention groups within --tp."),
]
BatchedTokensOpt = Annotated[
    int | None,
    typer.Option("--max-num-batched-tokens", min=1, max=MAX_TOKENS,
                 help="vLLM's tokens per scheduler step, which its admission reserves for sliding layers "
                      "\\[default: vllm serve's for the GPU; 8192 without --gpu; check: the log's]."),
]
StateDtypeOpt = Annotated[
    str | None,
    typer.Option("--state-dtype",
                 help="float32, bfloat16 or float16: a linear-attention or Mamba hybrid's SSM state "
                      "dtype (vLLM's --mamba-ssm-cache-dtype, SGLang's --mamba-ssm-dtype) \\[default: "
                      "the engine's own, or the config's]."),
]
BatchOpt = Annotated[int, typer.Option("--batch", min=1, max=MAX_BATCH, help="Concurrent sequences.")]
MtpOpt = Annotated[
    bool,
    typer.Option("--mtp", help="Also cache the model's multi-token-prediction layers."),
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
        typer.Option("--version", callback=_print_version, is_eager=True,
                     help="Print the version."),
    ] = False,
) -> None:
    """Exact KV-cache memory for MHA, GQA, MQA and MLA models."""


@app.command("list", cls=_OnceCommand)
def list_models(
    fmt: FormatOpt = OutputFormat.TABLE,
    output: OutputOpt = None,
) -> None:
    """List the bundled models with their bf16 cache per token."""
    rows = [(s, footprint(s, Options(seq_len=1))) for s in bundled_specs()]
    _emit(_text("list", views.LIST_COLUMNS, rows, fmt, output, title="Bundled models (bf16, latent layout)"),
          output)


@app.command(cls=_OnceCommand)
def show(
    model: ModelArg,
    explain_: Annotated[
        bool, typer.Option("--explain", help="Derive every figure from the model's numbers.")
    ] = False,
    seq: Annotated[
        str | None, typer.Option("--seq", help="Also total the cache at this many tokens (4k).")
    ] = None,
    batch: BatchOpt = 1,
    kv_dtype: KvDtypeOpt = "bf16",
    layout: LayoutOpt = None,
    mtp: MtpOpt = False,
    engine: EngineOpt = None,
    block_size: BlockSizeOpt = None,
    max_num_batched_tokens: BatchedTokensOpt = None,
    state_dtype: StateDtypeOpt = None,
    tp: TpOpt = 1,
    pp: PpOpt = 1,
    dcp: DcpOpt = 1,
    dp_attention: DpAttentionOpt = 1,
    fmt: FormatOpt = OutputFormat.TABLE,
    output: OutputOpt = None,
) -> None:
    """Show one model's cache: its parts, and with --explain the formula behind each figure."""
    from kvcalc.explain import explain, shared_layers_text

    spec = resolve(model)
    seq_len = parse_tokens(seq) if seq is not None else None
    parallel = Parallel(tp, pp, dcp, dp_attention)
    options = Options(seq_len or 1, batch, kv_dtype, layout, mtp, engine, block_size, parallel,
                      max_num_batched_tokens, state_dtype)
    fp, mha = footprint(spec, options), mha_equivalent(spec, options)
    lines = explain(spec, fp, mha, with_totals=seq_len is not None)
    if fmt in DATA_FORMATS:
        text = views.show_data(fmt, spec, fp, mha, lines, seq_len is not None)
    elif explain_:
        text = render_lines(lines, fmt, width=_width(output))
    else:
        columns = views.part_columns(seq_len is not None)
        notes = views.show_notes(fp, mha, seq_len) + [f"assumed: {a}" for a in spec.assumptions]
        notes += [text for text in [shared_layers_text(spec)] if text]
        text = render(columns, fp.parts, fmt, title=lines[0], notes=notes, width=_width(output))
    _emit(text, output, inputs=[model])


@app.command("compare", cls=_OnceCommand)
def compare_models(
    models: ModelsArg,
    seq: Annotated[
        str, typer.Option("--seq", help="Comma-separated token counts: 4096, 4k, 128k, 1M.")
    ] = "4k,32k,128k",
    batch: BatchOpt = 1,
    kv_dtype: KvDtypeOpt = "bf16",
    layout: LayoutOpt = None,
    mtp: MtpOpt = False,
    engine: EngineOpt = None,
    block_size: BlockSizeOpt = None,
    max_num_batched_tokens: BatchedTokensOpt = None,
    state_dtype: StateDtypeOpt = None,
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
        compare(spec, Options(n, batch, kv_dtype, layout, mtp, engine, block_size, parallel,
                              max_num_batched_tokens, state_dtype))
        for spec in specs
        for n in seq_lens
    ]
    any_mla = any(isinstance(s.attention, MlaAttention) for s in specs)
    title = views.compare_title([r.footprint for r in rows], layout, any_mla)
    notes = sorted({f"{r.footprint.model}: {note}" for r in rows for note in r.footprint.notes})
    columns = views.compare_columns(rows)
    _emit(_text("compare", columns, rows, fmt, output, title=title, notes=notes), output, inputs=models)


@app.command(cls=_OnceCommand)
def measure(
    models: ModelsArg,
    seq: Annotated[str, typer.Option("--seq", help="Comma-separated token counts.")] = "4k",
    batch: BatchOpt = 1,
    kv_dtype: Annotated[
        str, typer.Option("--kv-dtype", "--kv-cache-dtype",
                          help="Cache dtype: fp32, bf16, fp16, fp8, fp8_e4m3, fp8_e5m2.")
    ] = "bf16",
    layout: Annotated[
        str, typer.Option("--layout", help="MLA layouts, comma-separated: latent, decompressed.")
    ] = "latent",
    layers: Annotated[
        int, typer.Option("--layers", min=1, max=MAX_LAYERS, help="Real layers built per layer kind.")
    ] = 1,
    decode_steps: Annotated[
        int, typer.Option("--decode-steps", min=0, max=1 << 20,
                          help="Decode steps run; the median of all but the first (a warm-up) is timed.")
    ] = 8,
    device: Annotated[str, typer.Option("--device", help="auto (CUDA when present), cpu, cuda.")] = "auto",
    tp: Annotated[
        int,
        typer.Option("--tp", "--tensor-parallel-size", "-tp", min=1, max=MAX_GPUS,
                     help="Tensor-parallel ranks (torch.distributed; joins torchrun)."),
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
    with _progress(len(runs)) as bar:
        bar.describe("loading torch")
        m = _measure_module()
        options = [
            m.MeasureOptions(r.seq_len, batch, kv_dtype, r.layout, layers, decode_steps, tp) for r in runs
        ]
        for r, o in zip(runs, options, strict=True):
            m.check_options(o, r.spec)
            Parallel(tp=tp).check(r.spec)
        jobs = [(r.spec, o) for r, o in zip(runs, options, strict=True)]
        if tp > 1:
            from kvcalc.distributed import measure_ranks

            bar.describe(f"measuring on {tp} ranks")
            rows = measure_ranks(jobs, tp, device)
            if rows is None:  # a torchrun rank other than 0: rank 0 reports
                return
            where = rows[0].device.split(":")[0] if rows else device
        else:
            where = m.resolve_device(device)
            rows = []
            for spec, o in jobs:
                label = f"{spec.name} {humanize_tokens(o.seq_len)} {o.layout}"
                rows.append(m.measure(spec, o, where, report=lambda phase: bar.describe(f"{label}: {phase}")))
                bar.advance()
    notes = [f"{r.model} at {humanize_tokens(r.seq_len)}: not measured: {r.error}" for r in rows if r.error]
    notes += [f"{spec.name}: layers: {m.built_as(spec)}" for spec in specs]
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
    _emit(_text("measure", columns, rows, fmt, output, title=title, notes=notes), output, inputs=models)
    if any(r.error or not r.match for r in rows):
        raise typer.Exit(1)


GpuOpt = Annotated[str | None, typer.Option("--gpu", help="GPU name (h200, h100-sxm, ...).")]
GpuMemOpt = Annotated[
    str | None,
    typer.Option("--gpu-mem", help="GPU memory: 80GiB, 80GB (or 80G), or bytes as 85899345920B "
                 "(overrides --gpu)."),
]
WeightsDtypeOpt = Annotated[
    str | None,
    typer.Option("--weights-dtype", help="bf16, fp16, fp32, fp8, fp8-block, int8, int4, mxfp4, nvfp4 "
                 "\\[default: as the checkpoint stores them where the spec says, else bf16]."),
]
MemUtilOpt = Annotated[
    str | None, typer.Option("--mem-util", "--gpu-memory-utilization", "--mem-fraction-static",
                      help="Fraction of GPU memory the engine may use \\[default: 0.9, vLLM's]; SGLang's "
                           "mem_fraction_static, which it picks per GPU (0.903 for GQA on one H200): "
                           "give the value its server_args line logs.")
]
MambaRatioOpt = Annotated[
    float | None,
    typer.Option("--mamba-full-memory-ratio", min=0.001, max=1000.0,
                 help="SGLang: the recurrent state pool's share of the KV budget, ratio / (1 + ratio) "
                      "\\[default: 0.9, SGLang's]."),
]
ReserveOpt = Annotated[
    str | None,
    typer.Option("--reserve", help="Activations and runtime per GPU \\[default: per engine, see README]."),
]


@app.command("fit", cls=_OnceCommand)
def fit_command(
    model: ModelArg,
    gpu: GpuOpt = None,
    gpu_mem: GpuMemOpt = None,
    gpus: Annotated[
        int | None, typer.Option("--gpus", min=1, max=MAX_GPUS, help="GPUs in all (tp x pp).")
    ] = None,
    seq: Annotated[str, typer.Option("--seq", "--max-model-len",
                                     help="Context per sequence for concurrency.")] = "128k",
    kv_dtype: KvDtypeOpt = "bf16",
    weights_dtype: WeightsDtypeOpt = None,
    layout: LayoutOpt = None,
    mtp: MtpOpt = False,
    engine: EngineOpt = None,
    block_size: BlockSizeOpt = None,
    max_num_batched_tokens: BatchedTokensOpt = None,
    state_dtype: StateDtypeOpt = None,
    tp: TpOpt = 1,
    pp: PpOpt = 1,
    dcp: DcpOpt = 1,
    dp_attention: DpAttentionOpt = 1,
    mem_util: MemUtilOpt = None,
    reserve: ReserveOpt = None,
    mamba_full_memory_ratio: MambaRatioOpt = None,
    fmt: FormatOpt = OutputFormat.TABLE,
    output: OutputOpt = None,
) -> None:
    """How many tokens, sequences and how long a context fit in a GPU budget."""
    from kvcalc.capacity import check_parallel, fit

    spec = resolve(model)
    name, memory = _gpu_memory(gpu, gpu_mem)
    parallel = check_parallel(Parallel(tp, pp, dcp, dp_attention), gpus)
    options = Options(parse_tokens(seq), 1, kv_dtype, layout, mtp, engine, block_size, parallel,
                      max_num_batched_tokens, state_dtype)
    reserve_bytes = parse_bytes(reserve, "--reserve") if reserve is not None else None
    result = fit(spec, options, gpu_name=name, gpu_mem_bytes=memory, weights_dtype=weights_dtype,
                 mem_util=mem_util, reserve_bytes=reserve_bytes, state_ratio=mamba_full_memory_ratio)
    if fmt in DATA_FORMATS:
        text = views.data_text(fmt, "fit", views.FIT_COLUMNS, [result], result.notes)
    else:
        title = (f"{result.display_name} on {result.gpus} x {result.gpu}, {result.engine}, "
                 f"KV {result.kv_dtype}, weights {result.weights_dtype}")
        text = render(views.BREAKDOWN_COLUMNS, views.breakdown(result), fmt, title=title, notes=result.notes,
                      width=_width(output))
    _emit(text, output, inputs=[model])
    if not result.weights_fit or result.max_tokens == 0:
        raise typer.Exit(1)  # printed, but nothing fits


@app.command("check", cls=_OnceCommand)
def check_command(
    log: Annotated[Path, typer.Argument(help="A vLLM or SGLang start-up log.")],
    model: Annotated[str | None, typer.Option(
        "--model", help="The spec to compute with, when the log's model is not a bundled name.")] = None,
    max_num_batched_tokens: BatchedTokensOpt = None,
    block_size: BlockSizeOpt = None,
    fmt: FormatOpt = OutputFormat.TABLE,
    output: OutputOpt = None,
) -> None:
    """Recompute the capacity figures an engine's start-up log states from the KV memory it logs.

    Exit 0 when every figure agrees, 1 when any disagrees, 2 when the log cannot be read."""
    from kvcalc.check import check_log

    result = check_log(log, model, max_num_batched_tokens, block_size)
    if fmt in DATA_FORMATS:
        text = views.check_data(fmt, result)
    else:
        title = f"{log}: {result.engine} {result.version or ''}".rstrip() + f", {result.model}"
        notes = [f"{key}: {value}" for key, value in result.settings]
        notes.append("every figure agrees with the logged memory" if result.agrees
                     else "some figures disagree with the logged memory")
        text = render(views.CHECK_COLUMNS, result.figures, fmt, title=title, notes=notes,
                      width=_width(output))
    _emit(text, output, inputs=[str(log)])
    if not result.agrees:
        raise typer.Exit(1)


@app.command(cls=_OnceCommand)
def plot(
    models: ModelsArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="Chart file: .png or .svg.")],
    seq_max: Annotated[str, typer.Option("--seq-max", help="Longest context plotted.")] = "1M",
    gpu: GpuOpt = None,
    gpu_mem: GpuMemOpt = None,
    batch: BatchOpt = 1,
    kv_dtype: KvDtypeOpt = "bf16",
    weights_dtype: WeightsDtypeOpt = None,
    layout: LayoutOpt = None,
    mtp: MtpOpt = False,
    engine: EngineOpt = None,
    block_size: BlockSizeOpt = None,
    max_num_batched_tokens: BatchedTokensOpt = None,
    state_dtype: StateDtypeOpt = None,
    tp: TpOpt = 1,
    pp: PpOpt = 1,
    dcp: DcpOpt = 1,
    dp_attention: DpAttentionOpt = 1,
    mem_util: MemUtilOpt = "0.9",
    reserve: ReserveOpt = None,
) -> None:
    """Chart KV cache per GPU against context, with each model's KV budget on the GPU (under vLLM,
    what it reserves to admit the sequences)."""
    from kvcalc.analytic import curve, in_flight_tokens
    from kvcalc.capacity import gpu_budget, resolved_weights_dtype
    from kvcalc.engines import get_engine, vllm_batched_tokens
    from kvcalc.plot import Series, render_plot

    parallel = Parallel(tp, pp, dcp, dp_attention)
    top = parse_tokens(seq_max, "--seq-max")
    reserve_bytes = parse_bytes(reserve, "--reserve") if reserve is not None else None
    gpu_name, memory = _gpu_memory(gpu, gpu_mem) if (gpu or gpu_mem) else (None, None)
    if engine and get_engine(engine).block_pool and max_num_batched_tokens is None and memory is not None:
        max_num_batched_tokens = vllm_batched_tokens(gpu_name, memory)
    series = []
    specs = [resolve(m) for m in models]
    for spec in specs:
        options = Options(top, batch, kv_dtype, layout, mtp, engine, block_size, parallel,
                          max_num_batched_tokens, state_dtype)
        budget = None
        if memory is not None:
            budget = gpu_budget(spec, options, gpu_mem_bytes=memory, weights_dtype=weights_dtype,
                                mem_util=mem_util, reserve_bytes=reserve_bytes).kv_bytes
        series.append(Series(spec.display_name, curve(spec, options), budget, in_flight_tokens(options)))
    weights = ", ".join(sorted({resolved_weights_dtype(spec, weights_dtype) for spec in specs}))
    where = f" on {gpu_name}, dashed: KV budget after {weights} weights" if gpu_name else ""
    title = f"KV cache per GPU, {kv_dtype}, {engine or 'engine-neutral'}, tp {tp}{where}"
    with _progress(1) as bar:
        bar.describe("drawing the chart")
        chart = render_plot(series, top, output, title, batch)
    _write_file(output, chart, inputs=models)


def _measure_module():
    """``kvcalc.measure``, which imports torch: only ``measure`` pays for it, and says what to
    install when it is missing."""
    try:
        import torch  # noqa: F401
    except ImportError as e:
        raise KvcalcError(
            f"kvcalc measure needs PyTorch ({e}): pip install 'kvcalc[measure]', or a torch build "
            "for your machine first (https://pytorch.org/get-started/locally/)"
        ) from None
    from kvcalc import measure

    return measure


def _gpu_memory(gpu: str | None, gpu_mem: str | None) -> tuple[str, int]:
    if gpu_mem is not None:
        memory = parse_bytes(gpu_mem, "--gpu-mem")
        if memory < 1:
            raise OptionError(f"--gpu-mem: {gpu_mem!r}: a GPU needs some memory")
        return (gpu or gpu_mem), memory
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


class _Bar:
    """What a long command says it is doing: a phase, and steps done of a total."""

    def __init__(self, progress=None, task=None) -> None:
        self._progress, self._task = progress, task

    def describe(self, text: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, description=text)

    def advance(self) -> None:
        if self._progress is not None:
            self._progress.advance(self._task)


@contextmanager
def _progress(total: int) -> Iterator[_Bar]:
    """A transient progress bar on stderr, drawn only on a terminal (into a pipe or a log it would
    leave blank lines) and only by torchrun's rank 0; gone when the command prints its result."""
    from rich.console import Console

    console = Console(stderr=True)
    if not console.is_terminal or os.environ.get("RANK", "0") != "0":
        yield _Bar()
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        yield _Bar(progress, progress.add_task("", total=total))


@app.command("import", cls=_OnceCommand)
def import_config(
    config: Annotated[
        str, typer.Argument(help="A config.json, DeepSeek reference config, GGUF file, checkpoint folder, "
                                 "Hugging Face repo id or - (standard input).")
    ],
    name: Annotated[
        str | None, typer.Option("--name", help="Model name \\[default: from the path].")
    ] = None,
    fmt: Annotated[views.SpecFormat, typer.Option("--format", "-f", help="Spec file format.")] = (
        views.SpecFormat.YAML
    ),
    output: OutputOpt = None,
) -> None:
    """Write the kvcalc spec a config describes, to keep and edit (kvcalc show reads it back)."""
    if name is not None and not NAME_PATTERN.match(name):
        raise OptionError(f"--name: {name!r}: use lowercase letters, digits, '.', '_', '-' (first a letter "
                          "or digit)")
    spec = resolve(config)
    if name is not None:
        spec = spec.replace(name=name)
    _emit(views.spec_text(spec, fmt, origin=config), output, inputs=[config])


@app.command("schema", cls=_OnceCommand)
def schema_command(output: OutputOpt = None) -> None:
    """Print the JSON Schema of every command's --format json output."""
    from importlib.resources import files

    from kvcalc.contract import SCHEMA_FILE

    _emit(files("kvcalc").joinpath(SCHEMA_FILE).read_text(encoding="utf-8"), output)


@app.command("verify", cls=_OnceCommand)
def verify_command(
    model: Annotated[str, typer.Argument(
        help="A bundled name, a config.json, checkpoint folder or Hugging Face repo id.")],
    seq: Annotated[str, typer.Option("--seq", help="Tokens: a prefill of seq - 1, then one decode.")] = "64",
    engine: Annotated[str, typer.Option(
        "--engine", help="The engine whose figure is checked: transformers (its cache is the one run).")
    ] = "transformers",
    fmt: FormatOpt = OutputFormat.TABLE,
    output: OutputOpt = None,
) -> None:
    """Check kvcalc's --engine transformers figure against the cache of transformers' own model.

    Builds the family's model with the real attention but a shrunk MLP, expert count and vocabulary
    and one layer of each kind (a bundled spec: from a config written from it and read back), runs
    it, and sets each tensor its cache holds, times the model's layers of the kind, beside kvcalc's
    part. Exit 0 when every part agrees, 1 when any differs, 2 when transformers cannot build it."""
    from kvcalc.verify import COLUMNS, verify

    if engine != "transformers":
        raise OptionError(f"--engine {engine}: verify runs transformers' own model, so it checks --engine "
                          "transformers only; kvcalc check holds vLLM's and SGLang's figures against their "
                          "logs")
    seq_len = parse_tokens(seq)
    if seq_len < 2:
        raise OptionError(f"--seq: {seq!r}: verify needs at least 2 tokens (a prefill and a decode token)")
    result = verify(model, seq_len)
    if fmt in DATA_FORMATS:
        text = views.data_text(fmt, "verify", COLUMNS, result.rows, result.notes, model=result.model,
                               model_type=result.model_type, seq_len=result.seq_len,
                               built_layers=result.built_layers, agrees=result.agrees)
    else:
        text = render(COLUMNS, result.rows, fmt, title=result.title, notes=result.notes, width=_width(output))
    _emit(text, output, inputs=[model])
    if not result.agrees:
        raise typer.Exit(1)


def _text(command: str, columns: tuple[Column, ...], rows: list, fmt: OutputFormat, output: Path | None,
          *, title: str, notes: Sequence[str] = ()) -> str:
    """``rows`` as a table or Markdown under ``title``, or in CSV and JSON as the command's document
    (``contract.py``); ``notes`` in every format."""
    if fmt in DATA_FORMATS:
        return views.data_text(fmt, command, columns, rows, notes)
    return render(columns, rows, fmt, title=title, notes=notes, width=_width(output))


def _width(output: Path | None) -> int | None:
    """The terminal's columns for text shown on stdout (``render.terminal_width``); a file written
    with ``--output`` is never wrapped."""
    return terminal_width() if output is None or str(output) == "-" else None


def _emit(text: str, output: Path | None, inputs: list[str] = ()) -> None:
    """Write ``text`` to stdout (no ``--output``, or ``-o -``), or to the file ``output``."""
    if output is None or str(output) == "-":
        sys.stdout.write(text)
        return
    _write_file(output, text.encode("utf-8"), inputs)


def _write_file(output: Path, data: bytes, inputs: list[str]) -> None:
    """``data`` to ``output`` by the rules of ``output.py`` (never a partial file, never an input)."""
    from kvcalc.output import write_output

    write_output(data, output, [Path(i) for i in inputs if Path(i).exists()])
    typer.echo(f"kvcalc: wrote {output}", err=True)


def main(argv: list[str] | None = None) -> None:
    """Console entry point. Every error a user can act on is one line on stderr:
    domain errors and unreadable files exit 2, as do usage errors (``--batch 0``)."""
    args = sys.argv[1:] if argv is None else list(argv)
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = app(args=args, prog_name="kvcalc", standalone_mode=False)
    except Interrupted as e:  # Ctrl-C or SIGTERM, after every ``finally`` on the way has run
        _fail(args, e, "interrupted" if e.signum == signal.SIGINT else "terminated", 128 + e.signum)
    except KvcalcError as e:
        _fail(args, e, str(e), 2)
    except OSError as e:
        _fail(args, e, f"{e.filename or 'kvcalc'}: {e.strerror}", 2)
    except Exception as e:
        if not hasattr(e, "format_message"):  # a bug: show it whole
            raise
        # The CLI library's usage errors (bad option values, unknown commands).
        _fail(args, e, _usage_message(e), getattr(e, "exit_code", 2))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    sys.exit(code if isinstance(code, int) else 0)


class Interrupted(BaseException):
    """SIGINT or SIGTERM, raised where the process is so that every ``finally`` runs (temporary
    files, spawned ranks). Not a KeyboardInterrupt: the CLI library would swallow that."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _interrupt(signum, frame) -> None:
    raise Interrupted(signum)


def _usage_message(error: Exception) -> str:
    """The CLI library's message, with the value it refused when it leaves it out (typer checks
    values with pydantic, whose error carries the input)."""
    message = error.format_message().replace("Value error, ", "")
    errors = getattr(error.__cause__, "errors", None)
    if callable(errors):
        value = errors()[0].get("input")
        if value is not None and repr(value) not in message:
            message += f" (got {value!r})"
    return message


def _fail(args: list[str], error: Exception, message: str, status: int) -> None:
    if "--debug" in args:
        raise error
    lines = message.strip().splitlines()
    if lines:  # a usage error with no message (bare `kvcalc`) has already shown the help
        print(f"kvcalc: error: {lines[0]}", file=sys.stderr)
    sys.exit(status)
