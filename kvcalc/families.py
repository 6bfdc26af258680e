"""How transformers 5.23 reads each model family's config, as far as its cache is concerned.

A Hugging Face config is read the way transformers reads it: ``model_type`` picks the family's
config class (``models/<type>/configuration_<type>.py``), whose class defaults fill what the file
leaves out, and whose ``__post_init__`` derives the layer layout when ``layer_types`` is absent.
The cache then follows ``cache_utils.get_layer_types_and_kwargs``: ``layer_types``, else a layer
with a ``sliding_window`` slides. These are facts read from those files, tested against the real
classes (``tests/test_families.py``).

A family kvcalc does not model is refused by name (``NOT_MODELLED``); a ``model_type`` it does
not know is read only when the config holds nothing but classic attention fields.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

Get = Callable[[str], object]
"""A config's value by key, the family's class default filled in when the key is absent."""
Layout = Callable[[Get, int], tuple[str, ...]]
"""A family's rule: the kind of every layer ("full", "sliding" or "chunked") when layer_types is
absent."""


def all_full(get: Get, layers: int) -> tuple[str, ...]:
    return ("full",) * layers


def every_layer(get: Get, layers: int) -> tuple[str, ...]:
    """No layer_types: a sliding_window makes every layer slide (Mistral, Mixtral, Phi-3)."""
    return (("sliding" if get("sliding_window") is not None else "full"),) * layers


def gated_every_layer(get: Get, layers: int) -> tuple[str, ...]:
    """Qwen3-MoE: the window only with use_sliding_window, then on every layer."""
    on = get("use_sliding_window") and get("sliding_window") is not None
    return ("sliding" if on else "full",) * layers


def qwen_from(get: Get, layers: int) -> tuple[str, ...]:
    """Qwen2 / Qwen3: with use_sliding_window, layers from max_window_layers on slide."""
    on = get("use_sliding_window") and get("sliding_window") is not None
    first = get("max_window_layers")
    return tuple("sliding" if on and i >= first else "full" for i in range(layers))


def qwen2_moe(get: Get, layers: int) -> tuple[str, ...]:
    """Qwen2-MoE: with use_sliding_window, even layers below max_window_layers slide."""
    on = get("use_sliding_window")
    first = get("max_window_layers")
    return tuple("sliding" if on and i % 2 == 0 and i < first else "full" for i in range(layers))


def period(key: str | None, default: int) -> Layout:
    """Layer i is full when (i + 1) is a multiple of the period, else sliding (Gemma-2: 2,
    Gemma-3: sliding_window_pattern 6, Cohere2 and EXAONE-4: 4, gpt-oss: 2, OLMo-3: 4)."""

    def layout(get: Get, layers: int) -> tuple[str, ...]:
        every = default if key is None else get(key)
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise ValueError(f"{key}: {every!r}: expected a positive integer")
        return tuple("full" if (i + 1) % every == 0 else "sliding" for i in range(layers))

    return layout


def smollm3(get: Get, layers: int) -> tuple[str, ...]:
    """SmolLM3: with use_sliding_window, the NoPE layers slide (every no_rope_layer_interval-th,
    or those no_rope_layers marks 0)."""
    on = get("use_sliding_window") and get("sliding_window") is not None
    rope = get("no_rope_layers")
    if rope is None:
        interval = get("no_rope_layer_interval")
        rope = [int((i + 1) % interval != 0) for i in range(layers)]
    if not isinstance(rope, list) or len(rope) != layers or any(r not in (0, 1) for r in rope):
        raise ValueError(f"no_rope_layers: expected {layers} entries of 0 or 1")
    return tuple("sliding" if on and not rope[i] else "full" for i in range(layers))


def llama4(get: Get, layers: int) -> tuple[str, ...]:
    """Llama-4: the RoPE layers (no_rope_layers 1, by default all but every 4th) attend within
    chunks of attention_chunk_size; the NoPE layers attend to everything."""
    rope = get("no_rope_layers")
    if rope is None or rope == []:  # absent, null or [] (Llama-4-Scout's file): every interval-th is NoPE
        interval = get("no_rope_layer_interval")
        rope = [int((i + 1) % interval != 0) for i in range(layers)]
    if not isinstance(rope, list) or len(rope) != layers or any(r not in (0, 1) for r in rope):
        raise ValueError(f"no_rope_layers: {_short(rope)}: expected {layers} entries of 0 or 1")
    return tuple("chunked" if rope[i] else "full" for i in range(layers))


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def gemma4(get: Get, layers: int) -> tuple[str, ...]:
    """Gemma-4: every sixth layer full, the others sliding (the last layer is always full:
    ``Family.last_full``)."""
    kinds = period(None, 6)(get, layers)
    return kinds[:-1] + ("full",)


# --- linear attention and Mamba hybrids: the layout rules and the mixers ----------------------------

Read = Callable[..., int]
"""The first of some config keys present, as a positive integer (the class default when absent),
or a ``SpecError`` naming the key."""
Mixer = Callable[[Read, Get, int], dict]
"""A family's recurrent mixer (``spec.RecurrentState`` fields) from its config and hidden_size."""

RECURRENT_LAYER_TYPES = {"linear_attention": "recurrent", "full_attention": "full"}
"""The layer_types strings of the linear-attention and Mamba families (transformers 5.23)."""


def qwen3_next(get: Get, layers: int) -> tuple[str, ...]:
    """Qwen3-Next, Qwen3.5: every full_attention_interval-th layer full (3, 7, 11, ... by default),
    the others gated DeltaNet."""
    every = get("full_attention_interval")
    if not isinstance(every, int) or isinstance(every, bool) or every < 1:
        raise ValueError(f"full_attention_interval: {every!r}: expected a positive integer")
    return tuple("full" if (i + 1) % every == 0 else "recurrent" for i in range(layers))


def kimi_linear(get: Get, layers: int) -> tuple[str, ...]:
    """Kimi-Linear: a published linear_attn_config's 1-indexed full_attn_layers and kda_layers, else
    every fourth layer from layer 4 full (layer 0 is KDA)."""
    given = get("linear_attn_config")
    if isinstance(given, dict) and "full_attn_layers" in given and "kda_layers" in given:
        full, kda = given["full_attn_layers"], given["kda_layers"]
        listed = [*full, *kda] if isinstance(full, list) and isinstance(kda, list) else None
        whole = listed is not None and all(type(n) is int for n in listed)
        if not whole or sorted(listed) != list(range(1, layers + 1)):
            raise ValueError(f"linear_attn_config: full_attn_layers {_short(full)} and kda_layers "
                             f"{_short(kda)} must list the layers 1 to {layers} once between them")
        return tuple("full" if i + 1 in full else "recurrent" for i in range(layers))
    return tuple("full" if i and i % 4 == 0 else "recurrent" for i in range(layers))


def minimax(get: Get, layers: int) -> tuple[str, ...]:
    """MiniMax-Text-01 / M1 without layer_types: even layers full, odd ones lightning attention."""
    return tuple("full" if (i + 1) % 2 else "recurrent" for i in range(layers))


def refuse_attn_type_list(get: Get, layers: int) -> None:
    """MiniMax's published files list attn_type_list, which transformers 5.23 never reads."""
    if get("attn_type_list") is not None and get("layer_types") is None:
        raise ValueError("attn_type_list: transformers 5.23 ignores it and lays the layers out by its own "
                         "rule; give layer_types (1 = full_attention, 0 = linear_attention) to say which")


def jamba(get: Get, layers: int) -> tuple[str, ...]:
    """Jamba: attention where layer % attn_layer_period == attn_layer_offset, Mamba elsewhere."""
    period, offset = get("attn_layer_period"), get("attn_layer_offset")
    for key, value in (("attn_layer_period", period), ("attn_layer_offset", offset)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{key}: {value!r}: expected a whole number")
    if not offset < period:
        raise ValueError(f"attn_layer_offset: {offset} must be below attn_layer_period {period}")
    return tuple("full" if i % period == offset else "recurrent" for i in range(layers))


NEMOTRON_PATTERN = {"M": "recurrent", "*": "full", "E": "mlp", "-": "mlp"}
NEMOTRON_LAYER_TYPES = {"linear_attention": "recurrent", "full_attention": "full", "moe": "mlp", "mlp": "mlp",
                        "mamba": "recurrent", "attention": "full"}


def nemotron_h(get: Get, layers: int) -> tuple[str, ...]:
    """Nemotron-H without a layer list: hybrid_override_pattern (M Mamba2, * attention, E MoE, -
    MLP), else transformers' default [M, E, *, -]; MoE and MLP blocks cache nothing."""
    pattern = get("hybrid_override_pattern")
    if pattern is None:
        return ("recurrent", "mlp", "full", "mlp")
    if not isinstance(pattern, str) or not pattern or set(pattern) - set(NEMOTRON_PATTERN):
        raise ValueError(f"hybrid_override_pattern: {pattern!r}: expected a string of M, *, E and -")
    return tuple(NEMOTRON_PATTERN[c] for c in pattern)


def all_hybrid(get: Get, layers: int) -> tuple[str, ...]:
    """Falcon-H1: attention and Mamba2 side by side in every layer."""
    return ("hybrid",) * layers


def all_recurrent(get: Get, layers: int) -> tuple[str, ...]:
    """GraniteMoeHybrid without layer_types: every layer Mamba2."""
    return ("recurrent",) * layers


def gated_deltanet_mixer(read: Read, get: Get, hidden: int) -> dict:
    return {"kind": "gated_deltanet", "num_k_heads": read("linear_num_key_heads"),
            "num_v_heads": read("linear_num_value_heads"), "head_k_dim": read("linear_key_head_dim"),
            "head_v_dim": read("linear_value_head_dim"), "conv_kernel": read("linear_conv_kernel_dim")}


def kda_mixer(read: Read, get: Get, hidden: int) -> dict:
    """KDA: linear_attn_config's head_dim, num_heads and short_conv_kernel_size win over the
    linear_* fields (configuration_kimi_linear.py ``__post_init__``)."""
    given = get("linear_attn_config")
    given = given if isinstance(given, dict) else {}

    def field(key: str, fallback: str) -> int:
        value = given.get(key)
        if value is None:
            return read(fallback)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"linear_attn_config.{key}: {value!r}: expected a positive integer")
        return value

    return {"kind": "kda", "num_heads": field("num_heads", "linear_num_heads"),
            "head_dim": field("head_dim", "linear_head_dim"),
            "conv_kernel": field("short_conv_kernel_size", "linear_conv_kernel_dim")}


def lightning_mixer(read: Read, get: Get, hidden: int) -> dict:
    """MiniMax's lightning attention: the softmax layers' heads and head_dim."""
    heads = read("num_attention_heads")
    head_dim = get("head_dim")
    return {"kind": "lightning", "num_heads": heads,
            "head_dim": read("head_dim") if head_dim is not None else hidden // heads}


def mamba_mixer(read: Read, get: Get, hidden: int) -> dict:
    """Jamba's Mamba: inner channels mamba_expand x hidden_size."""
    return {"kind": "mamba", "intermediate_size": read("mamba_expand") * hidden,
            "d_state": read("mamba_d_state"), "conv_kernel": read("mamba_d_conv")}


def nemotron_mixer(read: Read, get: Get, hidden: int) -> dict:
    """Nemotron-H's Mamba2: mamba_num_heads of mamba_head_dim (expand is not read)."""
    return {"kind": "mamba2", "num_heads": read("mamba_num_heads"), "head_dim": read("mamba_head_dim"),
            "d_state": read("ssm_state_size"), "n_groups": read("n_groups", "mamba_n_groups"),
            "conv_kernel": read("conv_kernel", "mamba_d_conv")}


def _mamba2_heads(read: Read, get: Get, inner: int) -> dict:
    heads = read("mamba_n_heads")
    head = get("mamba_d_head")
    if head in (None, "auto"):
        if inner % heads:
            raise ValueError(f"mamba_n_heads: {heads} does not divide the {inner} inner channels")
        head = inner // heads
    else:
        head = read("mamba_d_head")
        if head * heads != inner:
            raise ValueError(f"mamba_d_head: {head} x mamba_n_heads {heads} is not the {inner} inner "
                             "channels")
    return {"kind": "mamba2", "num_heads": heads, "head_dim": head, "d_state": read("mamba_d_state"),
            "n_groups": read("mamba_n_groups"), "conv_kernel": read("mamba_d_conv")}


def falcon_h1_mixer(read: Read, get: Get, hidden: int) -> dict:
    """Falcon-H1's Mamba2: mamba_d_ssm inner channels, or mamba_expand x hidden_size when null."""
    inner = read("mamba_d_ssm") if get("mamba_d_ssm") is not None else read("mamba_expand") * hidden
    return _mamba2_heads(read, get, inner)


def granite_mixer(read: Read, get: Get, hidden: int) -> dict:
    """GraniteMoeHybrid's Mamba2: mamba_expand x hidden_size inner channels."""
    return _mamba2_heads(read, get, read("mamba_expand") * hidden)


KindShapes = dict[str, dict[str, int]]
Shapes = Callable[[Get, tuple[str, ...], Mapping[str, int]], KindShapes]
"""A family's rule for layers whose attention differs by kind: given every layer's kind and the
attention read from the config (``num_kv_heads``, ``head_dim``, ``v_head_dim``), per kind the fields
that differ."""

_GEMMA4_PER_LAYER = {"head_dim": "head_dim", "num_key_value_heads": "num_kv_heads"}


def gemma4_shapes(get: Get, kinds: tuple[str, ...], attention: Mapping[str, int]) -> KindShapes:
    """Gemma-4's full layers: head_dim global_head_dim, and num_global_key_value_heads KV heads
    when attention_k_eq_v (K = V in value, but both are cached). A ``per_layer_config`` in the file
    replaces that rule: it must give every full layer the same shape and no sliding layer one."""
    given = get("per_layer_config")
    if given is None:
        if get("global_head_dim") is None:
            raise ValueError("global_head_dim: null: the full layers' head size is needed")
        full = {"head_dim": get("global_head_dim")}
        heads = get("num_global_key_value_heads")
        if get("attention_k_eq_v") and heads is not None:
            full["num_kv_heads"] = heads
        return {"full": full}
    if not isinstance(given, dict):
        raise ValueError(f"per_layer_config: {given!r}: expected a mapping of layer index to fields")
    shapes = {str(i): {} for i, kind in enumerate(kinds) if kind == "full"}
    for index, fields in given.items():
        known = isinstance(fields, dict) and set(fields) <= set(_GEMMA4_PER_LAYER)
        if str(index) not in shapes or not known:
            raise ValueError(f"per_layer_config: layer {index}: kvcalc reads only head_dim and "
                             "num_key_value_heads, and only for full-attention layers")
        shapes[str(index)] = {_GEMMA4_PER_LAYER[k]: v for k, v in fields.items()}
    distinct = {tuple(sorted(f.items())) for f in shapes.values()}
    if len(distinct) > 1:
        raise ValueError("per_layer_config: full-attention layers of different shapes are not modelled")
    return {"full": dict(distinct.pop())} if distinct else {}


def mimo_shapes(get: Get, kinds: tuple[str, ...], attention: Mapping[str, int]) -> KindShapes:
    """MiMo-V2-Flash's sliding layers have twice the KV heads (transformers hard-codes
    2 x num_key_value_heads; vLLM and SGLang read swa_num_key_value_heads, swa_head_dim and
    swa_v_head_dim, so a file whose swa_* fields say otherwise is refused)."""
    kv, head = attention["num_kv_heads"], attention["head_dim"]
    v_head = attention["v_head_dim"] or head
    expected_swa = {"swa_num_key_value_heads": (2 * kv, f"2 x num_key_value_heads {kv}"),
                    "swa_head_dim": (head, f"head_dim {head}"),
                    "swa_v_head_dim": (v_head, f"v_head_dim {v_head}")}
    for key, (expected, rule) in expected_swa.items():
        given = get(key)
        if given is not None and given != expected:
            raise ValueError(f"{key}: {given}: transformers' sliding layers use {rule}; refusing "
                             "to pick one engine's reading")
    return {"sliding": {"num_kv_heads": 2 * kv}}


def mimo_v2_flash(get: Get, layers: int) -> tuple[str, ...]:
    """MiMo-V2-Flash: layer 0 and every sixth layer full, the others sliding."""
    return tuple("full" if i == 0 or (i + 1) % 6 == 0 else "sliding" for i in range(layers))


V4_LAYER_TYPES = {"sliding_attention": "sliding", "compressed_sparse_attention": "compressed_sparse",
                  "heavily_compressed_attention": "heavily_compressed"}
_V4_RATIOS = {0: "sliding", 4: "compressed_sparse", 128: "heavily_compressed"}


def deepseek_v4(get: Get, layers: int) -> tuple[str, ...]:
    """DeepSeek-V4: a published file's ``compress_ratios`` (0, 4 or 128 per layer; transformers keeps
    the first num_hidden_layers, the rest describing MTP layers), else two heavily compressed layers
    then compressed sparse and heavily compressed in turn, starting heavily compressed."""
    ratios = get("compress_ratios")
    if ratios is None:
        return tuple("heavily_compressed" if i < 2 or i % 2 == 0 else "compressed_sparse"
                     for i in range(layers))
    if not isinstance(ratios, list) or len(ratios) < layers or any(
            isinstance(r, bool) or r not in _V4_RATIOS for r in ratios):
        raise ValueError(f"compress_ratios: {_short(ratios)}: expected at least {layers} entries of "
                         "0, 4 or 128 (transformers reads no other)")
    return tuple(_V4_RATIOS[r] for r in ratios[:layers])


def own_indexers(get: Get, layers: int) -> None:
    """GLM-5 (DSA): every layer must own its indexer (``indexer_types`` "full"). transformers
    derives indexer_types from index_topk_pattern ("F"/"S" per layer), else layer i owns one when
    max(i - index_skip_topk_offset + 1, 0) is a multiple of index_topk_freq. A "shared" layer
    reuses an earlier layer's selection and caches no indexer keys: not modelled."""
    types = get("indexer_types")
    if types is None:
        pattern = get("index_topk_pattern")
        if pattern is not None:
            types = ["full" if c == "F" else "shared" for c in str(pattern)]
        else:
            freq, offset = get("index_topk_freq"), get("index_skip_topk_offset")
            types = ["full" if max(i - offset + 1, 0) % freq == 0 else "shared" for i in range(layers)]
    if not isinstance(types, list) or len(types) != layers:
        raise ValueError(f"indexer_types: expected {layers} entries")
    if any(t != "full" for t in types):
        shared = sum(t != "full" for t in types)
        raise ValueError(f"indexer_types: {shared} of {layers} layers reuse another layer's indexer "
                         "selection and cache no indexer keys; kvcalc does not model that yet")


@dataclass(frozen=True)
class Family:
    """One model_type as transformers 5.23 reads it."""

    source: str
    """The configuration file the facts come from."""
    layout: Layout = all_full
    defaults: Mapping[str, object] = field(default_factory=dict)
    """Class defaults of the fields kvcalc reads, applied only when the key is absent."""
    mla: bool = False
    kv_shared: bool = False
    """The last ``num_kv_shared_layers`` layers reuse earlier layers' caches (Gemma-3n)."""
    indexer: bool = False
    """DeepSeek Sparse Attention: a lightning indexer's key cached beside the latent."""
    shapes: Shapes | None = None
    """Per-kind attention shapes (Gemma-4, MiMo-V2-Flash)."""
    v_head_dim: bool = False
    """Whether the family's standard attention reads ``v_head_dim`` (a V narrower than K)."""
    window_size_key: str | None = None
    """A field that, set, gives the window as its value + 1 (MiMo's ``sliding_window_size``)."""
    sublayers: int = 1
    """Attention layers in each decoder layer (LongCat-Flash: 2), each with its own cache."""
    counts_params: bool = True
    """Whether kvcalc's parameter count covers the family (its MLPs, experts and embeddings)."""
    check: Callable[[Get, int], None] | None = None
    """A rule the config must meet, whatever gives the layer layout (GLM-5's indexer ownership)."""
    refuse: Mapping[str, tuple[object, ...]] = field(default_factory=dict)
    """Fields whose other values change the cache in a way kvcalc does not model: the values
    kvcalc reads (absent counts as None)."""
    last_full: bool = False
    """The last layer is full attention whatever layer_types says (Gemma-4 forces it)."""
    compressed: bool = False
    """DeepSeek-V4's compressed attention (``spec.CompressedAttention``)."""
    mixer: Mixer | None = None
    """The linear-attention or Mamba mixer of its recurrent layers (``spec.RecurrentState``)."""
    layer_type_names: Mapping[str, str] = field(default_factory=dict)
    """The layer_types strings the family's class reads, and the kvcalc kind of each."""
    layer_types_key: str | None = "layer_types"
    """Where its class keeps the layer list (an alias it also reads: Nemotron-H's layers_block_type);
    None: the class takes no layer list (Jamba, Falcon-H1: a read-only property)."""
    counted_by_types: bool = False
    """The layer count is the length of the layer list (Nemotron-H: num_hidden_layers is derived)."""


def _cfg(model_type: str) -> str:
    return f"transformers/models/{model_type}/configuration_{model_type}.py"


_CAUSAL = {"use_bidirectional_attention": (None, False)}
_QWEN = {"use_sliding_window": False, "sliding_window": 4096, "max_window_layers": 28}
_MLA_V3 = {"kv_lora_rank": 512, "q_lora_rank": 1536, "qk_rope_head_dim": 64, "qk_nope_head_dim": 128,
           "v_head_dim": 128}

FAMILIES: dict[str, Family] = {
    "llama": Family(_cfg("llama")),
    "gemma": Family(_cfg("gemma"), defaults={"head_dim": 256}),
    "glm4": Family(_cfg("glm4"), defaults={"head_dim": 128}),
    "glm4_moe": Family(_cfg("glm4_moe")),
    "minimax_m2": Family(_cfg("minimax_m2"), defaults={"head_dim": 128}),
    "seed_oss": Family(_cfg("seed_oss"), defaults={"head_dim": 128}),
    "granite": Family(_cfg("granite")),
    "falcon": Family(_cfg("falcon"), defaults={"multi_query": True, "new_decoder_architecture": False}),
    "mistral": Family(_cfg("mistral"), every_layer, {"sliding_window": 4096}),
    "mixtral": Family(_cfg("mixtral"), every_layer, {"sliding_window": None}),
    "phi3": Family(_cfg("phi3"), every_layer, {"sliding_window": None}),
    "ministral": Family(_cfg("ministral"), every_layer, {"sliding_window": 4096}),
    "qwen2": Family(_cfg("qwen2"), qwen_from, _QWEN),
    "qwen3": Family(_cfg("qwen3"), qwen_from, {**_QWEN, "head_dim": 128}),
    "qwen2_moe": Family(_cfg("qwen2_moe"), qwen2_moe, _QWEN),
    "qwen3_moe": Family(_cfg("qwen3_moe"), gated_every_layer,
                        {"use_sliding_window": False, "sliding_window": 4096}),
    "gemma2": Family(_cfg("gemma2"), period(None, 2),
                     {"sliding_window": 4096, "head_dim": 256, "tie_word_embeddings": True}),
    "gemma3_text": Family(_cfg("gemma3"), period("sliding_window_pattern", 6),
                          {"sliding_window": 4096, "head_dim": 256, "tie_word_embeddings": True,
                           "sliding_window_pattern": 6},
                          refuse=_CAUSAL),  # bidirectional: an encoder (EmbeddingGemma)
    "gemma3n_text": Family(_cfg("gemma3n"), period(None, 5),
                           {"sliding_window": 512, "head_dim": 256, "num_key_value_heads": 2,
                            "num_kv_shared_layers": 15},
                           kv_shared=True, refuse=_CAUSAL),
    "gpt_oss": Family(_cfg("gpt_oss"), period(None, 2), {"sliding_window": 128}),
    "cohere2": Family(_cfg("cohere2"), period("sliding_window_pattern", 4),
                      {"sliding_window": 4096, "sliding_window_pattern": 4}),
    "olmo3": Family(_cfg("olmo3"), period(None, 4), {"sliding_window": 4096}),
    "exaone4": Family(_cfg("exaone4"), period("sliding_window_pattern", 4),
                      {"sliding_window": 4096, "sliding_window_pattern": 4}),
    "smollm3": Family(_cfg("smollm3"), smollm3,
                      {"use_sliding_window": False, "sliding_window": None, "no_rope_layer_interval": 4}),
    "deepseek_v2": Family(_cfg("deepseek_v2"), defaults=_MLA_V3, mla=True),
    "deepseek_v3": Family(_cfg("deepseek_v3"), defaults=_MLA_V3, mla=True),
    "deepseek_v32": Family(_cfg("deepseek_v32"), mla=True, indexer=True,
                           defaults={**_MLA_V3, "index_head_dim": 128, "index_n_heads": 64}),
    # Kimi-K2's config names its own type, runs DeepseekV3ForCausalLM (its `architectures`).
    "kimi_k2": Family(_cfg("deepseek_v3"), defaults=_MLA_V3, mla=True),
    "glm_moe_dsa": Family(_cfg("glm_moe_dsa"), mla=True, indexer=True, check=own_indexers,
                          defaults={"kv_lora_rank": 512, "q_lora_rank": 2048, "qk_rope_head_dim": 64,
                                    "qk_nope_head_dim": 192, "v_head_dim": 256, "index_head_dim": 128,
                                    "index_n_heads": 32, "index_topk_freq": 1, "index_skip_topk_offset": 2}),
    "longcat_flash": Family(_cfg("longcat_flash"), mla=True, sublayers=2, counts_params=False,
                            defaults={"kv_lora_rank": 512, "q_lora_rank": 1536, "qk_rope_head_dim": 64,
                                      "qk_nope_head_dim": 128, "v_head_dim": 128}),
    "llama4_text": Family(_cfg("llama4"), llama4, counts_params=False,
                          defaults={"attention_chunk_size": 8192, "head_dim": 128, "num_key_value_heads": 8,
                                    "no_rope_layer_interval": 4}),
    "gemma4_text": Family(_cfg("gemma4"), gemma4, kv_shared=True, counts_params=False, shapes=gemma4_shapes,
                          defaults={"sliding_window": 512, "head_dim": 256, "num_key_value_heads": 4,
                                    "global_head_dim": 512, "num_global_key_value_heads": None,
                                    "attention_k_eq_v": False, "num_kv_shared_layers": 0},
                          # "vision" changes only the mask; "all" (an encoder) halves the window
                          refuse={"use_bidirectional_attention": (None, "vision")}, last_full=True),
    "mimo_v2_flash": Family(_cfg("mimo_v2_flash"), mimo_v2_flash, counts_params=False, shapes=mimo_shapes,
                            v_head_dim=True, window_size_key="sliding_window_size",
                            defaults={"sliding_window": 129, "head_dim": 192, "v_head_dim": 128,
                                      "num_key_value_heads": 4}),
    "deepseek_v4": Family(_cfg("deepseek_v4"), deepseek_v4, compressed=True, counts_params=False,
                          defaults={"head_dim": 512, "q_lora_rank": 1024, "sliding_window": 128,
                                    "compress_ratios": None,  # absent: the class's own layout, said
                                    "index_head_dim": 128, "index_n_heads": 64, "num_key_value_heads": 1,
                                    "num_nextn_predict_layers": 1}),
    "minicpm3": Family(_cfg("minicpm3"), mla=True,
                       defaults={"kv_lora_rank": 256, "q_lora_rank": 768, "qk_rope_head_dim": 32,
                                 "qk_nope_head_dim": 64, "v_head_dim": 64}),
}
FAMILIES["gemma3"] = FAMILIES["gemma3_text"]  # an old single-level Gemma-3 config
FAMILIES["gemma3n"] = FAMILIES["gemma3n_text"]
FAMILIES["llama4"] = FAMILIES["llama4_text"]  # the multimodal wrapper, its text_config read
FAMILIES["gemma4"] = FAMILIES["gemma4_text"]

_GDN = {"linear_conv_kernel_dim": 4, "linear_key_head_dim": 128, "linear_value_head_dim": 128,
        "linear_num_key_heads": 16, "linear_num_value_heads": 32, "full_attention_interval": 4,
        "head_dim": 256}
_LINEAR = {"layer_type_names": RECURRENT_LAYER_TYPES, "counts_params": False}
_GDN_FAMILY = {"layer_type_names": RECURRENT_LAYER_TYPES, "mixer": gated_deltanet_mixer}
"""Qwen3-Next and Qwen3.5: their weights counted too (``hf._params``)."""
_MAMBA2_NAMES = {"linear_attention": "recurrent", "full_attention": "full", "mamba": "recurrent",
                 "attention": "full"}

FAMILIES.update({
    "qwen3_next": Family(_cfg("qwen3_next"), qwen3_next, {**_GDN, "num_key_value_heads": 2}, **_GDN_FAMILY),
    "qwen3_5_text": Family(_cfg("qwen3_5"), qwen3_next, {**_GDN, "num_key_value_heads": 4}, **_GDN_FAMILY),
    "qwen3_5_moe_text": Family(_cfg("qwen3_5_moe"), qwen3_next, {**_GDN, "num_key_value_heads": 2},
                               **_GDN_FAMILY),
    "kimi_linear": Family(_cfg("kimi_linear"), kimi_linear, mla=True, mixer=kda_mixer,
                          defaults={"kv_lora_rank": 512, "q_lora_rank": None, "qk_rope_head_dim": 64,
                                    "v_head_dim": 128, "qk_nope_head_dim": 128, "linear_head_dim": 128,
                                    "linear_num_heads": 32, "linear_conv_kernel_dim": 4,
                                    "linear_attn_config": None}, **_LINEAR),
    "minimax": Family(_cfg("minimax"), minimax, {"num_key_value_heads": 8, "head_dim": None},
                      mixer=lightning_mixer, check=refuse_attn_type_list,
                      refuse={"sliding_window": (None,)},  # transformers' cache ignores it: ambiguous
                      **_LINEAR),
    "jamba": Family(_cfg("jamba"), jamba, {"num_key_value_heads": 8, "attn_layer_period": 8,
                                           "attn_layer_offset": 4, "mamba_d_state": 16, "mamba_d_conv": 4,
                                           "mamba_expand": 2},
                    mixer=mamba_mixer, layer_types_key=None, counts_params=False),
    "nemotron_h": Family(_cfg("nemotron_h"), nemotron_h, {"num_key_value_heads": 8, "head_dim": 128,
                                                          "ssm_state_size": 128, "mamba_num_heads": 128,
                                                          "mamba_head_dim": 64, "n_groups": 8,
                                                          "conv_kernel": 4},
                         mixer=nemotron_mixer, layer_type_names=NEMOTRON_LAYER_TYPES,
                         layer_types_key="layers_block_type", counted_by_types=True, counts_params=False),
    "falcon_h1": Family(_cfg("falcon_h1"), all_hybrid, {"num_key_value_heads": 8, "mamba_d_ssm": 1024,
                                                        "mamba_n_heads": 128, "mamba_d_head": "auto",
                                                        "mamba_n_groups": 1, "mamba_d_state": 256,
                                                        "mamba_d_conv": 4, "mamba_expand": 2},
                        mixer=falcon_h1_mixer, layer_types_key=None, counts_params=False),
    "granitemoehybrid": Family(_cfg("granitemoehybrid"), all_recurrent,
                               {"num_key_value_heads": None, "mamba_n_heads": 128, "mamba_n_groups": 1,
                                "mamba_d_state": 256, "mamba_d_head": "auto", "mamba_d_conv": 4,
                                "mamba_expand": 2},
                               mixer=granite_mixer, layer_type_names=_MAMBA2_NAMES,
                               layer_types_key="layers_block_type", counts_params=False),
})
FAMILIES["qwen3_5"] = FAMILIES["qwen3_5_text"]  # the multimodal wrappers, their text_config read
FAMILIES["qwen3_5_moe"] = FAMILIES["qwen3_5_moe_text"]

NOT_MODELLED: dict[str, str] = {
    **dict.fromkeys(("mamba", "mamba2", "zamba", "zamba2", "bamba", "lfm2", "lfm2_moe", "hunyuan_v1_dense"),
                    "the recurrent state of this family's linear-attention or Mamba layers"),
}
"""Families whose cache holds something kvcalc does not compute yet: refused, never guessed."""

CLASSIC_FIELDS = frozenset({
    "num_hidden_layers", "n_layer", "num_layers", "hidden_size", "n_embd", "d_model",
    "num_attention_heads", "n_head", "num_heads", "num_key_value_heads", "num_kv_heads", "n_head_kv",
    "head_dim", "max_position_embeddings", "n_positions", "vocab_size", "intermediate_size",
    "tie_word_embeddings", "attention_bias", "layer_types",
})
"""The fields of a plain decoder of full-attention layers; ``layer_types`` only full ones."""

UNRELATED_FIELDS = frozenset({
    "architectures", "model_type", "_name_or_path", "transformers_version", "torch_dtype", "dtype",
    "auto_map", "bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id", "decoder_start_token_id",
    "hidden_act", "activation_function", "initializer_range", "rms_norm_eps", "layer_norm_eps",
    "layer_norm_epsilon", "rope_theta", "rope_scaling", "rope_parameters", "partial_rotary_factor",
    "use_cache", "attention_dropout", "hidden_dropout", "dropout", "mlp_bias", "pretraining_tp",
    "quantization_config", "tokenizer_class", "id2label", "label2id", "num_labels", "problem_type",
    "output_attentions", "output_hidden_states", "return_dict", "is_encoder_decoder",
    "chunk_size_feed_forward",
    "tie_encoder_decoder", "max_length", "bad_words_ids", "embd_pdrop", "resid_pdrop", "attn_pdrop",
    "qk_layernorm", "use_qk_norm", "logits_scaling", "embedding_multiplier", "residual_multiplier",
    "attention_multiplier", "final_logit_softcapping", "attn_logit_softcapping",
})
"""Fields that do not change what a layer caches (numerics, tokens, bookkeeping)."""
