"""``kvcalc check LOG``: an engine's start-up log against kvcalc's arithmetic.

A log states the memory the engine gave its KV cache and the figures it derived from it. This
module reads both, recomputes each figure from that memory with the engine's own arithmetic
(``fit.VllmCapacity``, ``fit.SglangPools``), and says for each whether they agree. The memory is
logged rounded, so a figure agrees when it lies between what the least and the most memory that
rounds to the logged value give.

vLLM 0.33 (format strings, paths inside the vllm package):
- ``Initializing a V1 LLM engine (v%s) with config: %s`` (v1/engine/core.py): the version, then
  ``model=..., dtype=..., max_seq_len=..., tensor_parallel_size=..., pipeline_parallel_size=...,
  data_parallel_size=..., decode_context_parallel_size=..., kv_cache_dtype=...``
  (config/vllm.py ``VllmConfig.__str__``);
- ``Chunked prefill is enabled with max_num_batched_tokens=%d.`` (config/scheduler.py);
- ``Available KV cache memory: %s GiB`` (v1/worker/gpu_worker.py; ``format_gib``: rounded to 2
  decimals);
- ``%s KV cache size: %s tokens, Maximum concurrency for %s tokens per request: %.2fx``
  (v1/core/kv_cache_utils.py ``update_kv_cache_capacity``).

SGLang 0.5.23 (paths inside the sglang package; docs/facts/sglang-0.5.23-pools.md section 5):
- ``server_args={...}`` (srt/entrypoints/engine.py): ``'model_path'``, ``'dtype'``,
  ``'kv_cache_dtype'``, ``'tp_size'``, ``'pp_size'``, ``'page_size'``, ``'mem_fraction_static'``,
  ``'swa_full_tokens_ratio'``;
- ``KV Cache is allocated. dtype: %s, #tokens: %d, K size: %.2f GB, V size: %.2f GB`` (``KV size``
  for MLA; ``Full`` and ``SWA`` before it for a hybrid SWA pool; srt/mem_cache/memory_pool.py):
  each pool holds #tokens + one page, sizes in GiB;
- ``Use sliding window memory pool. full_layer_tokens=%d, swa_layer_tokens=%d``
  (model_executor/pool_configurator.py);
- ``max_total_num_tokens=%d, ..., max_running_requests=%d, context_len=%d, ...``
  (managers/scheduler.py).
SGLang logs no version at start-up; kvcalc models 0.5.23.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from kvcalc.analytic import Curve, Options, curve
from kvcalc.capacity import MAMBA_SLOTS_PER_REQUEST, pool_bytes_per_token, vllm_capacity
from kvcalc.catalog import bundled_names, resolve
from kvcalc.engines import DEFAULT_BATCHED_TOKENS, SWA_FULL_TOKENS_RATIO, WindowRule, in_flight_batches
from kvcalc.errors import KvcalcError, SpecError, UnknownModelError
from kvcalc.files import read_bytes
from kvcalc.parallel import Parallel
from kvcalc.spec import ModelSpec

GIB = 1 << 30
MAX_LOG_BYTES = 256 << 20
VLLM_VERSION = "0.33"


_TORCH_DTYPES = {"torch.bfloat16": "bf16", "torch.float16": "fp16", "torch.float32": "fp32",
                 "torch.float8_e4m3fn": "fp8_e4m3", "torch.float8_e5m2": "fp8_e5m2"}
"""A logged torch dtype as a kvcalc format."""


class LogError(KvcalcError):
    """A log kvcalc cannot read: the line it needs is missing or malformed."""


class Verdict(StrEnum):
    AGREE = "agree"
    DISAGREE = "disagree"


@dataclass(frozen=True)
class Figure:
    """One figure the log states, beside what kvcalc computes from the logged memory."""

    name: str
    logged: str
    computed: str
    """The value, or the range the memory's rounding allows (``low .. high``)."""
    verdict: Verdict
    source: str


@dataclass(frozen=True)
class Check:
    engine: str
    version: str | None
    model: str
    """The spec kvcalc computed with."""
    logged_model: str
    settings: tuple[tuple[str, str], ...]
    """What kvcalc read from the log (and assumed where the log is silent), in order."""
    figures: tuple[Figure, ...]

    @property
    def agrees(self) -> bool:
        return all(f.verdict is Verdict.AGREE for f in self.figures)


def check_log(path: Path, model: str | None = None, max_num_batched_tokens: int | None = None,
              block_size: int | None = None) -> Check:
    """Read the vLLM or SGLang start-up log at ``path`` and check every capacity figure it states."""
    text = _read_log(path)
    if "Initializing a V1 LLM engine" in text or "Available KV cache memory" in text:
        return _check_vllm(path, text, model, max_num_batched_tokens, block_size)
    if "server_args=" in text or "KV Cache is allocated" in text:
        if max_num_batched_tokens is not None:
            raise LogError("--max-num-batched-tokens: a vLLM setting; this is an SGLang log")
        return _check_sglang(path, text, model, block_size)
    raise LogError(f"{path}: neither a vLLM log (no \"Initializing a V1 LLM engine\" line) nor an SGLang "
                   "log (no \"server_args=\" line)")


def _read_log(path: Path) -> str:
    """The log's text (bounded; a pipe or /dev/stdin without waiting on a missing writer)."""
    data = read_bytes(path, MAX_LOG_BYTES, "a log file (give the start-up part of it)")
    return data.decode("utf-8", errors="replace").replace("\r\n", "\n")


# --- vLLM ---------------------------------------------------------------------------------------

_VLLM_CONFIG = re.compile(r"Initializing a V1 LLM engine \(v(?P<version>[^)]*)\) with config: (?P<config>.*)")
_VLLM_MEMORY = re.compile(r"Available KV cache memory: (?P<gib>-?[0-9.]+) GiB")
_VLLM_CAPACITY = re.compile(r"(?P<pool>\S+) KV cache size: (?P<tokens>[0-9,]+) tokens, Maximum concurrency "
                            r"for (?P<len>[0-9,]+) tokens per request: (?P<x>[0-9.]+)x")
_VLLM_BATCHED = re.compile(r"Chunked prefill is enabled with max_num_batched_tokens=(?P<n>[0-9]+)\.")
_VLLM_HYBRID_BLOCK = re.compile(r"Setting attention block size to (?P<n>[0-9]+) tokens to ensure that "
                                r"attention page size is >= mamba page size")


def _check_vllm(path: Path, text: str, model: str | None, batched: int | None,
                block_size: int | None) -> Check:
    config_line = _search(_VLLM_CONFIG, text, path, "Initializing a V1 LLM engine (v...) with config: ...")
    config = config_line["config"]
    version = config_line["version"]
    logged_model = _config_value(config, "model", path)
    spec = _spec(model, logged_model, path)
    kv_dtype = _vllm_kv_dtype(_config_value(config, "kv_cache_dtype", path),
                              _config_value(config, "dtype", path))
    max_len = _int(_config_value(config, "max_seq_len", path), "max_seq_len", path)
    tp = _int(_config_value(config, "tensor_parallel_size", path), "tensor_parallel_size", path)
    pp = _int(_config_value(config, "pipeline_parallel_size", path), "pipeline_parallel_size", path)
    dcp_size = _config_value(config, "decode_context_parallel_size", path, "1")
    dcp = _int(dcp_size, "decode_context_parallel_size", path)
    logged_batched = _VLLM_BATCHED.search(text)
    if batched is None and logged_batched:
        batched, batched_from = int(logged_batched["n"]), "logged"
    else:
        batched_from = ("--max-num-batched-tokens" if batched
                        else "assumed: vllm serve's default on an H100/H200")
        batched = batched or DEFAULT_BATCHED_TOKENS
    options = Options(max_len, kv_dtype=kv_dtype, engine="vllm", block_size=block_size,
                      parallel=Parallel(tp=tp, pp=pp, dcp=dcp), max_num_batched_tokens=batched)
    c = curve(spec, options)
    _search(_VLLM_MEMORY, text, path, "Available KV cache memory: X GiB")
    # every worker logs its own; the pool is sized from the least (kv_cache_planning.py get_kv_cache_configs)
    memory = min((m["gib"] for m in _VLLM_MEMORY.finditer(text)), key=float)
    capacity = _search(_VLLM_CAPACITY, text, path, "KV cache size: N tokens, Maximum concurrency for L "
                       "tokens per request: X.XXx")
    in_flight = batched * in_flight_batches(pp)
    settings = (
        ("vLLM", version), ("model", f"{logged_model} (kvcalc: {spec.name})"), ("kv-cache dtype", kv_dtype),
        ("page", f"{c.engine.page_tokens} tokens ({c.engine.name})"), ("tp x pp", f"{tp} x {pp}"),
        ("max_model_len", f"{max_len:,}"),
        ("max_num_batched_tokens", f"{batched:,} ({batched_from}); in flight {in_flight:,}"),
        ("KV cache memory", f"{memory} GiB (the least any worker logs)"),
    )
    figures = _vllm_figures(c, memory, capacity, max_len, in_flight, path)
    hybrid_block = _VLLM_HYBRID_BLOCK.search(text)
    if hybrid_block is not None:
        logged = int(hybrid_block["n"])
        figures += (Figure("attention block size (hybrid)", f"{logged:,}", f"{c.engine.page_tokens:,}",
                           _verdict(logged == c.engine.page_tokens),
                           "platforms/interface.py _align_hybrid_block_size"),)
    if not version.startswith(VLLM_VERSION):
        settings += (("note", f"kvcalc follows vLLM {VLLM_VERSION}'s arithmetic; this log is v{version}"),)
    return Check("vllm", version, spec.name, logged_model, settings, figures)


def _vllm_figures(c: Curve, memory: str, capacity: re.Match, max_len: int, in_flight: int,
                  path: Path) -> tuple[Figure, ...]:
    logged_len = _int(capacity["len"].replace(",", ""), "Maximum concurrency for L tokens", path)
    low, high = _gib_range(memory)
    if high <= 0:
        raise LogError(f"{path}: Available KV cache memory: {memory} GiB leaves no KV cache")
    at = [vllm_capacity(c, max(m, 0), logged_len, in_flight) for m in (low, high)]
    tokens = int(capacity["tokens"].replace(",", ""))
    concurrency = float(capacity["x"])
    source = "v1/core/kv_cache_utils.py update_kv_cache_capacity"
    figures = [
        _within("GPU KV cache size (tokens)", f"{tokens:,}", tokens, at[0].tokens, at[1].tokens,
                lambda v: f"{v:,}", source),
        _within("Maximum concurrency", f"{capacity['x']}x", concurrency, at[0].concurrency, at[1].concurrency,
                lambda v: f"{v:.2f}x", source, rounding=0.005),
    ]
    if logged_len != max_len:
        figures.append(Figure("max_model_len", f"{logged_len:,}", f"{max_len:,}", Verdict.DISAGREE,
                              "the config line's max_seq_len"))
    return tuple(figures)


def _vllm_kv_dtype(kv_cache_dtype: str, dtype: str) -> str:
    """vLLM's kv_cache_dtype; ``auto`` caches in the model's dtype (``torch.bfloat16``)."""
    if kv_cache_dtype != "auto":
        return kv_cache_dtype
    return _TORCH_DTYPES.get(dtype, dtype)


def _config_value(config: str, key: str, path: Path, default: str | None = None) -> str:
    """``key=value`` in vLLM's config line."""
    return _setting(config, rf"(?:^|, ){re.escape(key)}=", r"[^,]*", f"the config line has no {key}=", path,
                    default)


# --- SGLang -------------------------------------------------------------------------------------

_SGLANG_ALLOCATED = re.compile(r"(?P<label>Full |SWA )?KV Cache is allocated\. dtype: (?P<dtype>[\w.]+), "
                               r"#tokens: (?P<tokens>[0-9]+), (?:K size: (?P<k>[0-9.]+) GB, V size: "
                               r"(?P<v>[0-9.]+) GB|KV size: (?P<kv>[0-9.]+) GB)")
_SGLANG_SWA = re.compile(r"Use sliding window memory pool\. full_layer_tokens=(?P<full>[0-9]+), "
                         r"swa_layer_tokens=(?P<swa>[0-9]+)")
_SGLANG_SUMMARY = re.compile(r"max_total_num_tokens=(?P<total>[0-9]+), .*?"
                             r"max_running_requests=(?P<mrr>[0-9]+), context_len=(?P<context>[0-9]+)")

_SGLANG_MAMBA = re.compile(r"Mamba Cache is allocated\. max_mamba_cache_size: (?P<slots>[0-9]+), "
                           r"conv_state size: (?P<conv>[0-9.]+) ?GB, ssm_state size: (?P<ssm>[0-9.]+) ?GB")


def _check_sglang(path: Path, text: str, model: str | None, block_size: int | None) -> Check:
    args = _search(re.compile(r"server_args=(?P<args>.*)"), text, path, "server_args={...}")["args"]
    logged_model = _arg(args, "model_path", path)
    spec = _spec(model, logged_model, path)
    tp = _int(_arg(args, "tp_size", path), "tp_size", path)
    pp = _int(_arg(args, "pp_size", path, "1"), "pp_size", path)
    page = block_size or _int(_arg(args, "page_size", path, "1"), "page_size", path)
    ratio = _arg(args, "swa_full_tokens_ratio", path, str(SWA_FULL_TOKENS_RATIO))
    if float(ratio) != SWA_FULL_TOKENS_RATIO:
        raise LogError(f"{path}: swa_full_tokens_ratio {ratio}: kvcalc models SGLang's default, "
                       f"{SWA_FULL_TOKENS_RATIO}")
    allocated = [m for m in _SGLANG_ALLOCATED.finditer(text)]
    if not allocated:
        raise LogError(f"{path}: no \"KV Cache is allocated. dtype: ..., #tokens: N, ...\" line")
    kv_dtype = _sglang_kv_dtype(_arg(args, "kv_cache_dtype", path, "auto"), allocated[0]["dtype"])
    options = Options(1, kv_dtype=kv_dtype, engine="sglang", block_size=page, parallel=Parallel(tp=tp, pp=pp))
    c = curve(spec, options)
    pools = {(m["label"] or "").strip() or "Full": m for m in allocated}
    swa = _SGLANG_SWA.search(text)
    settings = (
        ("SGLang", "0.5.23 (its log names no version)"), ("model", f"{logged_model} (kvcalc: {spec.name})"),
        ("kv-cache dtype", kv_dtype), ("page", f"{page} token{'s' * (page > 1)}"),
        ("tp x pp", f"{tp} x {pp}"),
    )
    mamba = _SGLANG_MAMBA.search(text)
    if c.per_gpu_state_bytes and mamba is None:
        raise LogError(f"{path}: {spec.name} keeps recurrent state, but there is no \"Mamba Cache is "
                       "allocated. max_mamba_cache_size: ...\" line")
    figures = _sglang_figures(c, pools, swa, _SGLANG_SUMMARY.search(text), page, path,
                              mamba if c.per_gpu_state_bytes else None)
    return Check("sglang", None, spec.name, logged_model, settings, figures)


def _sglang_figures(c: Curve, pools: dict[str, re.Match], swa: re.Match | None, summary: re.Match | None,
                    page: int, path: Path, mamba: re.Match | None) -> tuple[Figure, ...]:
    """Each pool's #tokens from the GiB it logs (which hold #tokens + one page), then the hybrid
    pool's split, the state pool's size from its slots, and the summary line, from the full pool's
    tokens (and the state slots)."""
    full = pools["Full"]
    figures = []
    slots = None
    if mamba is not None:
        slots = int(mamba["slots"])
        low = sum(_gib_range(mamba[k])[0] for k in ("conv", "ssm"))
        high = sum(_gib_range(mamba[k])[1] for k in ("conv", "ssm"))
        state = (slots + 1) * c.per_gpu_state_bytes
        per_slot = c.per_gpu_state_bytes
        figures.append(Figure(f"state pool: (max_mamba_cache_size + 1) x {per_slot:,} B a slot",
                              f"{mamba['conv']} + {mamba['ssm']} GB", f"{state / GIB:.4f} GiB",
                              _verdict(low <= state <= high),
                              "srt/mem_cache/memory_pool.py MambaPool: one padding slot"))
    hybrid = "SWA" in pools
    if hybrid and swa is None:
        raise LogError(f"{path}: an SWA pool is allocated but there is no \"Use sliding window memory "
                       "pool\" line")
    for label, m in pools.items():
        per_token = _sglang_pool_bytes_per_token(c, label if hybrid else None)
        logged = int(m["tokens"])
        gib = [m[k] for k in ("k", "v", "kv") if m[k] is not None]
        low = sum(_gib_range(g)[0] for g in gib)
        high = sum(_gib_range(g)[1] for g in gib)
        figures.append(_within(f"{label if hybrid else 'KV'} pool #tokens (from its {' + '.join(gib)} GB)",
                               f"{logged:,}", logged,
                               max(low // per_token - page, 0), high // per_token - page, lambda v: f"{v:,}",
                               "srt/mem_cache/memory_pool.py: (#tokens + page) x bytes per token"))
    tokens = int(full["tokens"])
    if hybrid:
        expected = int(tokens * SWA_FULL_TOKENS_RATIO) // page * page
        logged_swa = int(pools["SWA"]["tokens"])
        figures.append(Figure(f"SWA pool #tokens = {SWA_FULL_TOKENS_RATIO} x full, in pages",
                              f"{logged_swa:,}", f"{expected:,}", _verdict(logged_swa == expected),
                              "model_executor/pool_configurator.py HybridSWAPoolConfigurator"))
        if int(swa["full"]) != tokens or int(swa["swa"]) != logged_swa:
            figures.append(Figure("full_layer_tokens, swa_layer_tokens", f"{swa['full']}, {swa['swa']}",
                                  f"{tokens}, {logged_swa}", Verdict.DISAGREE, "the pools' own lines"))
    elif c.engine.window_rule is WindowRule.POOL_SHARE:
        raise LogError(f"{path}: {c.engine.name} keeps this model's sliding layers in an SWA pool, but the "
                       "log allocates one pool (was --disable-hybrid-swa-memory given?)")
    if summary is not None:
        total, context = int(summary["total"]), int(summary["context"])
        figures.append(Figure("max_total_num_tokens", f"{total:,}", f"{tokens:,}", _verdict(total == tokens),
                              "managers/scheduler.py: the full pool's #tokens"))
        running = min(max(min(int(tokens / context * 512), 4096), 2048), tokens // 2)
        rule = "min(max(min(int(tokens / context_len x 512), 4096), 2048), tokens // 2"
        if slots is not None:
            running = min(running, slots // MAMBA_SLOTS_PER_REQUEST)
            rule += f", max_mamba_cache_size // {MAMBA_SLOTS_PER_REQUEST}"
        logged_running = int(summary["mrr"])
        figures.append(Figure("max_running_requests", f"{logged_running:,}", f"{running:,}",
                              _verdict(logged_running == running),
                              f"{rule}) (mem_cache/kv_cache_configurator.py; unless --max-running-requests)"))
    return tuple(figures)


def _sglang_pool_bytes_per_token(c: Curve, label: str | None) -> int:
    """Bytes per token of one pool on the fullest GPU: every layer's (one pool), the full layers'
    or the sliding layers' (``fit.pool_bytes_per_token``)."""
    if label is None:
        return c.per_gpu_bytes_per_token
    return max(pool_bytes_per_token(stage)[0 if label == "Full" else 1] for stage in c.stages)


def _sglang_kv_dtype(kv_cache_dtype: str, torch_dtype: str) -> str:
    if kv_cache_dtype not in ("auto", "None"):
        return kv_cache_dtype.strip("'")
    return _TORCH_DTYPES.get(torch_dtype, torch_dtype)


def _arg(args: str, key: str, path: Path, default: str | None = None) -> str:
    """``'key': value`` in SGLang's server_args dict."""
    return _setting(args, rf"'{re.escape(key)}': ", r"[^,}]*", f"the server_args line has no '{key}'", path,
                    default)


# --- shared -------------------------------------------------------------------------------------

def _spec(model: str | None, logged: str, path: Path) -> ModelSpec:
    """``--model``, else the log's model: the bundled model its last path part names, else the
    model itself (a spec file, a folder, a Hugging Face repo id)."""
    if model is not None:
        return resolve(model)
    bundled = logged.rstrip("/").rsplit("/", 1)[-1].lower()
    if bundled in bundled_names():
        return resolve(bundled)
    try:
        return resolve(logged)
    except (UnknownModelError, SpecError) as e:
        raise LogError(f"{path}: the log's model {logged!r} is not a bundled model, and reading it failed "
                       f"({e}); name one with --model") from None


def _setting(line: str, prefix: str, bare: str, missing: str, path: Path, default: str | None) -> str:
    """The value after ``prefix`` in ``line``: a quoted string (without its quotes) or ``bare``."""
    found = re.search(rf"{prefix}('(?:[^'\\]|\\.)*'|{bare})", line)
    if found is None:
        if default is not None:
            return default
        raise LogError(f"{path}: {missing}")
    value = found[1].strip()
    return value[1:-1] if value.startswith("'") else value


def _gib_range(text: str) -> tuple[int, int]:
    """The least and most bytes that round to ``text`` GiB at 2 decimals (vLLM's ``format_gib``
    rounds to 2 decimals and may print fewer: 61.2; SGLang prints ``%.2f``)."""
    value = float(text)
    return math.ceil((value - 0.005) * GIB), math.floor((value + 0.005) * GIB)


def _within(name: str, logged: str, value: float, low: float, high: float, show: Callable, source: str,
            rounding: float = 0) -> Figure:
    low, high = min(low, high), max(low, high)
    computed = show(low) if low == high else f"{show(low)} .. {show(high)}"
    return Figure(name, logged, computed, _verdict(low - rounding <= value <= high + rounding), source)


def _verdict(ok: bool) -> Verdict:
    return Verdict.AGREE if ok else Verdict.DISAGREE


def _search(pattern: re.Pattern, text: str, path: Path, what: str) -> re.Match:
    found = pattern.search(text)
    if found is None:
        raise LogError(f"{path}: no \"{what}\" line")
    return found


def _int(text: str, field: str, path: Path) -> int:
    try:
        return int(text)
    except ValueError:
        raise LogError(f"{path}: {field}={text!r} is not a whole number") from None

