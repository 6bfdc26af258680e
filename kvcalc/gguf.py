"""A GGUF file -> spec, read as llama.cpp reads it; its figures are for llama.cpp unless --engine says
otherwise.

The file is opened with llama.cpp's own ``gguf`` package (imported here only, when a GGUF file is
read, so the analytic commands start without numpy). llama.cpp reads the metadata in two steps, and
so does this module:
- every architecture (src/llama-model.cpp ``load_hparams``): ``{arch}.block_count``,
  ``context_length`` and ``embedding_length`` (all required); ``attention.head_count`` and
  ``attention.head_count_kv`` as one value or one per layer (``get_key_or_arr``; KV heads default to
  the heads); ``attention.key_length`` / ``value_length``, each defaulting to embedding_length /
  head_count (C integer division); ``attention.key_length_swa`` / ``value_length_swa`` for the
  sliding layers, defaulting to the full ones.
- each architecture's ``load_arch_hparams`` (src/models/<arch>.cpp): the window, which layers slide
  (``llama_hparams::set_swa_pattern``: layer i slides when ``i % period < period - 1``; period 0:
  every layer, 1: none) and, for deepseek2, the latent (``_ARCHS`` below names each file).
Weights come from the tensor table exactly: bytes as ggml stores each tensor's blocks, parameters as
its elements.

Anything else under ``{arch}.`` that could change the cache (an unknown architecture, recurrent or
SSM state, MTP layers or a latent where llama.cpp's code reads none, a key kvcalc does not know) is
refused by name, never guessed. Every failure is one ``SpecError`` line naming the file, the key and
the value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kvcalc.errors import SpecError
from kvcalc.spec import MAX_DIM, MAX_HEADS, MAX_LAYERS, MAX_TOKENS, ModelSpec


@dataclass(frozen=True)
class _Window:
    """How an architecture's ``load_arch_hparams`` sets its sliding layers."""

    period: int
    """``set_swa_pattern``'s period when ``attention.sliding_window_pattern`` gives none."""
    default: int | None = None
    """The window when ``attention.sliding_window`` is absent (gemma2: 4096); None: see below."""
    required: bool = False
    """``attention.sliding_window`` is read with required=true (gpt-oss)."""


@dataclass(frozen=True)
class _Arch:
    """What llama.cpp's code for one ``general.architecture`` reads that shapes the cache."""

    source: str
    """The llama.cpp file whose ``load_arch_hparams`` this mirrors."""
    window: _Window | None = None
    """None: every layer full attention (the architecture reads no window)."""
    window_off: bool = False
    """phi3: reads ``attention.sliding_window`` and then turns SWA off."""
    mla: bool = False
    """deepseek2: the latent (``kv_lora_rank``, rope dimension) and MTP layers."""
    rot_is_head: bool = False
    """llama: ``rope.dimension_count`` must equal ``key_length`` (load_hparams throws otherwise)."""
    architecture: str | None = None
    """The model class llama.cpp's converter writes as this architecture, where it matters (SGLang's
    sliding-window rules) and is one class."""


_ARCHS: dict[str, _Arch] = {
    # Mistral-7B, Mixtral and Mistral-NeMo convert to "llama" (convert_hf_to_gguf.py), whose code
    # reads no window: llama.cpp holds every token on every layer.
    "llama": _Arch("src/models/llama.cpp", rot_is_head=True),
    "qwen2": _Arch("src/models/qwen2.cpp"),
    "qwen2moe": _Arch("src/models/qwen2moe.cpp"),
    "qwen3": _Arch("src/models/qwen3.cpp"),
    "qwen3moe": _Arch("src/models/qwen3moe.cpp"),
    "phi3": _Arch("src/models/phi3.cpp", window_off=True),
    "gemma2": _Arch("src/models/gemma2.cpp", _Window(period=2, default=4096),
                    architecture="Gemma2ForCausalLM"),
    "gemma3": _Arch("src/models/gemma3.cpp", _Window(period=6), architecture="Gemma3ForCausalLM"),
    "gpt-oss": _Arch("src/models/openai-moe.cpp", _Window(period=2, required=True),
                     architecture="GptOssForCausalLM"),
    "deepseek2": _Arch("src/models/deepseek2.cpp", mla=True),
}

_GENERIC_READS = frozenset({
    "block_count", "context_length", "embedding_length", "attention.head_count", "attention.head_count_kv",
    "attention.key_length", "attention.value_length", "attention.key_length_swa",
    "attention.value_length_swa", "attention.causal",
})
_WINDOW_READS = frozenset({"attention.sliding_window", "attention.sliding_window_pattern"})
_MLA_READS = frozenset({
    "attention.kv_lora_rank", "attention.q_lora_rank", "attention.key_length_mla",
    "attention.value_length_mla", "rope.dimension_count", "nextn_predict_layers",
})
_NEUTRAL = frozenset({
    "vocab_size", "feed_forward_length", "expert_feed_forward_length", "expert_shared_feed_forward_length",
    "expert_chunk_feed_forward_length", "expert_count", "expert_used_count", "expert_shared_count",
    "expert_group_count", "expert_group_used_count", "expert_weights_scale", "expert_weights_norm",
    "expert_gating_func", "expert_group_scale", "experts_per_group", "leading_dense_block_count",
    "use_parallel_residual", "tensor_data_layout", "pooling_type", "logit_scale", "attn_logit_softcapping",
    "router_logit_softcapping", "final_logit_softcapping", "residual_scale", "embedding_scale", "swin_norm",
    "swiglu_clamp_exp", "swiglu_clamp_shexp", "attention.layer_norm_epsilon",
    "attention.layer_norm_rms_epsilon", "attention.group_norm_epsilon", "attention.group_norm_groups",
    "attention.max_alibi_bias", "attention.clamp_kqv", "attention.scale", "attention.output_scale",
    "attention.temperature_length", "attention.temperature_scale",
})
"""Keys (after ``{arch}.``) that change weights, norms, routing or scores but not what is cached;
every ``rope.`` key is one too, except where an architecture reads the rope dimension."""
_CACHE_KEYS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("ssm.", "wkv.", "kda.", "shortconv.", "token_shift_count", "time_mix_extra_dim",
      "time_decay_extra_dim", "rescale_every_n_layers", "attention.decay_lora_rank",
      "attention.iclr_lora_rank", "attention.value_residual_mix_lora_rank", "attention.gate_lora_rank",
      "full_attention_interval"),
     "a recurrent state, which kvcalc does not model for llama.cpp"),
    (("attention.sliding_window",), "a window, which llama.cpp's {arch} does not read (every layer full)"),
    (("attention.kv_lora_rank", "attention.q_lora_rank", "attention.key_length_mla",
      "attention.value_length_mla"), "latent attention, which llama.cpp's {arch} does not run"),
    (("nextn_predict_layers",), "MTP layers, which llama.cpp's {arch} does not read"),
    (("attention.shared_kv_layers",), "layers sharing a cache, which llama.cpp's {arch} does not read"),
    (("attention.indexer.",), "a DSA indexer, whose keys llama.cpp's {arch} does not cache"),
    (("mm.", "vision."), "a vision tower packed into the model file (Ollama's layout), which llama.cpp "
     "does not load from it"),
)
"""Keys that change the cache where an architecture reads them, and why each is refused elsewhere."""

_BOUNDS = {"block_count": MAX_LAYERS, "nextn_predict_layers": MAX_LAYERS, "attention.head_count": MAX_HEADS,
           "attention.head_count_kv": MAX_HEADS, "context_length": MAX_TOKENS,
           "attention.sliding_window": MAX_TOKENS, "attention.sliding_window_pattern": MAX_LAYERS}
"""Upper bounds of the integers read (by key after ``{arch}.``); any other is at most ``MAX_DIM``."""


def spec_from_gguf(path: Path, name: str | None = None) -> ModelSpec:
    """The spec of the model in the GGUF file at ``path``, for llama.cpp (its ``default_engine``).

    ``name`` (default: ``general.name``, else the file name, lowercased) names it on the command line.
    Raises ``SpecError`` (one line) for a file that is not GGUF, is truncated, or holds anything
    that changes the cache in a way kvcalc does not model.
    """
    meta = _read(Path(path))
    arch = _ARCHS[meta.arch]
    _refuse_unread(meta, arch)
    block_count = meta.required("block_count")
    mtp = (meta.optional_int("nextn_predict_layers", low=0) or 0) if arch.mla else 0
    if mtp >= block_count:
        meta.refuse("nextn_predict_layers", mtp,
                    f"leaves no layer of {meta.key('block_count')} {block_count}")
    layers = block_count - mtp
    hidden = meta.required("embedding_length")
    heads = _heads(meta, block_count)
    if arch.mla:
        kinds, window = ("full",) * layers, None
        shapes = {"full": _mla(meta, heads, hidden)}
    else:
        kinds, window = _layout(meta, arch, layers)
        shapes = _standard(meta, arch, heads, kinds, hidden)
    if window is None:
        _swa_unused(meta, heads[0][0], hidden)
    attention = shapes.get("full") or shapes["sliding"]
    fields = {
        "name": name or _slug(meta.name or Path(path).stem),
        "display_name": meta.name or Path(path).stem,
        "source": meta.origin,
        "architecture": arch.architecture,
        "num_layers": layers,
        "hidden_size": hidden,
        "params": meta.n_elements,
        "weights_bytes": meta.n_bytes,
        "default_engine": "llama.cpp",
        "max_position_embeddings": meta.required("context_length"),
        "mtp_layers": mtp,
        "attention": attention,
        "layer_attention": {k: s for k, s in shapes.items() if s != attention} or None,
        **_pattern(kinds, window),
    }
    if arch.architecture is not None:
        meta.assume(f"architecture {arch.architecture}: the model class llama.cpp's converter writes as "
                    f"{meta.arch!r} (what SGLang's sliding-window rules read)")
    meta.assume(f"params and weights_bytes: the tensor table's {meta.n_tensors} tensors, counted exactly")
    from kvcalc.schema import validate_spec

    spec = validate_spec({k: v for k, v in fields.items() if v is not None}, meta.origin)
    return spec.replace(assumptions=tuple(meta.assumptions))


class _Meta:
    """The metadata of one GGUF file: typed reads of ``{arch}.`` keys, each failure one line."""

    def __init__(self, origin: str, values: dict[str, Any], n_tensors: int, n_elements: int, n_bytes: int):
        self.origin = origin
        self.values = values
        self.n_tensors, self.n_elements, self.n_bytes = n_tensors, n_elements, n_bytes
        self.assumptions: list[str] = []
        self.head_dims: tuple[int, int] | None = None
        self.arch = self._architecture()
        self.name = self._name()

    def key(self, suffix: str) -> str:
        return f"{self.arch}.{suffix}"

    def has(self, suffix: str) -> bool:
        return self.key(suffix) in self.values

    def required(self, suffix: str, low: int = 1) -> int:
        value = self.optional_int(suffix, low)
        if value is None:
            raise SpecError(f"{self.origin}: {self.key(suffix)}: required key is missing "
                            "(llama.cpp needs it)")
        return value

    def optional_int(self, suffix: str, low: int = 1) -> int | None:
        return self._int(suffix, self.values[self.key(suffix)], low) if self.has(suffix) else None

    def per_layer(self, suffix: str, layers: int, low: int = 1) -> list[int] | None:
        """One value or one per layer (llama.cpp's ``get_key_or_arr``), as a list of ``layers``."""
        if not self.has(suffix):
            return None
        value = self.values[self.key(suffix)]
        if not isinstance(value, list):
            return [self._int(suffix, value, low)] * layers
        if len(value) != layers:
            self.refuse(suffix, value, f"lists {len(value)} values but {self.key('block_count')} is {layers}")
        return [self._int(suffix, v, low) for v in value]

    def refuse(self, suffix: str, value: Any, why: str) -> None:
        raise SpecError(f"{self.origin}: {self.key(suffix)}: {_show(value)}: {why}")

    def assume(self, text: str) -> None:
        self.assumptions.append(text)

    def _int(self, suffix: str, value: Any, low: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            self.refuse(suffix, value, "expected an integer")
        high = _BOUNDS.get(suffix, MAX_DIM)
        if not low <= value <= high:
            self.refuse(suffix, value, f"must be from {low} to {high:,}")
        return value

    def _architecture(self) -> str:
        arch = self.values.get("general.architecture")
        if arch is None:
            raise SpecError(f"{self.origin}: general.architecture: required key is missing")
        if not isinstance(arch, str) or arch not in _ARCHS:
            raise SpecError(f"{self.origin}: general.architecture: {_show(arch)}: kvcalc does not read this "
                            f"architecture's cache from GGUF (it reads {', '.join(_ARCHS)})")
        kind = self.values.get("general.type", "model")
        if kind != "model":
            raise SpecError(f"{self.origin}: general.type: {_show(kind)}: not a model (kvcalc reads models)")
        count = self.values.get("split.count", 1)
        if count != 1:
            raise SpecError(f"{self.origin}: split.count: {_show(count)}: the weights span several files; "
                            "kvcalc reads one whole GGUF file (merge them with llama-gguf-split --merge)")
        return arch

    def _name(self) -> str | None:
        name = self.values.get("general.name")
        if name is not None and not isinstance(name, str):
            raise SpecError(f"{self.origin}: general.name: {_show(name)}: expected a string")
        return name.strip() or None if name else None


def _read(path: Path) -> _Meta:
    """The file's metadata (all but the tokenizer's) and its tensor table's totals."""
    import gguf  # numpy with it: only when a GGUF file is read

    origin = str(path)
    try:
        with path.open("rb") as file:
            magic = file.read(4)
        if magic != b"GGUF":
            raise SpecError(f"{origin}: not a GGUF file (it does not start with the GGUF magic)")
        reader = gguf.GGUFReader(path)
        values = {key: field.contents() for key, field in reader.fields.items()  # str, int, float, bool, list
                  if not key.startswith(("tokenizer.", "GGUF."))}
        tensors = reader.tensors
        n_elements = sum(int(t.n_elements) for t in tensors)
        n_bytes = sum(int(t.n_bytes) for t in tensors)
    except OSError as e:
        raise SpecError(f"{origin}: cannot read the file: {e.strerror or e}") from None
    except (ValueError, IndexError, KeyError, TypeError, OverflowError) as e:
        raise SpecError(f"{origin}: a truncated or corrupt GGUF file ({path.stat().st_size:,} bytes; "
                        f"the gguf reader: {_one_line(e)})") from None
    if not tensors:
        raise SpecError(f"{origin}: the tensor table is empty: no weights to count")
    return _Meta(origin, values, len(tensors), n_elements, n_bytes)


def _refuse_unread(meta: _Meta, arch: _Arch) -> None:
    """Every ``{arch}.`` key llama.cpp's code for this architecture does not read must be one that
    leaves the cache alone; any other is refused by name."""
    reads = _GENERIC_READS | (_WINDOW_READS if arch.window else frozenset())
    reads |= _MLA_READS if arch.mla else frozenset({"attention.sliding_window"} if arch.window_off else ())
    prefix = f"{meta.arch}."
    for key, value in meta.values.items():
        suffix = key.removeprefix(prefix)
        if suffix == key or suffix in reads or suffix in _NEUTRAL or suffix.startswith("rope."):
            continue
        why = next((why for starts, why in _CACHE_KEYS if suffix.startswith(starts)),
                   "kvcalc does not know what it does to llama.cpp's {arch} cache")
        meta.refuse(suffix, value, why.format(arch=meta.arch) + "; refusing rather than guessing")
    causal = meta.values.get(meta.key("attention.causal"), True)
    if causal is not True:
        why = "expected true or false" if not isinstance(causal, bool) else "a non-causal (embedding) model"
        meta.refuse("attention.causal", causal, f"{why}; kvcalc models the cache of causal decoders")


def _heads(meta: _Meta, layers: int) -> list[tuple[int, int]]:
    """(heads, KV heads) of every layer, MTP layers included: one value or one per layer."""
    heads = meta.per_layer("attention.head_count", layers, low=0)
    if heads is None:
        meta.required("attention.head_count")
    kv_heads = meta.per_layer("attention.head_count_kv", layers, low=0)
    if kv_heads is None:
        kv_heads = heads
        meta.assume(f"{meta.key('attention.head_count_kv')} = head_count (absent; llama.cpp's default)")
    for suffix, values in (("attention.head_count", heads), ("attention.head_count_kv", kv_heads)):
        if 0 in values:
            meta.refuse(suffix, values, f"layer {values.index(0)} has no attention heads, "
                        f"which llama.cpp's {meta.arch} does not have (kvcalc will not guess the layer)")
    return list(zip(heads, kv_heads, strict=True))


def _head_dims(meta: _Meta, heads: int, hidden: int, swa: bool = False) -> tuple[int, int]:
    """K and V head sizes: ``attention.key_length`` / ``value_length``, else embedding_length /
    layer 0's head_count (llama.cpp's default, said so); for sliding layers the ``_swa`` keys, else
    the same."""
    if meta.head_dims is None:
        dims = []
        for part in ("key", "value"):
            value = meta.optional_int(f"attention.{part}_length")
            if value is None:
                if hidden % heads:
                    meta.refuse("embedding_length", hidden, f"no {meta.key(f'attention.{part}_length')}, and "
                                f"{heads} heads do not divide it (llama.cpp would truncate)")
                value = hidden // heads
                meta.assume(f"{meta.key(f'attention.{part}_length')} {value} = embedding_length / head_count "
                            "(absent; llama.cpp's default)")
            dims.append(value)
        meta.head_dims = (dims[0], dims[1])
    if not swa:
        return meta.head_dims
    return (meta.optional_int("attention.key_length_swa") or meta.head_dims[0],
            meta.optional_int("attention.value_length_swa") or meta.head_dims[1])


def _standard(meta: _Meta, arch: _Arch, heads: list[tuple[int, int]], kinds: tuple[str, ...],
              hidden: int) -> dict[str, dict]:
    """The standard attention of each kind of layer: one shape per kind (a per-layer head count
    that differs within a kind is refused); sliding layers take the ``_swa`` head sizes."""
    shapes = {}
    for kind in dict.fromkeys(kinds):
        seen = {heads[i] for i, k in enumerate(kinds) if k == kind}
        if len(seen) > 1:
            suffix = "attention.head_count" if len({h for h, _ in seen}) > 1 else "attention.head_count_kv"
            values = [h[suffix.endswith("_kv")] for h in heads]
            meta.refuse(suffix, values, f"differs between the {kind} layers; kvcalc models "
                        "one attention shape per kind of layer")
        (n_heads, n_kv), = seen
        if n_heads % n_kv:
            meta.refuse("attention.head_count_kv", n_kv, f"does not divide {n_heads} heads")
        head_dim, v_dim = _head_dims(meta, heads[0][0], hidden, swa=kind == "sliding")
        if arch.rot_is_head and meta.optional_int("rope.dimension_count") not in (None, head_dim):
            meta.refuse("rope.dimension_count", meta.values[meta.key("rope.dimension_count")],
                        f"llama.cpp's {meta.arch} requires it to equal key_length {head_dim} (invalid n_rot)")
        shapes[kind] = {"kind": "standard", "num_heads": n_heads, "num_kv_heads": n_kv, "head_dim": head_dim,
                        "v_head_dim": v_dim if v_dim != head_dim else None}
    return shapes


def _swa_unused(meta: _Meta, heads: int, hidden: int) -> None:
    """``_swa`` head sizes on a model without sliding layers: llama.cpp never uses them; one that
    disagrees with the full layers' is refused rather than ignored."""
    for part, dim in zip(("key", "value"), _head_dims(meta, heads, hidden), strict=True):
        value = meta.optional_int(f"attention.{part}_length_swa")
        if value not in (None, dim):
            meta.refuse(f"attention.{part}_length_swa", value, f"differs from {part}_length {dim}, but no "
                        "layer of this file slides; refusing to guess which is meant")


def _layout(meta: _Meta, arch: _Arch, layers: int) -> tuple[tuple[str, ...], int | None]:
    """Which layers slide and the window, as the architecture's ``load_arch_hparams`` sets them."""
    full = ("full",) * layers
    window = meta.optional_int("attention.sliding_window", low=0)
    if arch.window_off:
        if window:
            meta.assume(f"every layer full: llama.cpp turns {meta.key('attention.sliding_window')} {window} "
                        f"off for {meta.arch} ({arch.source}, PR 13676); other engines may slide")
        return full, None
    rule = arch.window
    if rule is None:
        return full, None
    if window is None and rule.required:
        meta.required("attention.sliding_window")
    if window is None and rule.default is not None:
        window = rule.default
        meta.assume(f"{meta.key('attention.sliding_window')} {window} (absent; llama.cpp's {meta.arch} "
                    "default)")
    if not window:
        if rule.required or rule.default is not None:
            meta.refuse("attention.sliding_window", window, "must be positive")
        if meta.has("attention.sliding_window_pattern"):
            pattern = meta.values[meta.key("attention.sliding_window_pattern")]
            meta.refuse("attention.sliding_window_pattern", pattern,
                        "given without a window (llama.cpp then runs every layer full); refusing to guess")
        meta.assume(f"every layer full: no {meta.key('attention.sliding_window')} (llama.cpp's {meta.arch} "
                    "then keeps no window)")
        return full, None
    period = _period(meta, rule, layers)
    kinds = tuple("sliding" if period == 0 or i % period < period - 1 else "full" for i in range(layers))
    if "sliding" not in kinds:
        meta.assume(f"every layer full: {meta.key('attention.sliding_window_pattern')} {period} leaves no "
                    "layer sliding")
        return full, None
    if window > meta.required("context_length"):
        meta.refuse("attention.sliding_window", window, f"exceeds {meta.key('context_length')} "
                    f"{meta.required('context_length')}: such a layer holds every token; refusing to guess")
    return kinds, window


def _period(meta: _Meta, rule: _Window, layers: int) -> int:
    """``attention.sliding_window_pattern``: a period (``set_swa_pattern``), else the default. llama.cpp
    reads it as one integer (``get_key_or_arr`` into a uint32): an array is skipped and the default
    kept, so an array is taken only when it says the same."""
    suffix = "attention.sliding_window_pattern"
    if not meta.has(suffix):
        return rule.period
    value = meta.values[meta.key(suffix)]
    if not isinstance(value, list):
        return meta._int(suffix, value, 0)
    default = [i % rule.period < rule.period - 1 for i in range(layers)]
    if value != default:
        meta.refuse(suffix, value, f"llama.cpp's {meta.arch} ignores a per-layer list and "
                    f"slides all but every {rule.period}th layer; refusing to guess which is meant")
    return rule.period


def _mla(meta: _Meta, heads: list[tuple[int, int]], hidden: int) -> dict:
    """deepseek2 (llama_model_deepseek2::load_arch_hparams, llama_hparams::is_mla): with
    ``key_length_mla`` and ``value_length_mla`` the file is in llama.cpp's MLA layout (April 2025 on)
    and caches the latent: K = kv_lora_rank + rope dimension on one KV head. Without them it is an
    older file that llama.cpp runs decompressed, caching per-head K (key_length) and V (value_length):
    standard attention, said so."""
    if len(set(heads)) > 1:
        suffix = "attention.head_count" if len({h for h, _ in heads}) > 1 else "attention.head_count_kv"
        meta.refuse(suffix, [h[suffix.endswith("_kv")] for h in heads],
                    "differs between layers; kvcalc models one MLA shape")
    n_heads, n_kv = heads[0]
    rank = meta.required("attention.kv_lora_rank")
    rope = meta.required("rope.dimension_count")
    k_mla = meta.optional_int("attention.key_length_mla")
    v_mla = meta.optional_int("attention.value_length_mla")
    if (k_mla is None) != (v_mla is None):
        missing = "attention.key_length_mla" if k_mla is None else "attention.value_length_mla"
        raise SpecError(f"{meta.origin}: {meta.key(missing)}: required key is missing (llama.cpp's MLA "
                        "layout needs both _mla lengths)")
    if k_mla is None:
        return _decompressed(meta, n_heads, n_kv, rope, hidden)
    for suffix, want, what in (("attention.key_length", rank + rope, f"kv_lora_rank {rank} + rope {rope}"),
                               ("attention.value_length", rank, f"kv_lora_rank {rank}")):
        if meta.required(suffix) != want:
            meta.refuse(suffix, meta.required(suffix), f"llama.cpp's MLA layout caches {want} here ({what})")
    if n_kv != 1:
        meta.refuse("attention.head_count_kv", n_kv, "llama.cpp's MLA layout caches one latent KV head: 1")
    if k_mla <= rope:
        meta.refuse("attention.key_length_mla", k_mla, f"leaves no non-rope part beside rope {rope}")
    meta.assume(f"MLA latent: {meta.key('attention.key_length_mla')} present, the file is in llama.cpp's MLA "
                f"layout: K = kv_lora_rank {rank} + rope {rope} per token and layer (llama.cpp@2026: V a "
                "view of K; llama.cpp@2025: V = the latent again)")
    q_lora = meta.optional_int("attention.q_lora_rank", low=0) or None  # absent or 0: a plain q projection
    return {"kind": "mla", "num_heads": n_heads, "q_lora_rank": q_lora, "kv_lora_rank": rank,
            "qk_nope_head_dim": k_mla - rope, "qk_rope_head_dim": rope, "v_head_dim": v_mla}


def _decompressed(meta: _Meta, n_heads: int, n_kv: int, rope: int, hidden: int) -> dict:
    head_dim, v_dim = _head_dims(meta, n_heads, hidden)
    if head_dim <= rope:
        meta.refuse("attention.key_length", head_dim, f"leaves no non-rope part beside rope {rope}")
    if n_heads % n_kv:
        meta.refuse("attention.head_count_kv", n_kv, f"does not divide {n_heads} heads")
    meta.assume(f"no {meta.key('attention.key_length_mla')}: a file from before llama.cpp's MLA layout "
                f"(April 2025), which llama.cpp runs decompressed: K {head_dim} and V {v_dim} on each of "
                f"{n_kv} KV heads (llama_hparams::is_mla false), cached as standard attention")
    return {"kind": "standard", "num_heads": n_heads, "num_kv_heads": n_kv, "head_dim": head_dim,
            "v_head_dim": v_dim if v_dim != head_dim else None}


def _pattern(kinds: tuple[str, ...], window: int | None) -> dict:
    """The layer kinds as the shortest repeating ``layer_pattern`` (or ``layer_types``), with the
    window; nothing when every layer is full."""
    if set(kinds) == {"full"}:
        return {}
    layers = len(kinds)
    period = next(p for p in range(1, layers + 1) if all(k == kinds[i % p] for i, k in enumerate(kinds)))
    shape = {"layer_pattern": kinds[:period]} if period < layers else {"layer_types": kinds}
    return {**shape, "sliding_window": window}


def _slug(text: str) -> str:
    """A catalog-style name: lowercase letters, digits, '.', '_', '-'."""
    return re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-._") or "model"


def _per_layer_shown(values: list) -> str:
    return "[" + ", ".join(map(str, values[:8])) + (", ...]" if len(values) > 8 else "]")


def _show(value: Any) -> str:
    text = _per_layer_shown(value) if isinstance(value, list) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _one_line(e: Exception) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 120 else text[:117] + "..."
