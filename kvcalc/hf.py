"""Hugging Face ``config.json`` and DeepSeek reference ``inference/configs/*.json`` -> spec.

Read as transformers reads it (KV-CACHE-FACTS section 6; the rules of each family in
``families.py``): ``model_type`` picks the family, whose class defaults fill absent fields and whose
rule derives the layer layout when ``layer_types`` is absent; then the fields.
- A family kvcalc does not model is refused by name; an unknown ``model_type`` is read only when it
  holds nothing but classic attention fields (all layers full), and said so.
- MLA families read the latent; their ``num_key_value_heads`` and ``head_dim`` do not describe the
  cache and are ignored (still checked).
- ``head_dim`` is taken when present; hidden_size / heads is only a fallback, and said so.
- Multimodal wrappers nest the language model under ``text_config``.
Every default assumed is recorded in the spec's ``assumptions`` and shown by ``show``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from kvcalc.errors import SpecError
from kvcalc.families import (
    CLASSIC_FIELDS,
    FAMILIES,
    NOT_MODELLED,
    UNRELATED_FIELDS,
    V4_LAYER_TYPES,
    Family,
    all_full,
)
from kvcalc.rotary import CONFIG_KEYS as ROPE_CONFIG_KEYS
from kvcalc.rotary import check_settings, rope_parameters
from kvcalc.spec import (
    ARCHITECTURE_PATTERN,
    MAX_DIM,
    MAX_HEADS,
    MAX_LAYERS,
    MAX_TOKENS,
    NO_CACHE_KINDS,
    STATE_DTYPES,
    LayerKind,
    ModelSpec,
    RecurrentKind,
    RecurrentState,
    StandardAttention,
)

_HF_MARKERS = ("model_type", "architectures", "num_hidden_layers", "n_layer", "text_config")
_REFERENCE_MARKERS = ("n_layers", "n_heads", "dim")

_QKV_BIAS = {"qwen2", "qwen2_moe"}
_QK_NORM = {"qwen3", "qwen3_moe", "gemma3", "gemma3_text", "qwen3_next", "qwen3_5_text", "qwen3_5_moe_text"}
_DENSE_MLP = {"qwen3_5_text"}
"""Families whose class has no experts: expert fields in the file are ignored."""
_GATED_QUERY = {"qwen3_next", "qwen3_5_text", "qwen3_5_moe_text"}
"""Attention whose q_proj also makes a sigmoid output gate as wide as the query (Qwen3-Next)."""
_FOUR_NORMS = {"gemma2", "gemma3", "gemma3_text"}
_LAYER_TYPES = {"full_attention": "full", "sliding_attention": "sliding"}
_CHUNKED_TYPE = {"chunked_attention": "chunked"}
_INDEXED_TYPE = {"indexed_attention": "full"}
"""Under DSA a layer is ``indexed_attention``: it holds every token, as a full one does."""
_BOUNDS = {
    **dict.fromkeys(("num_hidden_layers", "n_layer", "num_layers", "n_layers", "num_nextn_predict_layers",
                     "max_window_layers", "first_k_dense_replace", "sliding_window_pattern",
                     "num_kv_shared_layers", "no_rope_layer_interval", "index_topk_freq",
                     "index_skip_topk_offset"), MAX_LAYERS),
    **dict.fromkeys(("num_attention_heads", "n_head", "num_heads", "n_heads", "num_key_value_heads",
                     "num_kv_heads", "n_head_kv", "n_routed_experts", "num_local_experts", "num_experts",
                     "n_shared_experts", "index_n_heads", "num_global_key_value_heads",
                     "swa_num_key_value_heads"), MAX_HEADS),
    **dict.fromkeys(("max_position_embeddings", "n_positions", "sliding_window", "sliding_window_size",
                     "attention_chunk_size", "compress_rate_csa", "compress_rate_hca",
                     "compress_rates.compressed_sparse_attention",
                     "compress_rates.heavily_compressed_attention"), MAX_TOKENS),
}
"""Upper bounds of the integer fields read; any other (dimensions, vocabulary, MLP widths) is at
most ``MAX_DIM``. Every count is at least 1 unless read with ``low=0`` (0 means none)."""
_INT_FIELDS = (
    "num_hidden_layers", "n_layer", "num_layers", "hidden_size", "n_embd", "d_model", "num_attention_heads",
    "n_head", "num_heads", "num_key_value_heads", "num_kv_heads", "n_head_kv", "head_dim", "kv_lora_rank",
    "q_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "sliding_window",
    "sliding_window_pattern", "max_window_layers", "max_position_embeddings", "n_positions",
    "num_nextn_predict_layers", "vocab_size", "intermediate_size", "moe_intermediate_size",
    "shared_expert_intermediate_size", "n_routed_experts", "num_local_experts", "num_experts",
    "n_shared_experts", "first_k_dense_replace", "index_head_dim", "index_n_heads", "index_topk",
    "num_kv_shared_layers", "attention_chunk_size", "no_rope_layer_interval", "global_head_dim",
    "num_global_key_value_heads", "sliding_window_size", "swa_num_key_value_heads", "swa_head_dim",
    "swa_v_head_dim", "index_topk_freq", "index_skip_topk_offset", "compress_rate_csa", "compress_rate_hca",
)
"""Every integer field read from a Hugging Face config (MLA's num_key_value_heads and head_dim
included: ignored for the cache, still checked)."""
_ZERO_OK = {"num_nextn_predict_layers", "max_window_layers", "n_shared_experts", "first_k_dense_replace",
            "num_kv_shared_layers", "index_skip_topk_offset"}
_PER_LAYER_OK = {"intermediate_size"}
"""Fields a config may give per layer (Gemma-3n); they only feed the parameter count."""
_FLAGS = ("use_sliding_window", "tie_word_embeddings", "multi_query", "attention_bias",
          "new_decoder_architecture", "attention_k_eq_v")


def is_hf_config(data: dict) -> bool:
    return any(key in data for key in _HF_MARKERS)


def is_reference_config(data: dict) -> bool:
    return all(key in data for key in _REFERENCE_MARKERS)


def spec_from_hf(data: dict, origin: str, name: str) -> ModelSpec:
    """A spec from a Hugging Face config.json (``origin`` names it in errors)."""
    text_config = data.get("text_config")
    if text_config is not None and not (isinstance(text_config, dict) and text_config):
        raise SpecError(f"{origin}: text_config: {_show(text_config)}: expected the language model's fields")
    cfg = _Config(text_config or data, origin)
    _check_fields(cfg, data)
    model_type = cfg.raw.get("model_type") or data.get("model_type") or ""
    family = _family(cfg, model_type)
    cfg.defaults = dict(family.defaults)
    layers = _layers(cfg, family)
    hidden = cfg.first_int("hidden_size", "n_embd", "d_model")
    heads = cfg.first_int("num_attention_heads", "n_head", "num_heads")
    if family.mla:
        attention = _mla(cfg, heads, family.indexer)
    elif family.compressed:
        attention = _compressed(cfg, heads)
    else:
        attention = _standard(cfg, heads, hidden, family)
    windows = _windows(cfg, family, layers)
    fields = {
        "name": name,
        "display_name": _display_name(data, name),
        "source": origin,
        "architecture": _architecture(data, origin),
        "weights_dtype": _weights_dtype(cfg, data),
        "num_layers": layers,
        "hidden_size": hidden,
        "max_position_embeddings": cfg.optional_int("max_position_embeddings", "n_positions"),
        "mtp_layers": cfg.optional_int("num_nextn_predict_layers", low=0) or 0,
        "attention": attention,
        **windows,
        "layer_attention": _layer_attention(cfg, family, attention, windows, layers),
        "sublayers": family.sublayers,
        "recurrent": _recurrent(cfg, family, windows, hidden),
    }
    spec = _validate(fields, origin)
    params = _params(cfg, model_type, spec) if family.counts_params else None
    if not family.counts_params:
        cfg.assume(f"params unknown: kvcalc does not count {model_type}'s weights")
    return spec.replace(params=params, rope=_rope(cfg.raw, spec), assumptions=tuple(cfg.assumptions),
                        attention_bias=cfg.raw.get("attention_bias") is True)


def _states_theta(parameters: Any) -> bool:
    """Whether transformers-5 ``rope_parameters`` (one dict, or one per layer type) name every base."""
    if not isinstance(parameters, dict) or not parameters:
        return False
    per_type = parameters.values() if all(isinstance(v, dict) for v in parameters.values()) else [parameters]
    return all(p.get("rope_theta") is not None for p in per_type)


def _rope(config: dict, spec: ModelSpec) -> dict | None:
    """The rope settings of each attention layer kind (``rotary.rope_parameters``: a sliding layer
    reads its layer type's), one dict when every kind's is the same; None when the config's rope is
    one kvcalc's layers do not compute (longrope, mrope, a field it does not read) -- it shapes no
    cache, so the spec only leaves it out."""
    if any("rope" in key and key not in ROPE_CONFIG_KEYS for key in config):
        return None
    if config.get("rope_theta") is None and not _states_theta(config.get("rope_parameters")):
        return None  # the family's class default would apply: the config does not say
    per_kind = {}
    for kind in spec.layer_counts:
        if kind in NO_CACHE_KINDS or kind is LayerKind.RECURRENT:
            continue
        try:
            layer_type = "sliding_attention" if kind is LayerKind.SLIDING else "full_attention"
            settings = rope_parameters(config, layer_type)
            per_kind[str(kind)] = check_settings(settings, max_tokens=MAX_TOKENS)
        except (ValueError, TypeError):
            return None
    if not per_kind:
        return None
    first = next(iter(per_kind.values()))
    return first if all(v == first for v in per_kind.values()) else per_kind


def spec_from_reference(data: dict, origin: str, name: str) -> ModelSpec:
    """A spec from DeepSeek's reference ``inference/configs/config_*.json`` (``ModelArgs``)."""
    cfg = _Config(data, origin)
    q_lora = cfg.optional_int("q_lora_rank", low=0) or None  # 0 means a plain query projection
    attention = {
        "kind": "mla",
        "num_heads": cfg.first_int("n_heads"),
        "q_lora_rank": q_lora,
        "kv_lora_rank": cfg.first_int("kv_lora_rank"),
        "qk_nope_head_dim": cfg.first_int("qk_nope_head_dim"),
        "qk_rope_head_dim": cfg.first_int("qk_rope_head_dim"),
        "v_head_dim": cfg.first_int("v_head_dim"),
    }
    fields = {
        "name": name,
        "display_name": name,
        "source": origin,
        "num_layers": cfg.first_int("n_layers"),
        "hidden_size": cfg.first_int("dim"),
        "attention": attention,
        "assumptions": ("the reference inference code runs no MTP layer: mtp_layers 0",),
    }
    return _validate(fields, origin)


class _Config:
    """Typed reads from one config mapping, recording every default assumed."""

    def __init__(self, raw: dict, origin: str) -> None:
        self.raw = raw
        self.origin = origin
        self.defaults: dict[str, int | bool] = {}
        self.assumptions: list[str] = []

    def first_int(self, *keys: str) -> int:
        value = self.optional_int(*keys)
        if value is None:
            raise SpecError(f"{self.origin}: {keys[0]}: required field is missing")
        return value

    def optional_int(self, *keys: str, low: int = 1) -> int | None:
        """The first of ``keys`` present, an integer from ``low`` to its bound (``_BOUNDS``); the
        class default when none is in the config (an explicit null stays null)."""
        for key in keys:
            if self.raw.get(key) is not None:
                return self._int(key, self.raw[key], low)
        if any(key in self.raw for key in keys):
            return None
        return next((self.default(key) for key in keys if key in self.defaults), None)

    def flag(self, key: str) -> bool | None:
        value = self.raw[key] if key in self.raw else self.default(key)
        if value is not None and not isinstance(value, bool):
            raise SpecError(f"{self.origin}: {key}: {_show(value)}: expected true or false")
        return value

    def value(self, key: str) -> Any:
        """A field as the family's class holds it: the config's value, else the class default."""
        return self.raw[key] if key in self.raw else self.default(key)

    def default(self, key: str) -> Any:
        if key not in self.defaults:
            return None
        value = self.defaults[key]
        shown = "null" if value is None else str(value).lower() if isinstance(value, bool) else value
        self.assume(f"{key} {shown} (class default; absent from the config)")
        return value

    def assume(self, text: str) -> None:
        self.assumptions.append(text)

    def _int(self, key: str, value: Any, low: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(f"{self.origin}: {key}: {_show(value)}: expected an integer")
        high = _BOUNDS.get(key, MAX_DIM)
        if not low <= value <= high:
            raise SpecError(f"{self.origin}: {key}: {value}: must be from {low} to {high:,}")
        return value


def _layers(cfg: _Config, family: Family) -> int:
    """Attention layers: LongCat-Flash's ``num_layers`` counts decoder layers of two each; Nemotron-H's
    come from its layer list (``spec_from_hf``), num_hidden_layers only said when it differs."""
    if family.counted_by_types:
        given = cfg.optional_int("num_hidden_layers")
        types = _layer_list(cfg, family)
        try:
            layers = len(types) if isinstance(types, list) else len(family.layout(cfg.value, 0))
        except ValueError as e:
            raise SpecError(f"{cfg.origin}: {e}") from None
        if given and given != layers:
            cfg.assume(f"{layers} layers, as its layer list has (num_hidden_layers {given} is derived from "
                       "it and ignored)")
        return layers
    if family.sublayers == 1:
        return cfg.first_int("num_hidden_layers", "n_layer", "num_layers")
    blocks = cfg.first_int("num_layers")
    cfg.assume(f"{blocks * family.sublayers} attention layers: {family.sublayers} in each of the "
               f"num_layers {blocks} decoder layers, each with its own cache")
    return blocks * family.sublayers


def _layer_attention(cfg: _Config, family: Family, attention: dict, windows: dict,
                     layers: int) -> dict | None:
    """The attention of the layer kinds whose shape differs from the config's own (Gemma-4's full
    layers, MiMo-V2-Flash's sliding ones)."""
    if family.shapes is None:
        return None
    pattern = windows.get("layer_types") or windows.get("layer_pattern") or ("full",)
    kinds = tuple(pattern[i % len(pattern)] for i in range(layers))
    try:
        shapes = family.shapes(cfg.value, kinds, attention)
    except ValueError as e:
        raise SpecError(f"{cfg.origin}: {e}") from None
    return {kind: {**attention, **changes} for kind, changes in shapes.items() if kind in kinds} or None


def _recurrent(cfg: _Config, family: Family, windows: dict, hidden: int) -> dict | None:
    """The mixer of the recurrent and hybrid layers, when the layout has any."""
    kinds = set(windows.get("layer_types") or windows.get("layer_pattern") or ())
    if family.mixer is None or not kinds & {"recurrent", "hybrid"}:
        return None
    try:
        mixer = family.mixer(cfg.first_int, cfg.value, hidden)
    except ValueError as e:
        raise SpecError(f"{cfg.origin}: {e}") from None
    for key, name in (("mamba_ssm_dtype", "ssm_dtype"), ("mamba_ssm_cache_dtype", "ssm_cache_dtype")):
        value = cfg.raw.get(key)
        if value is not None and value not in STATE_DTYPES:
            raise SpecError(f"{cfg.origin}: {key}: {value!r} is not one of "
                            f"{', '.join(map(repr, STATE_DTYPES))}")
        if value is not None:
            mixer[name] = value
    return mixer


def _mla(cfg: _Config, heads: int, indexer: bool) -> dict:
    q_lora = cfg.optional_int("q_lora_rank")
    v_dim = cfg.optional_int("v_head_dim")
    if v_dim is None:
        v_dim = cfg.first_int("qk_nope_head_dim")
        cfg.assume(f"v_head_dim {v_dim} = qk_nope_head_dim (absent from the config)")
    index = {}
    if indexer:  # DeepSeek-V3.2: the lightning indexer's key, cached beside the latent
        index = {key: cfg.first_int(key) for key in ("index_head_dim", "index_n_heads")}
    return {
        **index,
        "kind": "mla",
        "num_heads": heads,
        "q_lora_rank": q_lora,
        "kv_lora_rank": cfg.first_int("kv_lora_rank"),
        "qk_nope_head_dim": cfg.first_int("qk_nope_head_dim"),
        "qk_rope_head_dim": cfg.first_int("qk_rope_head_dim"),
        "v_head_dim": v_dim,
    }


_V4_RATE_KEYS = {"csa_rate": ("compressed_sparse_attention", "compress_rate_csa", 4),
                 "hca_rate": ("heavily_compressed_attention", "compress_rate_hca", 128)}


def _compressed(cfg: _Config, heads: int) -> dict:
    """DeepSeek-V4: one K = V head of head_dim (transformers ignores num_key_value_heads, so a value
    other than 1 is refused), the rotary slice (partial_rotary_factor x head_dim, or the older
    qk_rope_head_dim, else 64/512 of it), the compress rates (compress_rates, or the older
    compress_rate_csa / compress_rate_hca, else 4 and 128) and the lightning indexer."""
    kv_heads = cfg.optional_int("num_key_value_heads")
    if kv_heads != 1:
        raise SpecError(f"{cfg.origin}: num_key_value_heads: {kv_heads}: DeepSeek-V4 caches one K = V head "
                        "whatever this says (transformers ignores it); refusing to guess which is meant")
    head_dim = cfg.first_int("head_dim")
    rates = cfg.raw.get("compress_rates")
    known = {key for key, _, _ in _V4_RATE_KEYS.values()}
    if rates is not None and not (isinstance(rates, dict) and set(rates) <= known):
        raise SpecError(f"{cfg.origin}: compress_rates: {_show(rates)}: expected compressed_sparse_attention "
                        "and heavily_compressed_attention")
    fields = {}
    for field, (key, legacy, default) in _V4_RATE_KEYS.items():
        if rates is not None and key in rates:
            fields[field] = cfg._int(f"compress_rates.{key}", rates[key], 1)
        elif cfg.raw.get(legacy) is not None:
            fields[field] = cfg.first_int(legacy)
        else:
            fields[field] = default
            cfg.assume(f"compress_rates.{key} {default} (class default; absent from the config)")
    return {
        **fields,
        "kind": "compressed",
        "num_heads": heads,
        "head_dim": head_dim,
        "qk_rope_head_dim": _rope_slice(cfg, head_dim),
        "q_lora_rank": cfg.first_int("q_lora_rank"),
        "index_head_dim": cfg.first_int("index_head_dim"),
        "index_n_heads": cfg.first_int("index_n_heads"),
    }


def _rope_slice(cfg: _Config, head_dim: int) -> int:
    factor = cfg.raw.get("partial_rotary_factor")
    if factor is None:
        rope = cfg.optional_int("qk_rope_head_dim")
        if rope is not None:
            return rope
        factor = 64 / 512
        cfg.assume(f"qk_rope_head_dim {int(head_dim * factor)} = head_dim x 64/512 (class default)")
    if isinstance(factor, bool) or not isinstance(factor, int | float) or not 0 < factor <= 1:
        raise SpecError(f"{cfg.origin}: partial_rotary_factor: {_show(factor)}: expected a number in (0, 1]")
    if int(head_dim * factor) < 1:
        raise SpecError(f"{cfg.origin}: partial_rotary_factor: {factor}: leaves no rotary dimension")
    return int(head_dim * factor)


def _family(cfg: _Config, model_type: str) -> Family:
    """The family transformers would read this config as, or a ``SpecError`` saying why not."""
    if model_type in NOT_MODELLED:
        raise SpecError(f"{cfg.origin}: model_type: {model_type!r}: kvcalc does not model "
                        f"{NOT_MODELLED[model_type]} yet; refusing rather than guessing")
    family = FAMILIES.get(model_type)
    if family is None:
        unknown = sorted(k for k in cfg.raw if k not in CLASSIC_FIELDS and k not in UNRELATED_FIELDS)
        if unknown:
            shown = ", ".join(unknown[:6]) + (f" and {len(unknown) - 6} more" if len(unknown) > 6 else "")
            raise SpecError(f"{cfg.origin}: model_type: {model_type!r} is not a family kvcalc knows, and "
                            f"its config holds fields kvcalc does not understand: {shown}")
        cfg.assume(f"model_type {model_type!r} is not a family kvcalc knows: read from its classic "
                   "attention fields, every layer full attention")
        return Family("(classic fields only)")
    for key, read in family.refuse.items():
        if cfg.raw.get(key) not in read:
            raise SpecError(f"{cfg.origin}: {key}: {_show(cfg.raw[key])}: kvcalc does not model this "
                            f"{model_type} variant's cache; refusing rather than guessing")
    if not family.mla and cfg.raw.get("kv_lora_rank") is not None:
        raise SpecError(f"{cfg.origin}: kv_lora_rank: {model_type} has no latent attention "
                        "(transformers ignores the field); refusing to guess which is meant")
    if family.layout is all_full and cfg.raw.get("sliding_window") is not None:
        raise SpecError(f"{cfg.origin}: sliding_window: {model_type} layers do not slide "
                        "(transformers' attention ignores the field); refusing to guess which is meant")
    return family


def _standard(cfg: _Config, heads: int, hidden: int, family: Family) -> dict:
    kv_heads = cfg.optional_int("num_key_value_heads", "num_kv_heads", "n_head_kv")
    if cfg.flag("new_decoder_architecture") is False and cfg.flag("multi_query"):
        kv_heads = 1  # Falcon-7B: one KV head; num_kv_heads is read only by the new architecture
    if kv_heads is None:
        kv_heads = heads
        cfg.assume(f"num_key_value_heads {heads} = num_attention_heads (MHA; absent from the config)")
    head_dim = cfg.optional_int("head_dim")
    if head_dim is None:
        if hidden % heads:
            raise SpecError(
                f"{cfg.origin}: head_dim: missing, and hidden_size {hidden} is not a multiple of "
                f"{heads} heads"
            )
        head_dim = hidden // heads
        cfg.assume(f"head_dim {head_dim} = hidden_size / num_attention_heads (absent from the config)")
    v_head_dim = cfg.optional_int("v_head_dim") if family.v_head_dim else None
    return {"kind": "standard", "num_heads": heads, "num_kv_heads": kv_heads, "head_dim": head_dim,
            "v_head_dim": v_head_dim}


def _check_fields(cfg: _Config, data: dict) -> None:
    """Every field kvcalc reads, checked where present, whichever path the config then takes: a
    wrong value is an error even where this config would not use it."""
    for key in _INT_FIELDS:
        if isinstance(cfg.raw.get(key), list) and key in _PER_LAYER_OK:
            if not cfg.raw[key]:
                raise SpecError(f"{cfg.origin}: {key}: []: expected a size, or one per layer")
            for value in cfg.raw[key]:
                cfg._int(key, value, 1)
            continue
        cfg.optional_int(key, low=0 if key in _ZERO_OK else 1)
    for key in _FLAGS:
        cfg.flag(key)
    for raw in (cfg.raw, data):
        for key in ("model_type", "topk_method"):
            if raw.get(key) is not None and not isinstance(raw[key], str):
                raise SpecError(f"{cfg.origin}: {key}: {_show(raw[key])}: expected a string")


def _windows(cfg: _Config, family: Family, layers: int) -> dict:
    """``sliding_window`` / ``attention_chunk_size`` plus ``layer_types`` or ``layer_pattern``, or
    nothing (all full): the config's ``layer_types``, else the family's rule (``families.py``);
    then, in a family that shares caches, its shared layers."""
    types = _layer_list(cfg, family)
    try:
        if family.check is not None:
            family.check(cfg.value, layers)
        if types is None:
            kinds = family.layout(cfg.value, layers)
    except ValueError as e:
        raise SpecError(f"{cfg.origin}: {e}") from None
    if types is not None:
        known = V4_LAYER_TYPES if family.compressed else family.layer_type_names or {
            **_LAYER_TYPES, **(_CHUNKED_TYPE if "attention_chunk_size" in family.defaults else {}),
            **(_INDEXED_TYPE if family.indexer else {})}
        kinds = _from_layer_types(cfg, types, layers, known)
    if family.last_full and kinds[-1] != "full":
        kinds = kinds[:-1] + ("full",)
        cfg.assume(f"the last layer full attention, as {family.source} forces it")
    return _shape(cfg, family, _shared_tail(cfg, kinds) if family.kv_shared else kinds)


def _layer_list(cfg: _Config, family: Family) -> Any:
    """The config's layer list: ``layer_types``, or the alias the family's class keeps it under."""
    alias = family.layer_types_key or "layers_block_type"  # a class without a list refuses either
    keys = [k for k in dict.fromkeys(("layer_types", alias)) if cfg.raw.get(k) is not None]
    if keys and family.layer_types_key is None:
        raise SpecError(f"{cfg.origin}: {keys[0]}: {family.source} takes no layer list (its layout is a "
                        "read-only property; transformers refuses the field)")
    if len(set(keys)) > 1 and cfg.raw[keys[0]] != cfg.raw[keys[1]]:
        raise SpecError(f"{cfg.origin}: layer_types and {keys[1]} differ; they are one field in "
                        f"{family.source}")
    return cfg.raw[keys[0]] if keys else None


def _shared_tail(cfg: _Config, kinds: tuple[str, ...]) -> tuple[str, ...]:
    """Gemma-3n: the last ``num_kv_shared_layers`` layers reuse the cache of the last earlier layer
    of their kind and hold none (transformers' ``kv_sharing_modes``, "reuse")."""
    shared = cfg.optional_int("num_kv_shared_layers", low=0) or 0
    own = len(kinds) - shared
    if own < 0 or not set(kinds[own:]) <= set(kinds[:own]):
        raise SpecError(f"{cfg.origin}: num_kv_shared_layers: {shared}: the shared layers need an earlier "
                        "layer of each of their kinds to share")
    return kinds[:own] + ("shared",) * shared


def _from_layer_types(cfg: _Config, types: Any, layers: int, known: dict[str, str]) -> tuple[str, ...]:
    if not isinstance(types, list) or not all(isinstance(t, str) for t in types):
        raise SpecError(f"{cfg.origin}: layer_types: {_show(types)}: expected a list of strings")
    unknown = sorted({t for t in types if t not in known}, key=str)
    if unknown:
        raise SpecError(
            f"{cfg.origin}: layer_types: {unknown[0]!r} is not supported "
            f"(kvcalc models {', '.join(known)} here)"
        )
    kinds = tuple(known[t] for t in types)
    if len(kinds) != layers:
        raise SpecError(
            f"{cfg.origin}: layer_types: lists {len(kinds)} layers but num_hidden_layers is {layers}"
        )
    return kinds


def _shape(cfg: _Config, family: Family, kinds: tuple[str, ...]) -> dict:
    """Every layer's kind as the shortest repeating ``layer_pattern`` (or ``layer_types``), with
    the window when a layer slides and the chunk when one is chunked; nothing when every layer is
    full."""
    if set(kinds) == {"full"}:
        return {}
    layers = len(kinds)
    period = next(p for p in range(1, layers + 1) if all(k == kinds[i % p] for i, k in enumerate(kinds)))
    shape = {"layer_pattern": kinds[:period]} if period < layers else {"layer_types": kinds}
    if {"sliding", *V4_LAYER_TYPES.values()} & set(kinds):  # every DeepSeek-V4 layer has a window
        shape["sliding_window"] = _window(cfg, family)
    if "chunked" in kinds:
        shape["attention_chunk_size"] = cfg.first_int("attention_chunk_size")
    return shape


def _window(cfg: _Config, family: Family) -> int:
    """``sliding_window``, or MiMo's ``sliding_window_size`` + 1 (the tokens before a query, and
    the query) when the file gives that."""
    size = cfg.optional_int(family.window_size_key) if family.window_size_key else None
    if size is None:
        return cfg.first_int("sliding_window")
    cfg.assume(f"sliding_window {size + 1} = {family.window_size_key} {size} + 1 (as transformers reads it)")
    return size + 1


def _params(cfg: _Config, model_type: str, spec: ModelSpec) -> int | None:
    """Parameter count from the config's fields: embeddings, attention, (MoE) gated MLPs, norms.

    Checked against published totals: Llama-3.1-8B 8,030,261,248; Qwen2.5-7B 7,615,616,512;
    Mixtral-8x7B 46,702,792,704; DeepSeek-V3 671,026,419,200 (main model, MTP excluded).
    """
    per_layer = cfg.raw.get("intermediate_size")
    if isinstance(per_layer, list):
        if len(per_layer) != spec.num_layers:
            raise SpecError(f"{cfg.origin}: intermediate_size: lists {len(per_layer)} values but "
                            f"num_hidden_layers is {spec.num_layers}")
        cfg.assume("params unknown: intermediate_size differs per layer")
        return None
    sparse = (cfg.raw.get("mlp_only_layers"), cfg.raw.get("decoder_sparse_step"))
    if sparse[0] not in (None, []) or sparse[1] not in (None, 1):
        cfg.assume("params unknown: mlp_only_layers or decoder_sparse_step make some MLPs dense")
        return None
    vocab = cfg.optional_int("vocab_size")
    inter = cfg.optional_int("intermediate_size")
    if vocab is None or inter is None:
        cfg.assume("params unknown: vocab_size or intermediate_size absent")
        return None
    hidden, layers = spec.hidden_size, spec.num_layers
    tied = cfg.flag("tie_word_embeddings")
    if tied is None:
        cfg.assume("tie_word_embeddings false (absent from the config): a separate output matrix")
    embeddings = vocab * hidden * (1 if tied else 2)
    attention = _attention_params(cfg, model_type, spec.attention, hidden)
    mixer = 0 if spec.recurrent is None else _mixer_params(spec.recurrent, hidden)
    mixers = [attention if kind == "full" else mixer for kind in spec.layer_kinds]
    norms = (4 if model_type in _FOUR_NORMS else 2) * hidden
    mlp = (lambda i: 3 * hidden * inter) if model_type in _DENSE_MLP else _mlp_params(cfg, hidden, inter)
    total = embeddings + hidden + sum(mixers[i] + norms + mlp(i) for i in range(layers))
    cfg.assume("params derived from the config (gated MLPs; expert and output biases not counted)")
    return total


def _attention_params(cfg: _Config, model_type: str, attn, hidden: int) -> int:
    """The attention's projections, plus the qkv biases and q/k norms some families add."""
    extra = 0
    if isinstance(attn, StandardAttention):
        d, kv_heads = attn.head_dim, attn.num_kv_heads
        if model_type in _QKV_BIAS or cfg.flag("attention_bias"):
            extra += (attn.num_heads + 2 * kv_heads) * d
        if model_type in _QK_NORM:
            extra += 2 * d
        if model_type in _GATED_QUERY:
            extra += hidden * attn.num_heads * d
    return attn.weight_count(hidden) + extra


def _mixer_params(mixer: RecurrentState, hidden: int) -> int:
    """A gated DeltaNet layer's weights (transformers' Qwen3NextGatedDeltaNet): q|k|v|z and b|a
    projections, the depthwise conv, per-head dt bias and A, the gated norm, the output projection."""
    if mixer.kind is not RecurrentKind.GATED_DELTANET:
        raise ValueError(f"params: kvcalc does not count a {mixer.kind} mixer's weights")
    key, value = mixer.num_k_heads * mixer.head_k_dim, mixer.num_v_heads * mixer.head_v_dim
    heads = mixer.num_v_heads
    return (mixer.conv_channels * mixer.conv_kernel + (2 * key + 2 * value) * hidden + 2 * heads * hidden
            + 2 * heads + mixer.head_v_dim + value * hidden)


def _mlp_params(cfg: _Config, hidden: int, inter: int) -> Callable[[int], int]:
    """Parameters of layer i's MLP: dense, or routed + shared experts and their router."""
    experts = cfg.optional_int("n_routed_experts", "num_local_experts", "num_experts")
    dense = 3 * hidden * inter
    if not experts:
        return lambda i: dense
    expert_inter = cfg.optional_int("moe_intermediate_size") or inter
    shared = (cfg.optional_int("n_shared_experts", low=0) or 0) * 3 * hidden * expert_inter
    shared_inter = cfg.optional_int("shared_expert_intermediate_size")
    if shared_inter:  # Qwen2-MoE: one shared expert with its own width and a sigmoid gate
        shared = 3 * hidden * shared_inter + hidden
    bias = experts if cfg.raw.get("topk_method") == "noaux_tc" else 0  # e_score_correction_bias
    moe = experts * 3 * hidden * expert_inter + shared + hidden * experts + bias
    first_dense = cfg.optional_int("first_k_dense_replace", low=0) or 0
    return lambda i: dense if i < first_dense else moe


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


_DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}


def _weights_dtype(cfg: _Config, data: dict) -> str | None:
    """How the checkpoint stores its weights, for ``fit``: ``quantization_config`` (fp8 in 128 x 128
    blocks with fp32 scales: DeepSeek-V3's; plain fp8), else ``torch_dtype`` / ``dtype``. A
    quantisation of only some weights (fp4 experts beside fp8, gpt-oss's mxfp4 experts) or a method
    kvcalc does not read is left unsaid, and said so: ``fit`` then assumes bf16."""
    quant = data.get("quantization_config")
    if isinstance(quant, dict):
        method = quant.get("quant_method")
        blocks = quant.get("weight_block_size")
        mixed = quant.get("expert_dtype") or data.get("expert_dtype")
        if method == "fp8" and not mixed and blocks in (None, [128, 128]):
            return "fp8" if blocks is None else "fp8-block"
        cfg.assume(f"weights: quantization_config {_show(method)} "
                   f"{'with ' + _show(mixed) + ' experts ' if mixed else ''}is not one format kvcalc "
                   "reads: fit assumes bf16 unless --weights-dtype")
        return None
    dtype = data.get("torch_dtype", data.get("dtype"))
    return _DTYPES.get(dtype) if isinstance(dtype, str) else None


def _architecture(data: dict, origin: str) -> str | None:
    """The model class the config names first (``architectures``; a wrapper's, not its text model's:
    engines pick their rules by the class they load)."""
    names = data.get("architectures")
    if names is None:
        return None
    if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
        raise SpecError(f"{origin}: architectures: {_show(names)}: expected a list of model class names")
    if not ARCHITECTURE_PATTERN.match(names[0]):
        raise SpecError(f"{origin}: architectures: {_show(names[0])}: not a model class name")
    return names[0]


def _display_name(data: dict, name: str) -> str:
    path = data.get("_name_or_path")
    return path.rstrip("/").rsplit("/", 1)[-1] if isinstance(path, str) and path else name


def name_from_origin(origin: str) -> str:
    """A catalog-style name from a config's path: ``models/DeepSeek-V3/config.json`` -> deepseek-v3."""
    parts = [p for p in re.split(r"[\\/]", origin) if p]
    stem = parts[-1].rsplit(".", 1)[0] if parts else "model"
    if stem.lower() in ("config", "params") and len(parts) > 1:
        stem = parts[-2]
        if len(parts) > 3 and parts[-3] == "snapshots" and parts[-4].startswith("models--"):
            stem = parts[-4].rsplit("--", 1)[-1]  # a Hugging Face cache snapshot: its repo's name
    slug = re.sub(r"[^a-z0-9._-]+", "-", stem.lower()).strip("-._")
    return slug or "model"


def _validate(fields: dict, origin: str) -> ModelSpec:
    from kvcalc.schema import validate_spec

    return validate_spec({k: v for k, v in fields.items() if v is not None}, origin)
