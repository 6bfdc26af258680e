"""Pydantic models of a model architecture, as far as its KV cache is concerned.

A spec is frozen and rejects unknown keys. Sizes are strict positive integers: a YAML string
``"32"`` or a float ``32.0`` is a wrong-typed field, not something to coerce silently.
"""

from __future__ import annotations

from collections import Counter
from enum import StrEnum
from functools import cached_property
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from kvcalc.errors import SpecError

Count = Annotated[int, Field(strict=True, gt=0)]
"""A strictly positive integer (layers, heads, dims, tokens)."""

NonNegative = Annotated[int, Field(strict=True, ge=0)]


class LayerKind(StrEnum):
    FULL = "full"
    SLIDING = "sliding"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class StandardAttention(_Frozen):
    """Multi-head attention with ``num_kv_heads`` shared K/V heads: MHA, GQA or MQA.

    Caches K (``head_dim``) and V (``v_head_dim``, default ``head_dim``) for every KV head.
    """

    kind: Literal["standard"]
    num_heads: Count
    num_kv_heads: Count
    head_dim: Count
    v_head_dim: Count | None = None

    @model_validator(mode="after")
    def _groups_divide_heads(self) -> StandardAttention:
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_kv_heads {self.num_kv_heads} does not divide num_heads {self.num_heads}"
            )
        return self

    @property
    def variant(self) -> str:
        if self.num_kv_heads == self.num_heads:
            return "MHA"
        return "MQA" if self.num_kv_heads == 1 else "GQA"

    @property
    def value_dim(self) -> int:
        return self.v_head_dim or self.head_dim


class MlaAttention(_Frozen):
    """DeepSeek Multi-head Latent Attention (DeepSeek-V2 paper, section 2.1).

    The latent layout caches ``kv_lora_rank`` (d_c) + ``qk_rope_head_dim`` (d_R) values per token
    and layer, independent of the head count. ``q_lora_rank`` is null for a plain query projection.
    """

    kind: Literal["mla"]
    num_heads: Count
    q_lora_rank: Count | None
    kv_lora_rank: Count
    qk_nope_head_dim: Count
    qk_rope_head_dim: Count
    v_head_dim: Count

    @property
    def variant(self) -> str:
        return "MLA"


Attention = Annotated[StandardAttention | MlaAttention, Field(discriminator="kind")]


class ModelSpec(_Frozen):
    """One model's architecture.

    Layer pattern: by default every layer is full attention. ``layer_pattern`` repeats from layer 0
    (Gemma-3: five ``sliding`` then one ``full``); ``layer_types`` lists every layer explicitly.
    A sliding layer holds at most ``sliding_window`` tokens.
    """

    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")]
    display_name: Annotated[str, Field(min_length=1)]
    source: str | None = None
    """URL of the published config the numbers were read from."""
    num_layers: Count
    hidden_size: Count
    params: Count | None = None
    """Total parameter count as published (the model card's figure)."""
    max_position_embeddings: Count | None = None
    mtp_layers: NonNegative = 0
    """Multi-token-prediction layers (``num_nextn_predict_layers``): full-attention layers of the
    same attention kind, cached only when an engine runs MTP speculative decoding."""
    attention: Attention
    sliding_window: Count | None = None
    layer_pattern: Annotated[tuple[LayerKind, ...], Field(min_length=1)] | None = None
    layer_types: tuple[LayerKind, ...] | None = None
    assumptions: tuple[str, ...] = ()
    """Defaults assumed where an imported config was silent (``kvcalc import`` fills it)."""

    @model_validator(mode="after")
    def _layers_agree(self) -> ModelSpec:
        if self.layer_pattern is not None and self.layer_types is not None:
            raise ValueError("give layer_pattern or layer_types, not both")
        if self.layer_types is not None and len(self.layer_types) != self.num_layers:
            raise ValueError(
                f"layer_types lists {len(self.layer_types)} layers but num_layers is "
                f"{self.num_layers}"
            )
        sliding = self.layer_counts[LayerKind.SLIDING]
        if sliding and self.sliding_window is None:
            raise ValueError(f"{sliding} layers are sliding but sliding_window is not set")
        if self.sliding_window is not None and not sliding:
            raise ValueError(
                f"sliding_window is {self.sliding_window} but no layer is sliding "
                "(add layer_pattern: [sliding] for every layer)"
            )
        return self

    @property
    def layer_kinds(self) -> tuple[LayerKind, ...]:
        """The kind of every layer, index 0 first (MTP layers not included)."""
        if self.layer_types is not None:
            return self.layer_types
        pattern = self.layer_pattern or (LayerKind.FULL,)
        return tuple(pattern[i % len(pattern)] for i in range(self.num_layers))

    @cached_property
    def layer_counts(self) -> Counter[LayerKind]:
        """How many layers of each kind, computed once per spec."""
        return Counter(self.layer_kinds)


def validate_spec(data: dict, origin: str) -> ModelSpec:
    """A validated spec, or a ``SpecError`` naming ``origin``, the field and the value."""
    try:
        return ModelSpec.model_validate(data)
    except ValidationError as e:
        raise SpecError(f"{origin}: {_describe(e)}") from None


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
        return f"{field}.kind: required field is missing (standard or mla){more}"
    if kind == "extra_forbidden":
        return f"{field}: unknown field (value {_show(first['input'])}){more}"
    message = first["msg"].removeprefix("Value error, ")
    if kind == "value_error":
        return f"{field}: {message}{more}"
    return f"{field}: {_show(first['input'])}: {message}{more}"


def _field_name(loc: tuple) -> str:
    """Dotted field path, without pydantic's union tags (``attention.mla.x`` -> ``attention.x``)."""
    parts = [str(p) for i, p in enumerate(loc) if not (i and loc[i - 1] == "attention")]
    return ".".join(parts) or "spec"


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
