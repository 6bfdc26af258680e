"""``kvcalc verify``: kvcalc's ``--engine transformers`` figure beside transformers' own cache.

transformers builds the family's model from the config with the real attention (heads, head dims,
KV heads, latent ranks, windows, layer kinds) but a shrunk MLP, expert count and vocabulary, and
one layer of each distinct layer kind (``shortened``). A prefill of ``seq - 1`` tokens and one
decode token later, every tensor its cache holds is counted per layer; one layer of each kind, times
the full model's count of that kind, is set beside kvcalc's parts of that kind, tensor by tensor
(``TENSOR_PARTS``: transformers' ``keys`` beside kvcalc's K, or the MLA latent, ...).

A bundled name has no config.json: ``config_from_spec`` writes one from the spec, and verify runs
only when kvcalc reads that config back to the same layer kinds and the same parts.

Imports torch and transformers inside the functions that need them (``pip install "kvcalc[verify]"``).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kvcalc import hub
from kvcalc.analytic import Footprint, Options, footprint
from kvcalc.catalog import bundled_names, resolve, spec_from_data
from kvcalc.errors import KvcalcError
from kvcalc.families import FAMILIES, every_layer
from kvcalc.files import parse_data, read_text
from kvcalc.render import Column, Kind
from kvcalc.spec import CompressedAttention, LayerKind, MlaAttention, ModelSpec, RecurrentState

SHRUNK = 32
"""Intermediate (MLP, expert) width and expert count of the model built: they hold no cache."""
VOCAB = 128
WEIGHT = 0.01
"""Every weight of the model built: what the cache holds is a matter of shapes, not of values."""
INTERMEDIATE_KEYS = ("intermediate_size", "moe_intermediate_size", "shared_expert_intermediate_size",
                     "moe_shared_expert_intermediate_size", "shared_intermediate_size", "ffn_hidden_size",
                     "expert_intermediate_size", "intermediate_size_mlp", "dense_intermediate_size",
                     "expert_ffn_hidden_size")
EXPERT_KEYS = ("num_experts", "n_routed_experts", "num_local_experts", "n_experts", "moe_num_experts",
               "zero_expert_num")
TOP_K_KEYS = ("num_experts_per_tok", "top_k_experts", "moe_topk", "num_experts_per_token")
LAYER_LISTS = ("layer_types", "hybrid_override_pattern", "layers_block_type", "block_types", "no_rope_layers",
               "compress_ratios")
"""Config fields that name every layer's kind: where one is given, any layer may be left out."""
PER_LAYER_KEYS = (*LAYER_LISTS, "activation_sparsity_pattern", "mlp_layer_types", "indexer_types")
"""Config fields with a value per layer: cut to the short model's layers."""

TENSOR_PARTS: dict[str, tuple[str, ...]] = {
    "keys": ("K", "K = V", "latent"),
    "values": ("V", "K = V", "rope key"),
    "indexer_keys": ("indexer key",),
    "compressed_kv.compressor": ("compressed K = V",),
    "compressed_kv.indexer": ("indexer key",),
    "buffer_kv.compressor": ("compressor kv + gate, open window",),
    "buffer_gate.compressor": ("compressor kv + gate, open window",),
    "buffer_kv.indexer": ("indexer compressor kv + gate, open window",),
    "buffer_gate.indexer": ("indexer compressor kv + gate, open window",),
    "overlap_kv.compressor": ("compressor kv, last window",),
    "overlap_gate.compressor": ("compressor gate, last window",),
    "overlap_kv.indexer": ("indexer compressor kv, last window",),
    "overlap_gate.indexer": ("indexer compressor gate, last window",),
    "conv_states": ("conv state",),
    "recurrent_states": ("SSM state", "recurrent state"),
    "linear_cache": ("recurrent state",),
}
"""transformers' cache tensors (a cache layer's attribute, ``.key`` inside a dict) and the kvcalc
part each is: the first of the names that kvcalc's parts of the layer kind hold. ``keys`` is K on
standard attention, the latent on MLA (transformers >= 5.15 caches the latent as keys and the
rotated rope key as values) and DeepSeek-V4's K = V (``values`` is the same tensor); the
compressor's open window is one kvcalc part for two tensors (kv and gate)."""
INSTALL = 'verify needs transformers and torch: pip install "kvcalc[verify]"'
NOTHING = "nothing"
"""The part of a layer kind that holds nothing on either side (shared layers, MLP blocks)."""


class UnbuildableError(KvcalcError):
    """transformers cannot build or run the family (exit status 2)."""


@dataclass(frozen=True)
class VerifyRow:
    """One kvcalc part of one layer kind beside the transformers tensors that hold it: ``part``
    reads ``kvcalc part (transformers tensors)``, e.g. ``latent (keys)``."""

    part: str
    layer_kind: str
    layers: int
    transformers_bytes: int
    """One layer of the kind in transformers' cache, times ``layers``."""
    kvcalc_bytes: int

    @property
    def verdict(self) -> str:
        return "agree" if self.transformers_bytes == self.kvcalc_bytes else "disagree"


COLUMNS = (
    Column("part", "Part (transformers tensor)", lambda r: r.part),
    Column("layer_kind", "Layers", lambda r: r.layer_kind),
    Column("layers", "Count", lambda r: r.layers, Kind.COUNT),
    Column("transformers_bytes", "transformers B", lambda r: r.transformers_bytes, Kind.COUNT),
    Column("kvcalc_bytes", "kvcalc B", lambda r: r.kvcalc_bytes, Kind.COUNT),
    Column("verdict", "", lambda r: r.verdict),
)
"""``verify``'s table: one row per part and layer kind."""


@dataclass(frozen=True)
class Verification:
    model: str
    model_type: str
    seq_len: int
    built_layers: int
    """Layers of the short model transformers ran."""
    rows: tuple[VerifyRow, ...]
    written: bool = False
    """The config was written from a bundled spec (``config_from_spec``)."""

    @property
    def agrees(self) -> bool:
        return all(r.verdict == "agree" for r in self.rows)

    @property
    def title(self) -> str:
        return (f"{self.model} ({self.model_type}) at {self.seq_len:,} tokens, bf16: transformers' cache "
                f"of a {self.built_layers}-layer model, scaled per layer kind, beside kvcalc "
                "--engine transformers")

    @property
    def notes(self) -> list[str]:
        notes = []
        if self.written:
            notes.append("config written from the bundled spec; kvcalc reads it back to the same layers "
                         "and parts")
        differ = [f"{r.part} on {r.layer_kind} layers" for r in self.rows if r.verdict != "agree"]
        notes.append("every part agrees" if self.agrees else "some parts disagree: " + "; ".join(differ))
        return notes


def verify(model: str, seq_len: int) -> Verification:
    """kvcalc's transformers figure for ``model`` at ``seq_len`` tokens, part by part and kind by
    kind, beside what a short transformers model of the same config holds."""
    spec = resolve(model)
    fp = footprint(spec, Options(seq_len, engine="transformers"))
    bundled = model.lower() in bundled_names()
    raw = checked_config(spec, seq_len) if bundled else raw_config(model)
    short, kinds = shortened(raw, spec)
    text = short.get("text_config") or short
    measured = _cache_tensors_per_layer(short, seq_len)  # {tensor: bytes} per layer
    if len(measured) != len(kinds):
        raise UnbuildableError(f"{spec.name}: transformers' cache holds {len(measured)} layers for "
                               f"{len(kinds)} attention layers; verify cannot match them")
    model_type = text.get("model_type") or raw.get("model_type", "")
    return Verification(spec.name, model_type, seq_len, len(kinds), _rows(spec, fp, measured, kinds), bundled)


def _rows(spec: ModelSpec, fp: Footprint, measured: list[dict[str, int]],
          kinds: tuple[LayerKind, ...]) -> tuple[VerifyRow, ...]:
    """Per layer kind, kvcalc's parts beside the transformers tensors that hold them (the first
    layer of the kind in ``measured``, times the full model's layers of the kind); a tensor no part
    names, or a part no tensor holds, is a row of its own."""
    rows = []
    for kind, count in spec.layer_counts.items():
        computed = {p.name: p.total_bytes for p in fp.parts if p.layer_kind == kind}
        held: dict[str, dict[str, int]] = defaultdict(dict)  # part -> {tensor: bytes}
        for tensor, size in measured[kinds.index(kind)].items():
            part = next((p for p in TENSOR_PARTS.get(tensor, ()) if p in computed), None)
            held[part or f"{tensor}: no kvcalc part"][tensor] = size
        for part in dict.fromkeys([*computed, *held]):
            tensors = held.get(part, {})
            label = part if part not in computed else f"{part} ({' + '.join(tensors) or 'no tensor'})"
            held_bytes = sum(tensors.values()) * count
            rows.append(VerifyRow(label, str(kind), count, held_bytes, computed.get(part, 0)))
        if not computed and not held:
            rows.append(VerifyRow(NOTHING, str(kind), count, 0, 0))
    return tuple(rows)


def raw_config(model: str) -> dict[str, Any]:
    """The Hugging Face config.json that ``model`` names (a file, a folder, a repo id); a kvcalc spec
    file has none to build from."""
    path = Path(model)
    if path.is_dir():
        path = path / "config.json"
    if path.is_file():
        data = parse_data(read_text(path), str(path))
    elif hub.is_repo_id(model):
        data = parse_data(hub.fetch(model)[0], f"{model}/{hub.CONFIG}", as_json=True)
    else:
        raise UnbuildableError(f"{model}: verify needs a config.json (a path, folder or repo id) or a "
                               "bundled name")
    if not isinstance(data, dict) or "model_type" not in data:
        raise UnbuildableError(f"{model}: not a Hugging Face config.json (no model_type); pass the model's "
                               "config.json")
    return data


# --- a config.json written from a bundled spec ------------------------------------------------------

LAYER_TYPE_NAMES = {LayerKind.FULL: "full_attention", LayerKind.SLIDING: "sliding_attention",
                    LayerKind.CHUNKED: "chunked_attention",
                    LayerKind.COMPRESSED_SPARSE: "compressed_sparse_attention",
                    LayerKind.HEAVILY_COMPRESSED: "heavily_compressed_attention",
                    LayerKind.RECURRENT: "linear_attention", LayerKind.MLP: "mlp"}
"""transformers' ``layer_types`` string of each layer kind."""
SPEC_FIELDS = ("num_layers", "sublayers", "hidden_size", "attention", "layer_attention", "recurrent",
               "sliding_window", "attention_chunk_size", "max_position_embeddings", "mtp_layers")
"""The spec fields a written config must read back to."""


def checked_config(spec: ModelSpec, seq_len: int) -> dict[str, Any]:
    """``config_from_spec(spec)``, refused unless kvcalc reads it back to the bundled spec's layer
    kinds, cache fields and ``--engine transformers`` parts: verify never checks something else."""
    written = config_from_spec(spec)
    try:
        back = spec_from_data(written, "written", spec.name)
    except KvcalcError as e:
        _not_read_back(spec, f"kvcalc refuses it: {e}")
    ours, read = asdict(spec), asdict(back)
    for key in SPEC_FIELDS:
        if ours[key] != read[key]:
            _not_read_back(spec, f"{key} reads {read[key]!r}, not {ours[key]!r}")
    pairs = enumerate(zip(back.layer_kinds, spec.layer_kinds, strict=True))
    i = next((i for i, (a, b) in pairs if a != b), None)
    if i is not None:
        _not_read_back(spec, f"layer {i} reads as {back.layer_kinds[i]}, not {spec.layer_kinds[i]}")
    options = Options(seq_len, engine="transformers")
    ours = [(p.name, str(p.layer_kind), p.total_bytes) for p in footprint(spec, options).parts]
    read = [(p.name, str(p.layer_kind), p.total_bytes) for p in footprint(back, options).parts]
    for a, b in zip([*ours, None], [*read, None], strict=False):
        if a != b:
            _not_read_back(spec, f"part {b or 'none'} where the spec has {a or 'none'}")
    return written


def _not_read_back(spec: ModelSpec, why: str):
    raise UnbuildableError(f"cannot write a config for {spec.name} that kvcalc reads back as the bundled "
                           f"spec: {why}")


def config_from_spec(spec: ModelSpec) -> dict[str, Any]:
    """A transformers config (its text model's, for a multimodal wrapper) with the spec's cache
    fields: layers, heads, head dims, KV heads, latent ranks, indexer, compress rates, windows and
    the family's way of naming each layer's kind, the recurrent mixer. A family whose layout cannot
    be written, or an architecture transformers has no class for, is refused by name."""
    model_type = model_type_for(spec)
    config: dict[str, Any] = {"model_type": model_type, "architectures": [spec.architecture],
                              "num_hidden_layers": spec.num_layers, "hidden_size": spec.hidden_size,
                              "num_attention_heads": spec.attention.num_heads}
    if spec.max_position_embeddings is not None:
        config["max_position_embeddings"] = spec.max_position_embeddings
    if spec.mtp_layers:
        config["num_nextn_predict_layers"] = spec.mtp_layers
    if spec.sublayers > 1:  # LongCat-Flash: num_layers decoder layers of two attention layers each
        config["num_layers"] = config.pop("num_hidden_layers") // spec.sublayers
    config.update(_build_fields(model_type))
    config.update(_attention_fields(spec, model_type))
    config.update(_layout_fields(spec, model_type))
    if spec.recurrent is not None:
        config.update(_mixer_fields(spec.recurrent, model_type, spec))
    return config


def model_type_for(spec: ModelSpec) -> str:
    """The model_type whose class transformers maps ``spec.architecture`` to (causal LM, or image-text
    wrapper: then its text model's), among the families kvcalc reads."""
    try:
        from transformers import CONFIG_MAPPING
        from transformers.models.auto import modeling_auto
    except ImportError:
        raise UnbuildableError(INSTALL) from None
    if spec.architecture is None:
        raise UnbuildableError(f"{spec.name}: the spec names no architecture; verify cannot pick the class")
    mappings = (modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                modeling_auto.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES)
    types = {t for names in mappings for t, cls in names.items() if cls == spec.architecture}
    types = sorted(t for t in types if t in FAMILIES)
    if len(types) != 1:
        found = "no model_type" if not types else f"model_types {', '.join(types)}"
        raise UnbuildableError(f"{spec.name}: transformers maps {found} kvcalc reads to {spec.architecture}; "
                               "verify cannot write its config")
    text = getattr(CONFIG_MAPPING[types[0]], "sub_configs", {}).get("text_config")
    return text.model_type if text is not None else types[0]


def _build_fields(model_type: str) -> dict[str, Any]:
    """MLP and expert fields at sizes that hold no cache (``SHRUNK``), where the family's class has
    them: a spec does not give them, and a class default may not build (DeepSeek-V2: no top-k)."""
    from transformers import CONFIG_MAPPING

    sizes = {**dict.fromkeys(INTERMEDIATE_KEYS, SHRUNK), **dict.fromkeys(EXPERT_KEYS, 4),
             **dict.fromkeys(TOP_K_KEYS, 2), "n_group": 1, "topk_group": 1, "vocab_size": VOCAB,
             "vocab_size_per_layer_input": VOCAB,
             **dict.fromkeys(("pad_token_id", "bos_token_id", "eos_token_id"), 0)}
    return {k: v for k, v in sizes.items() if _has_field(CONFIG_MAPPING[model_type], k)}


def _attention_fields(spec: ModelSpec, model_type: str) -> dict[str, Any]:
    attention = spec.attention
    if isinstance(attention, MlaAttention):
        fields = {k: getattr(attention, k) for k in ("q_lora_rank", "kv_lora_rank", "qk_nope_head_dim",
                                                       "qk_rope_head_dim", "v_head_dim")}
        if attention.index_head_dim is not None:
            fields |= {"index_head_dim": attention.index_head_dim, "index_n_heads": attention.index_n_heads}
        return {**fields, "num_key_value_heads": attention.num_heads}
    if isinstance(attention, CompressedAttention):
        rates = {"compressed_sparse_attention": attention.csa_rate,
                 "heavily_compressed_attention": attention.hca_rate}
        return {"num_key_value_heads": 1, "head_dim": attention.head_dim, "compress_rates": rates,
                **{k: getattr(attention, k) for k in ("qk_rope_head_dim", "q_lora_rank", "index_n_heads",
                                                      "index_head_dim")}}
    fields = {"num_key_value_heads": attention.num_kv_heads, "head_dim": attention.head_dim}
    if attention.v_head_dim is not None:
        fields["v_head_dim"] = attention.v_head_dim
    if model_type == "falcon":  # no head_dim field: hidden_size / heads; KV heads by two flags
        fields = {"multi_query": attention.num_kv_heads == 1,
                  "new_decoder_architecture": attention.num_kv_heads not in (1, attention.num_heads),
                  "num_kv_heads": attention.num_kv_heads}
    full = spec.layer_attention.get(LayerKind.FULL)
    if full is not None and model_type == "gemma4_text":  # the full layers' own shape
        fields |= {"global_head_dim": full.head_dim, "attention_k_eq_v": False}
        if full.num_kv_heads != attention.num_kv_heads:  # their own KV heads come only with K = V
            fields |= {"attention_k_eq_v": True, "num_global_key_value_heads": full.num_kv_heads}
    return fields


def _layout_fields(spec: ModelSpec, model_type: str) -> dict[str, Any]:
    """Windows and every layer's kind, the way the family's class names them: its ``layer_types``
    (shared layers continue the unshared layers' pattern and are counted by num_kv_shared_layers),
    Llama-4's ``no_rope_layers``, Nemotron-H's ``layers_block_type``, or a window on every layer."""
    from transformers import CONFIG_MAPPING

    kinds, family = spec.layer_kinds, FAMILIES[model_type]
    fields: dict[str, Any] = {}
    if spec.sliding_window is not None:
        fields["sliding_window"] = spec.sliding_window
    elif "sliding_window" in family.defaults:  # a class default window would make layers slide
        fields["sliding_window"] = None
    if spec.attention_chunk_size is not None:
        fields["attention_chunk_size"] = spec.attention_chunk_size
    if set(kinds) == {LayerKind.FULL}:
        return fields
    if family.layout is every_layer and set(kinds) == {LayerKind.SLIDING}:
        return fields
    if model_type == "llama4_text":
        return {**fields, "no_rope_layers": [int(k is LayerKind.CHUNKED) for k in kinds]}
    shared = kinds.count(LayerKind.SHARED)
    if shared:
        if not family.kv_shared or set(kinds[-shared:]) != {LayerKind.SHARED}:
            raise UnbuildableError(f"{spec.name}: {shared} shared layers that are not the last ones of a "
                                   "family that shares caches; verify cannot write its config")
        own = kinds[:-shared]
        pattern = own[:_period(own)]
        kinds = own + tuple(pattern[i % len(pattern)] for i in range(len(own), len(kinds)))
        fields["num_kv_shared_layers"] = shared
    names = [LAYER_TYPE_NAMES.get(k) for k in kinds]
    key = family.layer_types_key
    if None in names or key is None or not _has_field(CONFIG_MAPPING[model_type], key):
        raise UnbuildableError(f"{spec.name}: {model_type}'s config cannot say this layer layout; verify "
                               "cannot write its config")
    return {**fields, key: names}


def _period(kinds: tuple[LayerKind, ...]) -> int:
    return next(p for p in range(1, len(kinds) + 1) if all(k == kinds[i % p] for i, k in enumerate(kinds)))


def _has_field(config_class, key: str) -> bool:
    return any(key in vars(c).get("__annotations__", {}) for c in config_class.__mro__)


def _mixer_fields(mixer: RecurrentState, model_type: str, spec: ModelSpec) -> dict[str, Any]:
    if model_type != "nemotron_h":
        raise UnbuildableError(f"{spec.name}: verify writes no {mixer.kind} mixer for {model_type}")
    fields = {"mamba_num_heads": mixer.num_heads, "mamba_head_dim": mixer.head_dim,
              "ssm_state_size": mixer.d_state, "n_groups": mixer.n_groups, "conv_kernel": mixer.conv_kernel}
    for key, name in (("mamba_ssm_dtype", "ssm_dtype"), ("mamba_ssm_cache_dtype", "ssm_cache_dtype")):
        if getattr(mixer, name) is not None:
            fields[key] = getattr(mixer, name)
    return fields


# --- the short model ---------------------------------------------------------------------------------


def shortened(raw: dict[str, Any], spec: ModelSpec) -> tuple[dict[str, Any], tuple[LayerKind, ...]]:
    """``raw`` with a shrunk MLP, expert count and vocabulary, and one layer of each kind: where the
    config lists every layer (``LAYER_LISTS``), the first layer of each kind; else the first layers
    up to one of each kind; a family with KV-shared layers, one unshared layer of each kind, then one
    shared layer of each kind. The kinds kvcalc reads for the short model's layers."""
    kinds = spec.layer_kinds
    text = dict(raw.get("text_config") or raw)
    _shrink(text)
    shared = kinds.count(LayerKind.SHARED)
    listed = any(isinstance(text.get(k), list | str) and len(text[k]) >= len(kinds) for k in LAYER_LISTS)
    if shared:
        own = tuple(dict.fromkeys(kinds[:-shared]))
        keep = range(2 * len(own))
        text["layer_types"] = [LAYER_TYPE_NAMES[k] for k in own] * 2
        text["num_kv_shared_layers"] = len(own)
        expected = own + (LayerKind.SHARED,) * len(own)
    elif listed and spec.sublayers == 1:
        keep = sorted(kinds.index(k) for k in set(kinds))
        expected = tuple(kinds[i] for i in keep)
    else:
        n = max(kinds.index(k) for k in set(kinds)) + 1
        keep = range(n + -n % spec.sublayers)
        expected = kinds[:len(keep)]
    if spec.sublayers > 1:
        text["num_layers"] = len(keep) // spec.sublayers
        text.pop("num_hidden_layers", None)
    else:
        text["num_hidden_layers"] = len(keep)
    for key in PER_LAYER_KEYS:
        value = text.get(key)
        if isinstance(value, list | str) and len(value) >= len(kinds):
            kept = [value[i] for i in keep]
            text[key] = "".join(kept) if isinstance(value, str) else kept
    short = {**raw, "text_config": text} if raw.get("text_config") else text
    got = spec_from_data(short, "verify", spec.name).layer_kinds
    if got != expected:
        i = next((i for i, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b), len(got))
        shown = got[i] if i < len(got) else "missing"
        raise UnbuildableError(f"{spec.name}: cut to {len(keep)} layers, layer {i} reads as {shown}, not "
                               f"{expected[i] if i < len(expected) else 'absent'}: verify cannot shorten "
                               "this family")
    return short, expected


def _shrink(text: dict[str, Any]) -> None:
    """MLP and expert widths, expert counts and vocabulary cut to sizes that hold no cache."""
    for key in INTERMEDIATE_KEYS:
        if isinstance(text.get(key), int) or isinstance(text.get(key), list):
            text[key] = SHRUNK
    for key in EXPERT_KEYS:
        if isinstance(text.get(key), int) and text[key] > 4:
            text[key] = 4
    for key in TOP_K_KEYS:
        if isinstance(text.get(key), int):
            text[key] = min(text[key], 2)
    for key in ("n_group", "topk_group"):
        if key in text:
            text[key] = 1
    text["vocab_size"] = VOCAB
    if "vocab_size_per_layer_input" in text:  # Gemma-3n / Gemma-4's per-layer embeddings
        text["vocab_size_per_layer_input"] = VOCAB
    for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
        if isinstance(text.get(key), int) and text[key] >= VOCAB:
            text[key] = 0


# --- transformers' cache ------------------------------------------------------------------------------


def _cache_tensors_per_layer(config: dict[str, Any], seq_len: int) -> list[dict[str, int]]:
    """The bytes of every tensor of every layer of transformers' cache after a prefill of
    ``seq_len - 1`` tokens and one decode token, in bf16, by name (``TENSOR_PARTS``)."""
    try:
        import torch
        import transformers  # noqa: F401 -- present, or verify cannot run
        from transformers.utils import logging
    except ImportError:
        raise UnbuildableError(INSTALL) from None
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # its notes on slow reference kernels are not verify's output
    try:
        cache = _run(config, seq_len, torch)
    except Exception as e:  # noqa: BLE001 -- any failure inside transformers is "cannot build"
        message = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise UnbuildableError(f"transformers cannot build or run model_type "
                               f"{config.get('model_type')!r}: {type(e).__name__}: {message}") from None
    finally:
        logging.set_verbosity(verbosity)
    linear = getattr(cache, "linear_cache", None)
    return [_layer_tensors(layer, linear, i) for i, layer in enumerate(cache.layers)]


def _run(config: dict[str, Any], seq_len: int, torch):
    """transformers' cache of the family's model for ``config`` after ``seq_len`` tokens."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    hf_config = AutoConfig.for_model(**config).get_text_config()
    with no_init_weights():  # random init of the real attention widths takes seconds; sizes need none
        model = AutoModelForCausalLM.from_config(hf_config, dtype=torch.bfloat16).eval()
    for tensor in model.parameters():
        tensor.data.fill_(WEIGHT)
    model = _as_loaded(model, torch)
    torch.manual_seed(0)
    prefill = seq_len - 1
    with torch.no_grad():
        cache = model(torch.randint(3, VOCAB, (1, prefill)), use_cache=True,
                      position_ids=torch.arange(prefill)[None]).past_key_values  # (1, seq_len - 1) tokens
        model(torch.randint(3, VOCAB, (1, 1)), past_key_values=cache, use_cache=True,
              position_ids=torch.tensor([[prefill]]))
    return cache


def _as_loaded(model, torch):
    """``model`` with the weights from_pretrained keeps in fp32 at bf16 (``_keep_in_fp32_modules_strict``:
    DeepSeek-V4's compressor position bias, whose dtype its cached gates take) upcast as it does."""
    keep = tuple(model._get_dtype_plan(torch.bfloat16))
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_floating_point() and any(key in name for key in keep):
            tensor.data = tensor.data.float()
    return model


def _layer_tensors(layer, linear_cache, index: int) -> dict[str, int]:
    """The bytes of each tensor one cache layer holds, by attribute (``attr.key`` inside a dict keyed
    by name), each tensor counted once (DeepSeek-V4's ``values`` is its ``keys``); MiniMax keeps its
    linear-attention state in ``linear_cache``. Scalars (position counters) are not cache."""
    import torch

    seen: set[int] = set()
    held: dict[str, int] = {}

    def add(value, name: str) -> None:
        if isinstance(value, torch.Tensor):
            if value.numel() > 1 and value.data_ptr() not in seen:
                seen.add(value.data_ptr())
                held[name] = held.get(name, 0) + value.numel() * value.element_size()
        elif isinstance(value, dict):
            for key, v in value.items():
                add(v, f"{name}.{key}" if isinstance(key, str) else name)
        elif isinstance(value, list | tuple):
            for v in value:
                add(v, name)

    for name, value in vars(layer).items():
        add(value, name)
    if linear_cache is not None and index < len(linear_cache):
        add(linear_cache[index], "linear_cache")
    return held
