"""``kvcalc verify``: kvcalc's ``--engine transformers`` figure beside transformers' own cache.

transformers builds the family's model from the config with the real attention (heads, head dims,
KV heads, latent ranks, windows, layer kinds) but a shrunk MLP, expert count and vocabulary, and
only the first layers up to one of each distinct layer kind. A prefill of ``seq - 1`` tokens and one
decode token later, every tensor its cache holds is summed per layer; one layer of each kind, times
the full model's count of that kind, is set beside kvcalc's parts of that kind.

Imports torch and transformers inside the functions that need them (``pip install "kvcalc[verify]"``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kvcalc import hub
from kvcalc.analytic import Options, footprint
from kvcalc.catalog import bundled_names, resolve, spec_from_data
from kvcalc.errors import KvcalcError
from kvcalc.files import parse_data, read_text
from kvcalc.plan import Growth
from kvcalc.render import Column, Kind
from kvcalc.spec import ModelSpec

SHRUNK = 32
"""Intermediate (MLP, expert) width and expert count of the model built: they hold no cache."""
VOCAB = 128
INTERMEDIATE_KEYS = ("intermediate_size", "moe_intermediate_size", "shared_expert_intermediate_size",
                     "moe_shared_expert_intermediate_size", "shared_intermediate_size", "ffn_hidden_size",
                     "expert_intermediate_size", "intermediate_size_mlp", "dense_intermediate_size")
EXPERT_KEYS = ("num_experts", "n_routed_experts", "num_local_experts", "n_experts", "moe_num_experts")
TOP_K_KEYS = ("num_experts_per_tok", "top_k_experts", "moe_topk", "num_experts_per_token")
STATE_ATTRS = ("conv_states", "recurrent_states")
"""A cache layer's per-sequence state (linear attention, Mamba); every other tensor grows with tokens."""
PER_LAYER_KEYS = ("layer_types", "hybrid_override_pattern", "layers_block_type", "block_types")
"""Config fields that name every layer: cut to the short model's layers."""


class UnbuildableError(KvcalcError):
    """transformers cannot build or run the family (exit status 2)."""


@dataclass(frozen=True)
class VerifyRow:
    """One part (``cache``: grows with tokens; ``state``: per sequence) of one layer kind."""

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
    Column("part", "Part", lambda r: r.part),
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
        return ["every part agrees" if self.agrees else "some parts disagree"]


def verify(model: str, seq_len: int) -> Verification:
    """kvcalc's transformers figure for ``model`` at ``seq_len`` tokens, part by part and kind by
    kind, beside what a short transformers model of the same config holds."""
    spec = resolve(model)
    fp = footprint(spec, Options(seq_len, engine="transformers"))
    raw = raw_config(model)
    short, n = shortened(raw, spec)
    text = short.get("text_config") or short
    measured = _cache_bytes_per_layer(short, seq_len)  # (cache, state) per layer
    if len(measured) != n:
        raise UnbuildableError(f"{spec.name}: transformers' cache holds {len(measured)} layers for "
                               f"{n} decoder layers; verify cannot match them")
    model_type = text.get("model_type") or raw.get("model_type", "")
    return Verification(spec.name, model_type, seq_len, n, _rows(spec, fp, measured))


def _rows(spec: ModelSpec, fp, measured: list[tuple[int, int]]) -> tuple[VerifyRow, ...]:
    """One row per part (cache, state) of each layer kind: the first layer of the kind in
    ``measured``, times the full model's layers of the kind, beside kvcalc's parts of that kind."""
    kinds = spec.layer_kinds
    rows = []
    for kind, count in spec.layer_counts.items():
        for part, held in zip(("cache", "state"), measured[kinds.index(kind)], strict=True):
            computed = sum(p.total_bytes for p in fp.parts
                           if p.layer_kind == kind and (p.growth is Growth.STATE) == (part == "state"))
            if held or computed:
                rows.append(VerifyRow(part, str(kind), count, held * count, computed))
    return tuple(rows)


def raw_config(model: str) -> dict[str, Any]:
    """The Hugging Face config.json that ``model`` names (a file, a folder, a repo id); a bundled
    spec or a kvcalc spec file has none to build from."""
    if model.lower() in bundled_names():
        raise UnbuildableError(f"{model}: a bundled spec holds no config transformers can build; "
                               "pass the model's config.json (a path, folder or repo id)")
    path = Path(model)
    if path.is_dir():
        path = path / "config.json"
    if path.is_file():
        data = parse_data(read_text(path), str(path))
    elif hub.is_repo_id(model):
        data = parse_data(hub.fetch(model)[0], f"{model}/{hub.CONFIG}", as_json=True)
    else:
        raise UnbuildableError(f"{model}: verify needs a config.json (a path, folder or repo id)")
    if not isinstance(data, dict) or "model_type" not in data:
        raise UnbuildableError(f"{model}: not a Hugging Face config.json (no model_type); pass the model's "
                               "config.json")
    return data


def shortened(raw: dict[str, Any], spec: ModelSpec) -> tuple[dict[str, Any], int]:
    """``raw`` with a shrunk MLP, expert count and vocabulary, cut to the first layers that hold one
    of each layer kind; the number of layers kept."""
    kinds = spec.layer_kinds
    n = max(kinds.index(k) for k in set(kinds)) + 1
    text = dict(raw.get("text_config") or raw)
    for key in INTERMEDIATE_KEYS:
        if isinstance(text.get(key), int):
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
    for key in ("pad_token_id", "bos_token_id", "eos_token_id"):
        if isinstance(text.get(key), int) and text[key] >= VOCAB:
            text[key] = 0
    text["num_hidden_layers"] = n
    for key in PER_LAYER_KEYS:
        if isinstance(text.get(key), list | str) and len(text[key]) == len(kinds):
            text[key] = text[key][:n]
    short = {**raw, "text_config": text} if raw.get("text_config") else text
    got = spec_from_data(short, "verify", spec.name).layer_kinds
    if got != kinds[:n]:
        i = next(i for i, (a, b) in enumerate(zip(got, kinds, strict=False)) if a != b)
        raise UnbuildableError(f"{spec.name}: cut to {n} layers, layer {i} reads as {got[i]}, not "
                               f"{kinds[i]}: verify cannot shorten this family")
    return short, n


def _cache_bytes_per_layer(config: dict[str, Any], seq_len: int) -> list[tuple[int, int]]:
    """(bytes that grow with tokens, state bytes) of every layer of transformers' cache after a
    prefill of ``seq_len - 1`` tokens and one decode token, in bf16."""
    try:
        import torch
        import transformers  # noqa: F401 -- present, or verify cannot run
        from transformers.utils import logging
    except ImportError:
        raise UnbuildableError('verify needs transformers and torch: pip install "kvcalc[verify]"') from None
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
    return [_layer_bytes(layer, linear, i) for i, layer in enumerate(cache.layers)]


def _run(config: dict[str, Any], seq_len: int, torch):
    """transformers' cache of the family's model for ``config`` after ``seq_len`` tokens."""
    from transformers import AutoConfig, AutoModelForCausalLM

    hf_config = AutoConfig.for_model(**config).get_text_config()
    torch.manual_seed(0)
    model = _as_loaded(AutoModelForCausalLM.from_config(hf_config, dtype=torch.bfloat16).eval(), torch)
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


def _layer_bytes(layer, linear_cache, index: int) -> tuple[int, int]:
    """(token bytes, state bytes) one cache layer holds, each tensor counted once; MiniMax keeps its
    linear-attention state in ``linear_cache``."""
    import torch

    seen: set[int] = set()
    held = {"cache": 0, "state": 0}

    def add(value, part: str) -> None:
        if isinstance(value, torch.Tensor):
            if value.numel() > 1 and value.data_ptr() not in seen:
                seen.add(value.data_ptr())
                held[part] += value.numel() * value.element_size()
        elif isinstance(value, dict):
            for v in value.values():
                add(v, part)
        elif isinstance(value, list | tuple):
            for v in value:
                add(v, part)

    for name, value in vars(layer).items():
        add(value, "state" if name in STATE_ATTRS else "cache")
    if linear_cache is not None and index < len(linear_cache):
        add(linear_cache[index], "state")
    return held["cache"], held["state"]

