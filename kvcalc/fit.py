"""How much fits: the per-GPU KV budget, and the tokens, sequences and context it holds.

Budget, per GPU, as a breakdown that adds up (vLLM's accounting):

    usable     = floor(GPU memory x mem_util)              (vLLM's gpu_memory_utilization, 0.9)
    weights    = ceil(params x bytes per weight / (tp x pp))
    KV budget  = usable - weights - reserve                (reserve: activations, CUDA graphs, runtime)

Answers, on the same cache curve ``compare`` uses (engine, format, layout, replication):
- tokens that fit: whole pages, ``budget // (page x bytes per token per GPU) x page`` -- vLLM's
  ``num_blocks = available // page_size_bytes`` over all layers, and SGLang's
  ``budget // cell_size`` rounded down to its page size;
- concurrent sequences at ``seq_len``: the most sequences whose per-GPU cache fits;
- longest context for one sequence, capped by the model's ``max_position_embeddings``.
Both searches evaluate the curve in constant time per length, so they are exact, not estimated.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from fractions import Fraction

from kvcalc.analytic import Curve, Options, curve
from kvcalc.engines import get_engine
from kvcalc.errors import OptionError
from kvcalc.formats import WEIGHT_FORMATS
from kvcalc.parallel import Parallel, ceil_div
from kvcalc.spec import CompressedAttention, ModelSpec

GIB = 1 << 30

RESERVE_BYTES = {
    "ideal": 0,
    "vllm": 3 * GIB,
    "sglang": 3 * GIB,
    "llama.cpp": 1 * GIB,
    "transformers": 2 * GIB,
    "reference": 2 * GIB,
}
"""Default ``--reserve`` per engine: a typical activation peak plus CUDA graphs and runtime buffers
for a large model -- a starting point to replace with the figure the engine logs."""


@dataclass(frozen=True)
class Fit:
    model: str
    display_name: str
    gpu: str
    gpus: int
    engine: str
    kv_dtype: str
    weights_dtype: str
    seq_len: int
    gpu_mem_bytes: int
    mem_util: str
    usable_bytes: int
    weights_bytes_per_gpu: int
    reserve_bytes: int
    kv_budget_bytes_per_gpu: int
    """May be negative: the weights do not fit."""
    kv_bytes_per_token_per_gpu: int
    page_tokens: int
    max_tokens: int
    max_concurrency: int
    max_context: int | None
    """None when every layer slides and no maximum position is known: any length fits."""
    context_capped: bool
    """max_context is the model's max_position_embeddings, not the memory's limit."""
    smallest_tp: int | None
    """When the weights do not fit: the smallest tp that leaves a KV budget."""
    engine_log: str | None
    """The capacity line the engine logs at start-up for this KV budget (vLLM), when kvcalc
    computes it the engine's way."""
    notes: tuple[str, ...]

    @property
    def weights_fit(self) -> bool:
        return self.kv_budget_bytes_per_gpu > 0


@dataclass(frozen=True)
class Budget:
    """One GPU's memory as a breakdown that adds up: usable - weights - reserve = KV."""

    usable_bytes: int
    weights_bytes_per_gpu: int
    reserve_bytes: int

    @property
    def kv_bytes(self) -> int:
        """May be negative: the weights do not fit."""
        return self.usable_bytes - self.weights_bytes_per_gpu - self.reserve_bytes


def gpu_budget(
    spec: ModelSpec,
    options: Options,
    *,
    gpu_mem_bytes: int,
    weights_dtype: str | None = None,
    mem_util: str = "0.9",
    reserve_bytes: int | None = None,
) -> Budget:
    """The KV budget per GPU of ``spec`` served as ``options`` describes (engine, tp x pp); weights
    in ``weights_dtype``, else as the checkpoint stores them (``resolved_weights_dtype``)."""
    weights_dtype = resolved_weights_dtype(spec, weights_dtype)
    if spec.params is None:
        raise OptionError(f"{spec.name}: no parameter count (params) to size the weights from")
    par = options.parallel
    engine = get_engine(options.engine).name.split("@")[0]
    reserve = RESERVE_BYTES[engine] if reserve_bytes is None else reserve_bytes
    weights = -(-weights_bytes(spec.params, weights_dtype) // (par.tp * par.pp))
    return Budget(int(gpu_mem_bytes * _mem_util(mem_util)), weights, reserve)


def resolved_weights_dtype(spec: ModelSpec, given: str | None) -> str:
    """``--weights-dtype`` when given, else the spec's (read from the config's quantization_config
    or dtype), else bf16."""
    return given or spec.weights_dtype or "bf16"


def weights_bytes(params: int, weights_dtype: str) -> int:
    """Bytes of ``params`` weights in a format, rounded up once."""
    per_weight = _weight_format(weights_dtype)
    total = params * per_weight
    return -(-total.numerator // total.denominator)


def fit(
    spec: ModelSpec,
    options: Options,
    *,
    gpu_name: str,
    gpu_mem_bytes: int,
    weights_dtype: str | None = None,
    mem_util: str = "0.9",
    reserve_bytes: int | None = None,
) -> Fit:
    """The budget breakdown and capacity answers for ``spec`` served as ``options`` describes."""
    c = curve(spec, options)
    par = options.parallel
    given = weights_dtype
    weights_dtype = resolved_weights_dtype(spec, given)
    b = gpu_budget(spec, options, gpu_mem_bytes=gpu_mem_bytes, weights_dtype=weights_dtype,
                   mem_util=mem_util, reserve_bytes=reserve_bytes)
    usable, weights, reserve, budget = b.usable_bytes, b.weights_bytes_per_gpu, b.reserve_bytes, b.kv_bytes
    rate = c.per_gpu_bytes_per_token
    compressed = isinstance(spec.attention, CompressedAttention)
    page = 1 if compressed else c.engine.page_tokens  # DeepSeek-V4's parts are paged each their own way
    fits = budget > 0
    max_tokens = budget // (page * rate) * page if fits else 0

    concurrency = _largest(lambda n: c.peak_per_gpu_bytes(options.seq_len, n) <= budget) if fits else 0
    cap = spec.max_position_embeddings
    context = longest_context(c, budget, limit=cap) if fits else 0
    capped = fits and cap is not None and context == cap
    smallest = None if fits else _smallest_tp(spec, options, gpu_mem_bytes, weights_dtype, mem_util, reserve)
    vllm = fits and c.engine.name.startswith("vllm")
    log = vllm_capacity_line(c, budget, options.seq_len) if vllm else None
    notes = _notes(spec, c, fits, smallest, weights, usable, reserve, given) + list(_log_note(c, vllm, log))
    return Fit(
        model=spec.name, display_name=spec.display_name, gpu=gpu_name, gpus=par.tp * par.pp,
        engine=c.engine.name, kv_dtype=options.kv_dtype, weights_dtype=weights_dtype,
        seq_len=options.seq_len, gpu_mem_bytes=gpu_mem_bytes, mem_util=mem_util,
        usable_bytes=usable, weights_bytes_per_gpu=weights, reserve_bytes=reserve,
        kv_budget_bytes_per_gpu=budget, kv_bytes_per_token_per_gpu=rate, page_tokens=page,
        max_tokens=max_tokens, max_concurrency=concurrency, max_context=context,
        context_capped=capped, smallest_tp=smallest, engine_log=log,
        notes=tuple(notes),
    )


def _log_note(c: Curve, vllm: bool, log: str | None) -> tuple[str, ...]:
    if log is not None:
        return (f"vLLM logs, with this KV budget: {log}",)
    if vllm:
        return ("vLLM's capacity line for sliding, chunked or compressed layers depends on its admission "
                "reservation (max_num_batched_tokens): not modelled yet",)
    return ()


def vllm_capacity_line(c: Curve, budget: int, max_model_len: int) -> str | None:
    """What vLLM logs with ``budget`` bytes of KV cache per GPU, for a model whose layers all keep
    every token in one group of pages (v1/core/kv_cache_utils.py ``update_kv_cache_capacity``):
    num_blocks = budget // block bytes (every layer's page); a request of max_model_len takes
    cdiv(max_model_len, block) of them. None for windows, chunks and compressed layers, whose
    admission reservation depends on max_num_batched_tokens (not modelled)."""
    if not c.uniform:
        return None
    page = c.engine.page_tokens
    num_blocks = budget // (c.per_gpu_bytes_per_token * page)
    concurrency = num_blocks / ceil_div(max_model_len, page)
    return (f"GPU KV cache size: {int(concurrency * max_model_len):,} tokens, Maximum concurrency for "
            f"{max_model_len:,} tokens per request: {concurrency:.2f}x")


_UNBOUNDED = 1 << 40


def longest_context(c: Curve, budget: int, *, batch: int = 1, limit: int | None = None) -> int | None:
    """The longest sequence whose per-GPU cache fits ``budget`` (at most ``limit``); None when
    any length fits (every layer slides and nothing limits it)."""
    longest = _largest(lambda s: c.peak_per_gpu_bytes(s, batch) <= budget, limit=limit)
    return None if longest == _UNBOUNDED else longest


def _largest(fits, limit: int | None = None) -> int:
    """The largest n >= 0 with fits(n) (fits is monotone, fits(0) assumed), up to ``limit``."""
    top = limit or _UNBOUNDED
    if not fits(1):
        return 0
    if fits(top):
        return top
    low, high = 1, 2
    while high < top and fits(high):
        low, high = high, high * 2
    high = min(high, top)
    while high - low > 1:  # fits(low), not fits(high)
        mid = (low + high) // 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    return low


def _smallest_tp(spec, options: Options, mem: int, weights_dtype, mem_util, reserve) -> int | None:
    """The smallest tp (with the same pp, dcp, DP attention) whose KV budget is positive."""
    par = options.parallel
    for tp in range(par.tp + 1, spec.attention.num_heads * par.dp_attention + 1):
        candidate = replace(options, parallel=replace(par, tp=tp))
        try:
            candidate.parallel.check(spec)
        except OptionError:
            continue
        budget = gpu_budget(spec, candidate, gpu_mem_bytes=mem, weights_dtype=weights_dtype,
                            mem_util=mem_util, reserve_bytes=reserve)
        if budget.kv_bytes > 0:
            return tp
    return None


def _notes(spec, c, fits: bool, smallest, weights: int, usable: int, reserve: int,
           given: str | None) -> list[str]:
    notes = []
    if not fits:
        more = f"; the smallest tp that fits is {smallest}" if smallest else "; no tp fits"
        notes.append(
            f"the weights alone ({weights / GIB:.1f} GiB per GPU) leave no KV budget in "
            f"{usable / GIB:.1f} GiB usable minus {reserve / GIB:.1f} GiB reserve{more}"
        )
    if isinstance(spec.attention, CompressedAttention):
        notes.append(
            "tokens that fit count every layer's window whole and compressed entries at 1/R (the "
            "full-context rate); windows, compressor state and block padding are bounded per sequence, "
            "so concurrency and context are computed on the real cache"
        )
    elif spec.layer_counts["sliding"]:
        notes.append(
            "tokens that fit count every layer (the full-context rate); sliding layers hold at most "
            "their window, so concurrency and context are computed on the real cache"
        )
    if given is None:
        source = (f"as {spec.name} publishes them (its weights_dtype)" if spec.weights_dtype
                  else "assumed: the spec does not say how its checkpoint stores them")
        notes.append(f"weights {resolved_weights_dtype(spec, None)}: {source}; --weights-dtype overrides")
    return notes


def _weight_format(name: str) -> Fraction:
    try:
        return WEIGHT_FORMATS[name.lower()][0]
    except KeyError:
        raise OptionError(
            f"--weights-dtype: unknown format {name!r}; choose one of {', '.join(WEIGHT_FORMATS)}"
        ) from None


def _mem_util(text: str) -> Fraction:
    try:
        util = Fraction(text)
    except (ValueError, ZeroDivisionError):
        raise OptionError(f"--mem-util: {text!r} is not a number") from None
    if not 0 < util <= 1:
        raise OptionError(f"--mem-util: {text} must be above 0 and at most 1")
    return util


def check_parallel(par: Parallel, gpus: int | None) -> Parallel:
    """``--gpus`` alone sets tp = gpus / pp; with --tp it must equal tp x pp."""
    if gpus is None:
        return par
    if gpus < 1:
        raise OptionError(f"--gpus: {gpus} must be at least 1")
    if par.tp == 1 and gpus % par.pp == 0:
        return replace(par, tp=gpus // par.pp)
    if gpus != par.tp * par.pp:
        raise OptionError(f"--gpus {gpus}: must equal --tp {par.tp} x --pp {par.pp}")
    return par
