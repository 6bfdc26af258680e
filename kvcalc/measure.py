"""Measure real layers: the bytes their caches hold beside the analytic figure, and speed.

For each model, ``layers`` real layers of each kind it has (full, sliding, recurrent, hybrid ...)
are built with the model's true dimensions on the device, their caches allocated for ``seq_len``
tokens, a prefill run on ``seq_len - decode_steps`` tokens and ``decode_steps`` single-token decode
steps after it, so the caches end holding exactly ``seq_len`` tokens (a recurrent mixer's state is
the same size at any length). Measured bytes are the cache buffers' numel x element_size (weights,
activations and position counters excluded); they must equal the analytic bytes of the same layers.
The layers compute what the model does: built by ``from_config`` from the spec's shapes, rope and
biases (:func:`layer_config`). The decode time is the median step after the first, which warms up.
On CUDA the allocator's view is reported beside them (KV-CACHE-FACTS section 7). Decode bandwidth =
cache bytes read per step (the whole cache) / step time.
"""

from __future__ import annotations

import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

from kvcalc.analytic import Layout, Options, footprint
from kvcalc.errors import OptionError
from kvcalc.parallel import Parallel
from kvcalc.rotary import rope_parameters
from kvcalc.spec import NO_CACHE_KINDS, CompressedAttention, LayerKind, MlaAttention, ModelSpec, RecurrentKind

warnings.filterwarnings("ignore", message="Failed to initialize NumPy")  # torch without numpy
import torch  # noqa: E402  (measurement is the one place torch is imported)
from torch import nn  # noqa: E402

from kvcalc.nn.attention import ARCHITECTURES, ATTENTION_FAMILIES, Attention  # noqa: E402
from kvcalc.nn.compressed import CompressedAttentionLayer  # noqa: E402
from kvcalc.nn.mla import MLA  # noqa: E402
from kvcalc.nn.parallel import Shard, TensorParallel, shard_layer  # noqa: E402
from kvcalc.nn.recurrent import (  # noqa: E402
    GatedDeltaNet,
    Hybrid,
    KimiDeltaAttention,
    LightningAttention,
    Mamba,
    Mamba2,
)
from kvcalc.nn.rope import Rope  # noqa: E402

MLA_MODEL_TYPES = {"DeepseekV2ForCausalLM": "deepseek_v2", "DeepseekV3ForCausalLM": "deepseek_v3",
                   "DeepseekV32ForCausalLM": "deepseek_v32", "GlmMoeDsaForCausalLM": "glm_moe_dsa"}
"""Model classes whose MLA is DeepseekV3Attention's computation, with the DSA indexer of their model
type where they have one (GLM-5's rotates its key interleaved)."""

WHOLE = Shard()
"""One process holding the whole layer."""

MEASURED_MIXERS = (RecurrentKind.GATED_DELTANET, RecurrentKind.KDA, RecurrentKind.LIGHTNING,
                   RecurrentKind.MAMBA2, RecurrentKind.MAMBA)
"""The recurrent mixers ``nn/recurrent.py`` builds: every kind kvcalc models."""
CACHE_DTYPES = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "fp8": torch.float8_e4m3fn,
    "fp8_e4m3": torch.float8_e4m3fn,
    "fp8_e5m2": torch.float8_e5m2,
}
"""Storage formats a torch tensor holds natively; block formats (q8_0 ...) are not measured."""


@dataclass(frozen=True)
class MeasureOptions:
    seq_len: int
    batch: int = 1
    kv_dtype: str = "bf16"
    layout: Layout = Layout.LATENT
    layers: int = 1
    """Real layers built per layer kind."""
    decode_steps: int = 8
    tp: int = 1
    """Tensor-parallel ranks; each measures its own shard (see ``distributed.py``)."""


@dataclass(frozen=True)
class Measurement:
    model: str
    device: str
    layout: str
    kv_dtype: str
    seq_len: int
    batch: int
    layers: int
    """Real layers measured, all kinds together."""
    analytic_bytes: int
    """The formula's bytes for exactly the layers measured (on this rank's GPU)."""
    model_bytes: int
    """The whole model's cache (every layer; per GPU under tp), from the formula."""
    rank: int = 0
    tp: int = 1
    measured_bytes: int | None = None
    model_bytes_scaled: int | None = None
    """The whole model's cache scaled from the measured layers, per kind."""
    prefill_s: float | None = None
    decode_s_per_token: float | None = None
    decode_bytes_per_s: float | None = None
    cuda_allocated_bytes: int | None = None
    """torch.cuda.memory_allocated() grown by allocating the caches."""
    cuda_reserved_bytes: int | None = None
    cuda_peak_prefill_bytes: int | None = None
    error: str | None = None
    """Why the row was not measured (out of memory ...)."""

    @property
    def match(self) -> bool | None:
        return None if self.measured_bytes is None else self.measured_bytes == self.analytic_bytes

    @property
    def difference_bytes(self) -> int | None:
        return None if self.measured_bytes is None else self.measured_bytes - self.analytic_bytes


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else CPU; asking for CUDA without it is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise OptionError(f"--device {name}: no CUDA device is available (torch {torch.__version__})")
    if not (name == "cpu" or name.startswith("cuda")):
        raise OptionError(f"--device {name}: expected auto, cpu or cuda[:N]")
    return torch.device(name)


def check_options(options: MeasureOptions, spec: ModelSpec | None = None) -> None:
    if options.kv_dtype not in CACHE_DTYPES:
        raise OptionError(
            f"--kv-dtype {options.kv_dtype}: measure stores {', '.join(CACHE_DTYPES)} (torch dtypes)"
        )
    for name, value in (("--layers", options.layers), ("--batch", options.batch),
                        ("--seq", options.seq_len), ("--tp", options.tp)):
        if value < 1:
            raise OptionError(f"{name}: {value} must be at least 1")
    if options.decode_steps < 0:
        raise OptionError(f"--decode-steps: {options.decode_steps} must be 0 or more")
    if spec is not None and spec.recurrent is not None:
        if spec.recurrent.kind not in MEASURED_MIXERS:
            raise OptionError(f"{spec.name}: kvcalc has no {spec.recurrent.kind} layer to measure yet (it "
                              f"builds {', '.join(MEASURED_MIXERS)}); show and compare give its exact "
                              "figures")
    if spec is not None and isinstance(spec.attention, CompressedAttention) and options.tp > 1:
        raise OptionError(f"--tp {options.tp}: kvcalc's DeepSeek-V4 layer is not sharded for tensor "
                          "parallelism (every rank would hold the same cache: one K = V head)")


def measure(
    spec: ModelSpec, options: MeasureOptions, device: torch.device, shard: Shard = WHOLE,
    report: Callable[[str], None] = lambda phase: None,
) -> Measurement:
    """One row: build, allocate, prefill, decode, count. Running out of memory is a reported row
    in one process; under tensor parallelism a rank that fails stops them all (``distributed.py``).
    ``report`` is told each phase as it starts ("prefill 4,088 tokens", "decode 3/8")."""
    check_options(options, spec)
    parallel = Parallel(tp=options.tp)
    fp = footprint(spec, Options(options.seq_len, options.batch, options.kv_dtype, options.layout,
                                 parallel=parallel))
    kinds = {kind: min(options.layers, n) for kind, n in spec.layer_counts.items()
             if n and kind not in NO_CACHE_KINDS}  # a shared or MLP layer allocates nothing to measure
    per_layer = {p.layer_kind: 0 for p in fp.gpu_parts}
    for p in fp.gpu_parts:
        per_layer[p.layer_kind] += p.bytes_per_token_layer * p.cells
    base = Measurement(
        model=spec.name, device=str(device), layout=fp.layout, kv_dtype=fp.kv_dtype,
        seq_len=options.seq_len, batch=options.batch, layers=sum(kinds.values()),
        analytic_bytes=sum(per_layer[k] * n for k, n in kinds.items()), model_bytes=fp.per_gpu_bytes,
        rank=shard.rank, tp=shard.size,
    )
    shortfall = _memory_shortfall(spec, options, device, base.analytic_bytes)
    if shard.size > 1:
        shortfall = _agreed(shortfall, device)
    if shortfall:
        return _replace(base, error=shortfall)
    try:
        return _run(spec, options, device, kinds, base, shard, report)
    except (torch.cuda.OutOfMemoryError, MemoryError) as e:
        if shard.size > 1:
            raise  # the other ranks wait in an all-reduce: stop them all
        reason = "out of host memory" if isinstance(e, MemoryError) else str(e).splitlines()[0]
        return _replace(base, error=f"CUDA out of memory: {reason}" if device.type == "cuda" else reason)
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()


def _agreed(shortfall: str | None, device: torch.device) -> str | None:
    """Every rank starts a row only if all can: one that stopped alone would hang the others."""
    flag = torch.tensor([1 if shortfall else 0], device=device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return shortfall or ("another rank lacks the memory for this row" if flag.item() else None)


def _run(spec, options: MeasureOptions, device, kinds: dict, base: Measurement, shard: Shard,
         report: Callable[[str], None]) -> Measurement:
    compute = torch.float32 if options.kv_dtype == "fp32" else torch.bfloat16
    cuda = device.type == "cuda"
    report(f"building {sum(kinds.values())} layers")
    layers = [(kind, build_layer(spec, kind, options.layout, device, compute, shard))
              for kind, n in kinds.items() for _ in range(n)]
    report("allocating the caches")
    before = torch.cuda.memory_allocated(device) if cuda else 0
    caches = [layer.allocate_cache(options.batch, options.seq_len, CACHE_DTYPES[options.kv_dtype])
              for _, layer in layers]
    allocated = torch.cuda.memory_allocated(device) - before if cuda else None
    measured = sum(c.nbytes for c in caches)
    by_kind = {kind: 0 for kind in kinds}
    for (kind, _), cache in zip(layers, caches, strict=True):
        by_kind[kind] += cache.nbytes
    scaled = sum(by_kind[k] // kinds[k] * spec.layer_counts[k] for k in kinds)
    steps = min(options.decode_steps, options.seq_len - 1)
    prefill = options.seq_len - steps
    hidden = spec.hidden_size
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    with torch.inference_mode():
        x = torch.randn(options.batch, prefill, hidden, device=device, dtype=compute)
        report(f"prefill {prefill:,} tokens")
        prefill_s = timed(lambda: [layer(x) for _, layer in layers], device)
        peak = torch.cuda.max_memory_allocated(device) if cuda else None
        step_times = []
        for pos in range(prefill, options.seq_len):
            report(f"decode {pos - prefill + 1}/{steps}")
            xt = torch.randn(options.batch, 1, hidden, device=device, dtype=compute)
            step_times.append(timed(lambda: [layer(xt, start_pos=pos) for _, layer in layers], device))
    warmed = step_times[1:] or step_times  # the first step warms up kernels, caches and the allocator
    step = statistics.median(warmed) if warmed else None
    return _replace(
        base, measured_bytes=measured, model_bytes_scaled=scaled, prefill_s=prefill_s,
        decode_s_per_token=step, decode_bytes_per_s=measured / step if step else None,
        cuda_allocated_bytes=allocated, cuda_peak_prefill_bytes=peak,
        cuda_reserved_bytes=torch.cuda.memory_reserved(device) if cuda else None,
    )


def build_layer(
    spec: ModelSpec, kind: LayerKind, layout: Layout, device, dtype, shard: Shard = WHOLE
) -> nn.Module:
    """One layer of ``kind`` with the model's dimensions (this rank's shard under tp).

    Under tp every rank makes the same full layer on the CPU from a fixed seed, keeps its slice and
    sums its row-parallel output with the others (``nn/parallel.py``).
    """
    if shard.size == 1:
        return make_layer(spec, kind, layout, device, dtype)
    full = make_layer(spec, kind, layout, torch.device("cpu"), dtype, seed=0)
    return TensorParallel(shard_layer(full, shard).to(device)).eval()


def make_layer(
    spec: ModelSpec, kind: LayerKind, layout: Layout, device, dtype, seed: int | None = None
) -> nn.Module:
    """The full layer, weights made without a slow init: built on the meta device (no memory, no
    init), moved to ``device`` uninitialised, then filled in one cheap pass -- uniform(±1/sqrt(fan_in))
    for projections, ones for norms; from ``seed`` when given (on the CPU), so ranks agree."""
    with torch.device("meta"):
        if kind is LayerKind.RECURRENT:
            layer = make_mixer(spec, dtype)
        elif kind is LayerKind.HYBRID:  # Falcon-H1: full attention and the mixer side by side
            layer = Hybrid(_attention(spec, kind, layout, dtype), make_mixer(spec, dtype))
        else:
            layer = _attention(spec, kind, layout, dtype)
    layer = layer.to_empty(device=device)
    generator = None if seed is None else torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for param in layer.parameters():
            if param.dim() == 1:
                param.fill_(1.0)
            else:
                bound = param.shape[1] ** -0.5
                param.uniform_(-bound, bound, generator=generator)
    return layer.eval()


def _attention(spec: ModelSpec, kind: LayerKind, layout: Layout, dtype) -> nn.Module:
    """The attention of a layer of ``kind`` (a hybrid layer's is full attention): built by
    ``from_config`` from :func:`layer_config` where kvcalc builds the family's attention, else
    Llama's attention with the spec's shapes and rope; DeepSeek-V4's compressed layer by hand."""
    attn = spec.attention_for(kind)
    if isinstance(attn, CompressedAttention):
        csa = kind is LayerKind.COMPRESSED_SPARSE
        return CompressedAttentionLayer(
            spec.hidden_size, attn.num_heads, attn.head_dim, attn.qk_rope_head_dim // 2 * 2,
            attn.q_lora_rank, spec.sliding_window, attn.rate(kind), index_head_dim=attn.index_head_dim,
            index_n_heads=attn.index_n_heads if csa else None, dtype=dtype)
    config = layer_config(spec, kind)
    if isinstance(attn, MlaAttention):
        return MLA.from_config(config, layout=str(layout), dtype=dtype)
    if kind is not LayerKind.CHUNKED and attn.v_head_dim in (None, attn.head_dim):
        return Attention.from_config(config, dtype=dtype)
    rope = Rope.from_parameters(rope_parameters(config), attn.head_dim,
                                max_position_embeddings=spec.max_position_embeddings)
    window = spec.sliding_window if kind is LayerKind.SLIDING else None
    chunk = spec.attention_chunk_size if kind is LayerKind.CHUNKED else None
    return Attention(spec.hidden_size, attn.num_heads, attn.num_kv_heads, attn.head_dim,
                     attn.v_head_dim, window=window, chunk=chunk, rope=rope, dtype=dtype)


def layer_config(spec: ModelSpec, kind: LayerKind) -> dict:
    """A transformers config of one layer of ``kind``, as ``from_config`` reads it: the spec's
    shapes, window and rope (plain, base 10000, where the spec states none), and the model type of
    the spec's architecture (``llama`` where kvcalc does not build the family's own attention)."""
    attn = spec.attention_for(kind)
    config = {"model_type": ARCHITECTURES.get(spec.architecture or "", "llama"),
              "hidden_size": spec.hidden_size, "num_attention_heads": attn.num_heads,
              "attention_bias": spec.attention_bias,
              "max_position_embeddings": spec.max_position_embeddings,
              "rope_parameters": spec.rope_for(kind) or {"rope_type": "default", "rope_theta": 10000.0}}
    if isinstance(attn, MlaAttention):
        index = {"index_n_heads": attn.index_n_heads, "index_head_dim": attn.index_head_dim}
        config["model_type"] = MLA_MODEL_TYPES.get(spec.architecture or "", "deepseek_v3")
        return {**config, "q_lora_rank": attn.q_lora_rank, "kv_lora_rank": attn.kv_lora_rank,
                "qk_nope_head_dim": attn.qk_nope_head_dim, "qk_rope_head_dim": attn.qk_rope_head_dim,
                "v_head_dim": attn.v_head_dim, **(index if attn.index_n_heads else {})}
    sliding = kind is LayerKind.SLIDING
    return {**config, "num_key_value_heads": attn.num_kv_heads, "head_dim": attn.head_dim,
            "layer_types": ["sliding_attention" if sliding else "full_attention"],
            "sliding_window": spec.sliding_window if sliding else None}


def built_as(spec: ModelSpec) -> str:
    """What ``measure`` builds for ``spec``'s attention, in words (a note beside its rows)."""
    model_type = ARCHITECTURES.get(spec.architecture or "")
    if isinstance(spec.attention, CompressedAttention):
        return ("kvcalc's DeepSeek-V4 attention with the spec's shapes; rope: plain, base 10000 (the spec "
                "does not carry V4's compressed rope, sinks or grouped output projection)")
    elif isinstance(spec.attention, MlaAttention):
        layers = "MLA as transformers' DeepseekV3Attention computes it"
        if spec.attention.index_n_heads:
            layers += f", with the {MLA_MODEL_TYPES.get(spec.architecture or '', 'deepseek_v32')} indexer"
        if spec.architecture not in MLA_MODEL_TYPES:
            layers += (f", with the spec's shapes ({spec.architecture or 'no architecture'}'s own additions "
                       "are not built)")
    elif model_type:
        layers = f"attention as transformers' {model_type} computes it"
    else:
        layers = (f"Llama's attention with the spec's shapes ({spec.architecture or 'no architecture'}'s "
                  "own additions are not built)")
    if model_type and not ATTENTION_FAMILIES[model_type].rotates:
        return f"{layers}; no rope (the family's attention applies none)"
    if spec.rope is None:
        return f"{layers}; rope: plain, base 10000 (the spec states none)"
    ropes = {r["rope_type"] for r in ([spec.rope] if "rope_theta" in spec.rope else spec.rope.values())}
    return f"{layers}; rope: {', '.join(sorted(ropes))} as the spec states it"


def make_mixer(spec: ModelSpec, dtype) -> nn.Module:
    """The recurrent mixer of ``spec`` (``spec.recurrent``) with its dimensions. Mamba's dt rank is
    Jamba's "auto", ceil(hidden_size / 16) (the spec does not carry it: it shapes no cache);
    lightning's decay slopes are those of the model's first layer."""
    mixer, hidden = spec.recurrent, spec.hidden_size
    match mixer.kind:
        case RecurrentKind.GATED_DELTANET:
            return GatedDeltaNet(hidden, mixer.num_k_heads, mixer.num_v_heads, mixer.head_k_dim,
                                 mixer.head_v_dim, mixer.conv_kernel, dt_bias=True, dtype=dtype)
        case RecurrentKind.KDA:
            return KimiDeltaAttention(hidden, mixer.num_heads, mixer.head_dim, mixer.conv_kernel, dtype=dtype)
        case RecurrentKind.LIGHTNING:
            return LightningAttention(hidden, mixer.num_heads, mixer.head_dim, num_layers=spec.num_layers,
                                      dtype=dtype)
        case RecurrentKind.MAMBA2:
            return Mamba2(hidden, mixer.num_heads, mixer.head_dim, mixer.d_state, mixer.n_groups,
                          mixer.conv_kernel, dt_bias=True, conv_bias=True, norm_groups=mixer.n_groups,
                          dtype=dtype)
        case RecurrentKind.MAMBA:
            return Mamba(hidden, mixer.intermediate_size, mixer.d_state, mixer.conv_kernel, -(-hidden // 16),
                         dtype=dtype)
    raise ValueError(f"{spec.name}: no {mixer.kind} layer to build")


def timed(work: Callable[[], object], device: torch.device) -> float:
    """Wall seconds of ``work()``, synchronised with the GPU on CUDA."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    work()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def _memory_shortfall(spec, options: MeasureOptions, device, cache_bytes: int) -> str | None:
    """A reason not to start, when the host clearly lacks the memory (CUDA reports its own OOM)."""
    if device.type != "cpu":
        return None
    layers = options.layers * max(1, len(spec.layer_counts))
    weights = max(a.weight_count(spec.hidden_size) for a in spec.attentions) * 2 * layers
    width = max(spec.hidden_size, max(a.num_heads for a in spec.attentions) * 320)
    activations = 8 * options.batch * options.seq_len * width * 4
    needed = cache_bytes + weights + activations
    available = _available_host_bytes()
    if available is not None and needed > available:
        gib = 1 << 30
        return f"needs about {needed / gib:.1f} GiB of host memory; {available / gib:.1f} GiB available"
    return None


def _available_host_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _replace(m: Measurement, **changes) -> Measurement:
    return Measurement(**{**m.__dict__, **changes})
