"""The spec file format as pydantic v2 models (frozen, extra="forbid", strict integers).

Every file a user gives is validated here, then built into a ``spec.ModelSpec`` by the same
``from_dict`` the bundled catalog uses; ``ModelSpec`` itself enforces the cross-field invariants.
Imported lazily: only a command that reads a user's file pays pydantic's start-up cost.
A test keeps these fields identical to the dataclasses'.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kvcalc.errors import SpecError
from kvcalc.spec import ARCHITECTURE_PATTERN, BOUNDS, MAX_DIM, MAX_LAYERS, LayerKind, ModelSpec


def _size(field: str, low: int = 1) -> Any:
    """An integer from ``low`` to the field's bound (``spec.BOUNDS``): ``"32"`` or ``32.0`` is a
    wrong-typed field."""
    return Annotated[int, Field(strict=True, ge=low, le=BOUNDS[field])]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class StandardAttentionFile(_Frozen):
    kind: Literal["standard"]
    num_heads: _size("num_heads")
    num_kv_heads: _size("num_kv_heads")
    head_dim: _size("head_dim")
    v_head_dim: _size("v_head_dim") | None = None


class MlaAttentionFile(_Frozen):
    kind: Literal["mla"]
    num_heads: _size("num_heads")
    q_lora_rank: _size("q_lora_rank") | None
    kv_lora_rank: _size("kv_lora_rank")
    qk_nope_head_dim: _size("qk_nope_head_dim")
    qk_rope_head_dim: _size("qk_rope_head_dim")
    v_head_dim: _size("v_head_dim")
    index_head_dim: _size("index_head_dim") | None = None
    index_n_heads: _size("index_n_heads") | None = None


class CompressedAttentionFile(_Frozen):
    kind: Literal["compressed"]
    num_heads: _size("num_heads")
    head_dim: _size("head_dim")
    qk_rope_head_dim: _size("qk_rope_head_dim")
    q_lora_rank: _size("q_lora_rank")
    index_n_heads: _size("index_n_heads")
    index_head_dim: _size("index_head_dim")
    csa_rate: _size("csa_rate") = 4
    hca_rate: _size("hca_rate") = 128


class _StateDtypes(_Frozen):
    ssm_dtype: Literal["float32", "bfloat16", "float16"] | None = None
    ssm_cache_dtype: Literal["float32", "bfloat16", "float16"] | None = None


class _RecurrentFile(_StateDtypes):
    conv_kernel: Annotated[int, Field(strict=True, ge=1, le=MAX_DIM)]


def _dim() -> Any:
    return Annotated[int, Field(strict=True, ge=1, le=MAX_DIM)]


class GatedDeltaNetFile(_RecurrentFile):
    kind: Literal["gated_deltanet"]
    num_k_heads: _dim()
    num_v_heads: _dim()
    head_k_dim: _dim()
    head_v_dim: _dim()


class KdaFile(_RecurrentFile):
    kind: Literal["kda"]
    num_heads: _dim()
    head_dim: _dim()


class LightningFile(_StateDtypes):
    kind: Literal["lightning"]
    num_heads: _dim()
    head_dim: _dim()


class Mamba2File(_RecurrentFile):
    kind: Literal["mamba2"]
    num_heads: _dim()
    head_dim: _dim()
    d_state: _dim()
    n_groups: _dim()


class MambaFile(_RecurrentFile):
    kind: Literal["mamba"]
    intermediate_size: _dim()
    d_state: _dim()


RecurrentFile = Annotated[GatedDeltaNetFile | KdaFile | LightningFile | Mamba2File | MambaFile,
                          Field(discriminator="kind")]


AttentionFile = Annotated[StandardAttentionFile | MlaAttentionFile | CompressedAttentionFile,
                          Field(discriminator="kind")]


class ModelSpecFile(_Frozen):
    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")]
    display_name: Annotated[str, Field(min_length=1)]
    source: str | None = None
    architecture: Annotated[str, Field(pattern=ARCHITECTURE_PATTERN.pattern)] | None = None
    num_layers: _size("num_layers")
    sublayers: _size("sublayers") = 1
    hidden_size: _size("hidden_size")
    params: _size("params") | None = None
    weights_dtype: str | None = None
    weights_bytes: _size("weights_bytes") | None = None
    default_engine: str | None = None
    max_position_embeddings: _size("max_position_embeddings") | None = None
    mtp_layers: _size("mtp_layers", low=0) = 0
    attention: AttentionFile
    sliding_window: _size("sliding_window") | None = None
    attention_chunk_size: _size("attention_chunk_size") | None = None
    layer_attention: Annotated[dict[LayerKind, AttentionFile], Field(min_length=1)] | None = None
    layer_pattern: Annotated[tuple[LayerKind, ...], Field(min_length=1, max_length=MAX_LAYERS)] | None = None
    layer_types: Annotated[tuple[LayerKind, ...], Field(max_length=MAX_LAYERS)] | None = None
    recurrent: RecurrentFile | None = None
    attention_bias: Annotated[bool, Field(strict=True)] = False
    rope: dict[str, Any] | None = None
    """Checked field by field in ``ModelSpec`` (``rotary.check_settings``)."""
    assumptions: tuple[str, ...] = ()


def validate_spec(data: dict, origin: str) -> ModelSpec:
    """A spec from untrusted data, or a ``SpecError`` naming ``origin``, the field and the value."""
    try:
        checked = ModelSpecFile.model_validate(data)
    except ValidationError as e:
        raise SpecError(f"{origin}: {_describe(e)}") from None
    try:
        return ModelSpec.from_dict(checked.model_dump())
    except ValueError as e:
        raise SpecError(f"{origin}: {e}") from None


def _describe(e: ValidationError) -> str:
    """The first problem as ``field: value: message``, counting the rest."""
    errors = e.errors()
    first = errors[0]
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    field = _field_name(first["loc"])
    kind = first["type"]
    if kind == "missing":
        return f"{field}: required field is missing{more}"
    if kind == "union_tag_invalid":
        tags = first["ctx"]["expected_tags"]
        return f"{field}.kind: {first['ctx']['tag']!r} is not one of {tags}{more}"
    if kind == "union_tag_not_found":
        kinds = ("gated_deltanet, kda, lightning, mamba2 or mamba" if field == "recurrent"
                 else "standard, mla or compressed")
        return f"{field}.kind: required field is missing ({kinds}){more}"
    if kind == "extra_forbidden":
        return f"{field}: unknown field (value {_show(first['input'])}){more}"
    message = first["msg"].removeprefix("Value error, ")
    return f"{field}: {_show(first['input'])}: {message}{more}"


def _field_name(loc: tuple) -> str:
    """Dotted field path, without pydantic's union tags (``attention.mla.x`` -> ``attention.x``)."""
    parts = [str(p) for i, p in enumerate(loc) if not (i and _is_attention(loc[:i]))]
    return ".".join(parts) or "spec"


def _is_attention(loc: tuple) -> bool:
    """Whether ``loc`` ends at an attention or mixer mapping, whose next step is pydantic's union tag."""
    return loc[-1] in ("attention", "recurrent") or (len(loc) > 1 and loc[-2] == "layer_attention")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
