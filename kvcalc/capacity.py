"""How much fits: the per-GPU KV budget, and the tokens, sequences and context it holds.

Budget, per GPU, as a breakdown that adds up (vLLM's accounting):

    usable     = floor(GPU memory x mem_util)              (vLLM's gpu_memory_utilization, 0.9)
    weights    = ceil(params x bytes per weight / (tp x pp))
    KV budget  = usable - weights - reserve                (reserve: activations, CUDA graphs, runtime)

Answers, on the same cache curve ``compare`` uses (engine, format, layout, replication):
- tokens that fit: whole pages, ``budget // (page x bytes per token per GPU) x page`` (SGLang's
  ``budget // cell_size`` rounded down to its page size);
- concurrent sequences at ``seq_len``: the most sequences whose per-GPU cache fits;
- longest context for one sequence, capped by the model's ``max_position_embeddings``.
Both searches evaluate the curve in constant time per length, so they are exact, not estimated.

vLLM answers its own way (``VllmCapacity``): its pool holds ``budget // bytes per block`` blocks,
one of them the null block; a request of ``seq_len`` reserves blocks in every KV-cache group
(sliding and chunked layers more than they hold after prefill); concurrency is how many
reservations fit, the longest context the longest whose reservation fits (its start-up check), and
tokens are the "GPU KV cache size" it logs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from fractions import Fraction

from kvcalc.analytic import Curve, Options, curve, in_flight_tokens, with_default_engine
from kvcalc.engines import (
    SWA_FULL_TOKENS_RATIO,
    WindowRule,
    get_engine,
    in_flight_batches,
    vllm_batched_tokens,
)
from kvcalc.errors import OptionError
from kvcalc.formats import WEIGHT_FORMATS
from kvcalc.parallel import Parallel, ceil_div
from kvcalc.plan import Growth
from kvcalc.spec import CompressedAttention, LayerKind, ModelSpec

GIB = 1 << 30
DEFAULT_MEM_UTIL = "0.9"
"""vLLM's gpu_memory_utilization default."""

RESERVE_BYTES = {
    "ideal": 0,
    "vllm": 3 * GIB,
    "sglang": 0,  # activations and CUDA graphs live outside mem_fraction_static
    "llama.cpp": 1 * GIB,
    "transformers": 2 * GIB,
    "reference": 2 * GIB,
}
"""Default ``--reserve`` per engine: a typical activation peak plus CUDA graphs and runtime buffers
for a large model -- a starting point to replace with the figure the engine logs. SGLang's
``mem_fraction_static`` (``--mem-util``) already leaves them out: weights and KV pools get that
fraction of the memory free before loading, everything else the rest
(docs/facts/sglang-0.5.23-pools.md section 2)."""


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
    """The capacity line the engine logs at start-up for this KV budget (vLLM)."""
    max_num_batched_tokens: int | None
    """vLLM: the scheduler budget its admission reservation counts (the flag, or vLLM's default for
    the GPU); None for other engines."""
    request_bytes_per_gpu: int
    """What the engine reserves on the fullest GPU to admit one sequence of ``seq_len`` tokens (vLLM's
    admission reservation); elsewhere what the sequence holds at its peak."""
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
    as params x ``weights_dtype`` when given, else the checkpoint's own bytes where the spec states
    them (``weights_bytes``), else params x the checkpoint's format (``resolved_weights_dtype``)."""
    par = options.parallel
    if weights_dtype is None and spec.weights_bytes is not None:
        total = spec.weights_bytes
    elif spec.params is None:
        raise OptionError(f"{spec.name}: no parameter count (params) to size the weights from")
    else:
        total = weights_bytes(spec.params, resolved_weights_dtype(spec, weights_dtype))
    engine = get_engine(with_default_engine(spec, options).engine).name.split("@")[0]
    reserve = RESERVE_BYTES[engine] if reserve_bytes is None else reserve_bytes
    weights = -(-total // (par.tp * par.pp))
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
    mem_util: str | None = None,
    reserve_bytes: int | None = None,
    state_ratio: float | None = None,
) -> Fit:
    """The budget breakdown and capacity answers for ``spec`` served as ``options`` describes.

    ``state_ratio`` is SGLang's --mamba-full-memory-ratio (None: its 0.9).

    Under vLLM the answers are its own: concurrency and the longest context from the blocks it
    reserves to admit a request (``VllmCapacity``), with max_num_batched_tokens at vLLM's default for
    the GPU unless ``options`` gives it."""
    options = with_default_engine(spec, options)
    if options.engine and get_engine(options.engine).block_pool and options.max_num_batched_tokens is None:
        options = replace(options, max_num_batched_tokens=vllm_batched_tokens(gpu_name, gpu_mem_bytes))
    c = curve(spec, options)
    par = options.parallel
    given = weights_dtype
    given_util, mem_util = mem_util, mem_util or DEFAULT_MEM_UTIL
    weights_dtype = resolved_weights_dtype(spec, given)
    if given is None and spec.weights_bytes is not None:
        weights_dtype = spec.weights_dtype or "as stored"
    b = gpu_budget(spec, options, gpu_mem_bytes=gpu_mem_bytes, weights_dtype=given,
                   mem_util=mem_util, reserve_bytes=reserve_bytes)
    usable, weights, reserve, budget = b.usable_bytes, b.weights_bytes_per_gpu, b.reserve_bytes, b.kv_bytes
    rate = c.per_gpu_bytes_per_token
    compressed = isinstance(spec.attention, CompressedAttention)
    page = 1 if compressed else c.engine.page_tokens  # DeepSeek-V4's parts are paged each their own way
    fits = budget > 0
    max_tokens = budget // (page * rate) * page if fits else 0

    cap = spec.max_position_embeddings
    in_flight = in_flight_tokens(options)
    vllm = vllm_capacity(c, budget, options.seq_len, in_flight) if fits and c.block_bytes else None
    sglang = c.engine.name.startswith("sglang")
    if state_ratio is not None and not (sglang and c.per_gpu_state_bytes):
        raise OptionError(f"--mamba-full-memory-ratio {state_ratio:g}: SGLang's split between a hybrid's "
                          "recurrent state and its KV cache; it needs --engine sglang and a model with "
                          "recurrent layers")
    ratio = MAMBA_FULL_MEMORY_RATIO if state_ratio is None else state_ratio
    pools = sglang_pools(c, budget, options.seq_len, ratio) if fits and sglang else None
    if pools is not None and pools.state_slots is not None:
        tokens = ceil_div(options.seq_len, page) * page
        max_tokens = pools.full_tokens
        concurrency = min(pools.full_tokens // tokens, pools.max_running) * par.dp_attention
        context = pools.full_tokens if cap is None else min(pools.full_tokens, cap)
    elif pools is not None and pools.swa_tokens is not None:
        tokens = ceil_div(options.seq_len, page) * page
        max_tokens = pools.full_tokens
        concurrency = pools.full_tokens // tokens * par.dp_attention
        context = pools.full_tokens if cap is None else min(pools.full_tokens, cap)
    elif vllm is not None:
        max_tokens = vllm.tokens
        concurrency = vllm.admitted * par.dp_attention  # each DP rank its own engine core and pool
        context = longest_context(c, budget, limit=cap, in_flight=in_flight)
    else:
        concurrency = _largest(lambda n: c.peak_per_gpu_bytes(options.seq_len, n) <= budget) if fits else 0
        context = longest_context(c, budget, limit=cap) if fits else 0
    capped = fits and cap is not None and context == cap
    smallest = None if fits else _smallest_tp(spec, options, gpu_mem_bytes, given, mem_util, reserve)
    own_rules = vllm is not None or (pools is not None and pools.own_rules)
    notes = _notes(spec, c, fits, smallest, weights, usable, reserve, given, own_rules)
    if vllm is not None:
        notes += _vllm_notes(spec, c, vllm, options)
    if pools is not None:
        notes += pools.notes()
    if c.engine.name.startswith("sglang") and given_util is None:
        notes.append(f"mem_fraction_static {DEFAULT_MEM_UTIL} assumed: SGLang picks its own from the GPU, "
                     "the model and tp (srt/arg_groups/memory_hook.py: 0.903 for a text GQA model on one "
                     "H200) and logs it in server_args; give it with --mem-fraction-static")
    request = (vllm.request_blocks * vllm.block_bytes if vllm is not None
               else c.peak_per_gpu_bytes(options.seq_len))
    return Fit(
        model=spec.name, display_name=spec.display_name, gpu=gpu_name, gpus=par.tp * par.pp,
        engine=c.engine.name, kv_dtype=options.kv_dtype, weights_dtype=weights_dtype,
        seq_len=options.seq_len, gpu_mem_bytes=gpu_mem_bytes, mem_util=mem_util,
        usable_bytes=usable, weights_bytes_per_gpu=weights, reserve_bytes=reserve,
        kv_budget_bytes_per_gpu=budget, kv_bytes_per_token_per_gpu=rate, page_tokens=page,
        max_tokens=max_tokens, max_concurrency=concurrency, max_context=context,
        context_capped=capped, smallest_tp=smallest,
        engine_log=vllm.line if vllm else pools.line if pools else None,
        max_num_batched_tokens=options.max_num_batched_tokens if c.block_bytes else None,
        request_bytes_per_gpu=request, notes=tuple(notes),
    )


@dataclass(frozen=True)
class VllmCapacity:
    """What vLLM 0.33 makes of a KV budget at start-up: its pool of blocks, the blocks it reserves
    per request of max_model_len, and the line it logs (v1/core/kv_cache_utils.py
    ``get_max_concurrency_for_kv_cache_config`` and ``update_kv_cache_capacity``)."""

    num_blocks: int
    """budget // bytes per block (the fewest of any pipeline stage); one of them is the null block."""
    block_bytes: int
    request_blocks: int
    """Blocks reserved per request, summed over the KV-cache groups."""
    max_model_len: int

    @property
    def usable_blocks(self) -> int:
        """Blocks a request may use: the pool less its null block (v1/core/block_pool.py)."""
        return self.num_blocks - 1

    @property
    def concurrency(self) -> float:
        """vLLM's "Maximum concurrency": num_blocks / blocks per request, the null block counted."""
        return self.num_blocks / self.request_blocks

    @property
    def admitted(self) -> int:
        """Requests of max_model_len whose reservations fit the usable blocks at once."""
        return self.usable_blocks // self.request_blocks

    @property
    def tokens(self) -> int:
        """vLLM's "GPU KV cache size": int(concurrency x max_model_len)."""
        return int(self.concurrency * self.max_model_len)

    @property
    def line(self) -> str:
        return (f"GPU KV cache size: {self.tokens:,} tokens, Maximum concurrency for {self.max_model_len:,} "
                f"tokens per request: {self.concurrency:.2f}x")


def vllm_capacity(c: Curve, budget: int, max_model_len: int, in_flight: int) -> VllmCapacity:
    """vLLM's pool for ``budget`` bytes of KV cache per GPU, serving requests of ``max_model_len``
    with ``in_flight`` tokens scheduled but not settled. Every stage's GPU sizes its pool from its own
    blocks; vLLM keeps the fewest (kv_cache_planning.py ``get_kv_cache_configs``)."""
    return VllmCapacity(c.usable_blocks(budget) + 1, max(c.block_bytes),
                        c.request_blocks(max_model_len, in_flight), max_model_len)


MAMBA_FULL_MEMORY_RATIO = 0.9
"""SGLang's --mamba-full-memory-ratio: the state pool gets ratio / (1 + ratio) of the KV budget."""
MAMBA_SLOTS_PER_REQUEST = 5
"""SGLang caps max_running_requests at its state slots // 5: 3 per request, and 2 tracking slots
with the extra buffer its hybrid models take under the overlap scheduler (mem_cache/
kv_cache_configurator.py ``_calculate_mamba_ratio``, mem_cache/allocation_sizing.py)."""


@dataclass(frozen=True)
class SglangPools:
    """SGLang 0.5.23's token pools for a KV budget (docs/facts/sglang-0.5.23-pools.md sections 1
    and 3): the full pool's ``max_total_num_tokens``, and for a hybrid SWA model the SWA pool's; for
    a linear-attention or Mamba hybrid, the state slots sized first (docs/facts/
    vllm-sglang-recurrent-state.md B.2)."""

    full_tokens: int
    swa_tokens: int | None
    """None: one pool for every layer."""
    state_slots: int | None = None
    """max_mamba_cache_size; None: no recurrent layers."""
    state_bytes: int = 0
    """What the state pool takes: (slots + 1) x a request's state."""
    max_running: int | None = None
    """max_running_requests for requests of the served context (with state: capped at slots // 5)."""
    state_ratio: float = MAMBA_FULL_MEMORY_RATIO
    """--mamba-full-memory-ratio: the state pool's share is ratio / (1 + ratio)."""

    @property
    def own_rules(self) -> bool:
        """Whether concurrency and context follow the pools' rules rather than bytes held."""
        return self.swa_tokens is not None or self.state_slots is not None

    @property
    def line(self) -> str:
        """What SGLang logs (managers/scheduler.py; model_executor/pool_configurator.py)."""
        if self.state_slots is not None:
            return (f"max_mamba_cache_size: {self.state_slots}, max_total_num_tokens={self.full_tokens}, "
                    f"max_running_requests={self.max_running}")
        if self.swa_tokens is None:
            return f"max_total_num_tokens={self.full_tokens}"
        return (f"Use sliding window memory pool. full_layer_tokens={self.full_tokens}, "
                f"swa_layer_tokens={self.swa_tokens}")

    def notes(self) -> list[str]:
        notes = [f"SGLang logs, with this KV budget: {self.line}"]
        if self.swa_tokens is not None:
            notes.append(
                f"SGLang sizes the full pool at budget // (full layers' bytes per token + "
                f"{SWA_FULL_TOKENS_RATIO} x sliding layers'), the SWA pool at {SWA_FULL_TOKENS_RATIO} of its "
                "tokens (swa_full_tokens_ratio; model_executor/pool_configurator.py "
                "HybridSWAPoolConfigurator): concurrency and the longest context count the full pool; a new "
                "request must also find its window plus a prefill chunk free in the SWA pool "
                "(managers/schedule_policy.py PrefillAdder)")
        if self.state_slots is not None:
            ratio = self.state_ratio
            notes.append(
                f"SGLang gives the recurrent state {ratio:g} / {1 + ratio:g} of the budget first "
                f"(--mamba-full-memory-ratio {ratio:g}): {self.state_slots:,} slots + 1 padding slot, "
                f"{self.state_bytes:,} B; the KV pool "
                "(attention layers only) gets the rest, and max_running_requests is capped at slots // "
                f"{MAMBA_SLOTS_PER_REQUEST} (mem_cache/kv_cache_configurator.py _handle_max_mamba_cache, "
                "resolve_max_num_reqs): concurrency is the least of that and the sequences whose tokens fit")
        return notes


def sglang_pools(c: Curve, budget: int, context_len: int, state_ratio: float = MAMBA_FULL_MEMORY_RATIO
                 ) -> SglangPools:
    """SGLang's pools for ``budget`` bytes per GPU: tokens = budget // bytes per token, in whole
    pages; for a hybrid SWA model (its window rule ``POOL_SHARE``) the full pool's tokens from
    budget // (full bytes + 0.8 x sliding bytes per token), in SGLang's own float arithmetic, and the
    SWA pool's as 0.8 of them; for a recurrent hybrid, the state slots first, in SGLang's GiB floats.
    Pipeline stages keep the fewest (an all-reduce MIN)."""
    page = c.engine.page_tokens
    per_request = c.per_gpu_state_bytes
    if per_request:
        rest = budget / GIB
        pool = rest * state_ratio / (1 + state_ratio) * GIB
        slots = int((pool - per_request) // per_request)
        if slots <= 0:
            raise OptionError(f"SGLang: a KV budget of {budget:,} B leaves no slot for a request's "
                              f"{per_request:,} B of recurrent state (\"Not enough GPU memory for hybrid "
                              "(mamba/linear-attention) state cache\")")
        state = (slots + 1) * per_request
        kv = int((rest - state / GIB) * GIB)
        tokens = kv // c.per_gpu_bytes_per_token // page * page
        running = min(max(min(int(tokens / context_len * 512), 4096), 2048), tokens // 2,
                      slots // MAMBA_SLOTS_PER_REQUEST)
        return SglangPools(tokens, None, slots, state, running, state_ratio)
    if c.engine.window_rule is not WindowRule.POOL_SHARE:
        return SglangPools(budget // c.per_gpu_bytes_per_token // page * page, None)
    full = []
    for stage in c.stages:
        every, swa = pool_bytes_per_token(stage)
        cell = every + SWA_FULL_TOKENS_RATIO * swa  # _recompute_cell_size, in its order of float operations
        if not every:
            raise OptionError("SGLang's pool for a model whose every layer slides (all SWA) is not modelled")
        full.append(int(budget // cell) // page * page)
    tokens = min(full)
    return SglangPools(tokens, int(tokens * SWA_FULL_TOKENS_RATIO) // page * page)


def pool_bytes_per_token(stage) -> tuple[int, int]:
    """One GPU stage's bytes per token in SGLang's full pool (layers that keep every token) and in
    its SWA pool (sliding and chunked layers)."""
    def size(growths) -> int:
        return sum(sum(r.bytes for r in g.rows if r.growth in growths) * g.layers for g in stage)

    return size((Growth.EVERY,)), size((Growth.WINDOW, Growth.CHUNK))


def _vllm_notes(spec: ModelSpec, c: Curve, vllm: VllmCapacity, options: Options) -> list[str]:
    notes = [f"vLLM logs, with this KV budget: {vllm.line}"]
    if c.uniform:
        return notes
    in_flight = (f"{in_flight_batches(options.parallel.pp)} x max_num_batched_tokens "
                 f"{options.max_num_batched_tokens:,}")
    counts = spec.layer_counts
    rules = []
    if counts[LayerKind.SLIDING] or isinstance(spec.attention, CompressedAttention):
        rules.append(f"a sliding window the pages of window - 1 + {in_flight} tokens, plus one")
    if counts[LayerKind.CHUNKED]:
        rules.append(f"a chunk the pages of chunk + {in_flight} tokens")
    if counts[LayerKind.RECURRENT] or counts[LayerKind.HYBRID]:
        pages = next(p.span for p in c.parts(1, 1, per_gpu=True) if p.growth is Growth.STATE)
        rules.append(f"a recurrent layer {pages} state pages" + (" (2, and its prefill checkpoint's)"
                                                                 if pages > 2 else ""))
    notes.append(
        f"vLLM reserves {vllm.request_blocks:,} blocks of {vllm.block_bytes:,} B to admit a request of "
        f"{options.seq_len:,} tokens -- for {' and '.join(rules)} (v1/kv_cache_interface.py "
        "max_admission_blocks_per_request) -- and counts concurrency and the longest context on it")
    held = c.peak_per_gpu_bytes(options.seq_len)
    running = 1 + (vllm.usable_blocks - vllm.request_blocks) * vllm.block_bytes // held
    if running > vllm.admitted:
        notes.append(
            f"once prefilled a sequence holds {held:,} B; vLLM's scheduler admits the next request when "
            f"its reservation is free, so up to {running:,} sequences can run at once when their "
            "prefills do not overlap (--max-num-batched-tokens changes the reservation)")
    return notes


_UNBOUNDED = 1 << 40


def longest_context(c: Curve, budget: int, *, batch: int = 1, limit: int | None = None,
                    in_flight: int = 0) -> int | None:
    """The longest sequence whose per-GPU cache fits ``budget`` (at most ``limit``); None when
    any length fits (every layer slides and nothing limits it). Under vLLM: the longest whose
    ``batch`` reservations fit its usable blocks (its start-up check, ``in_flight`` tokens in flight)."""
    if c.block_bytes is not None:
        blocks = c.usable_blocks(budget)
        seqs = ceil_div(batch, c.parallel.dp_attention)
        longest = _largest(lambda s: seqs * c.request_blocks(s, in_flight) <= blocks, limit=limit)
        return None if longest == _UNBOUNDED else longest
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
           given: str | None, own_rules: bool) -> list[str]:
    notes = []
    if not fits:
        more = f"; the smallest tp that fits is {smallest}" if smallest else "; no tp fits"
        notes.append(
            f"the weights alone ({weights / GIB:.1f} GiB per GPU) leave no KV budget in "
            f"{usable / GIB:.1f} GiB usable minus {reserve / GIB:.1f} GiB reserve{more}"
        )
    if own_rules:
        pass  # the engine's own pools decide (``_vllm_notes``, ``SglangPools.notes``)
    elif isinstance(spec.attention, CompressedAttention):
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
    if c.per_gpu_state_bytes and not own_rules:
        notes.append(f"tokens that fit count K/V only; each sequence also holds {c.per_gpu_state_bytes:,} B "
                     "of recurrent state whatever its length, which concurrency and context count")
    if given is None and spec.weights_bytes is not None:
        notes.append(f"weights {spec.weights_bytes:,} B as the checkpoint states them (weights_bytes); "
                     "--weights-dtype counts params x a format instead")
    elif given is None:
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
