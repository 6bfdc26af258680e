"""A model's rotary-embedding settings as data, read without torch: from a transformers config
(``rope_parameters``, or the older ``rope_theta`` + ``rope_scaling``) into one dict per layer type,
and checked where a spec file states them. ``nn/rope.py`` computes the embedding from them.

The settings dict is transformers 5's ``rope_parameters`` for one layer type: ``rope_type``,
``rope_theta`` and the type's own fields (``factor``, ``original_max_position_embeddings``, YaRN's
``beta_fast`` / ``beta_slow`` / ``mscale`` / ``mscale_all_dim`` / ``attention_factor`` / ``truncate``,
llama3's ``low_freq_factor`` / ``high_freq_factor``), plus ``partial_rotary_factor``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "llama3")
"""The ``rope_type`` values kvcalc's layers compute; any other is refused, not approximated."""

NUMBER_FIELDS = ("rope_theta", "factor", "original_max_position_embeddings", "beta_fast", "beta_slow",
                 "mscale", "mscale_all_dim", "attention_factor", "low_freq_factor", "high_freq_factor",
                 "partial_rotary_factor")
"""The settings' numeric fields (each a positive number where given)."""
FIELDS = ("rope_type", *NUMBER_FIELDS, "truncate")
LOCAL_THETA = ("rope_local_base_freq", "swa_rope_theta")
"""The base of the sliding layers' rope, where a config gives them their own."""
CONFIG_KEYS = frozenset({"rope_theta", "rope_scaling", "rope_parameters", "partial_rotary_factor",
                         *LOCAL_THETA, "qk_rope_head_dim", "rope_interleave", "indexer_rope_interleave"})
"""The config fields about rope that :func:`rope_parameters` reads (or that shape no rotation):
a config with any other (DeepSeek-V4's ``compress_rope_theta``, Llama-4's ``no_rope_layers``) has a
rope kvcalc's settings do not describe."""


def rope_parameters(config: Mapping[str, Any], layer_type: str | None = None) -> dict[str, Any]:
    """One dict of rope settings from a config dict: ``rope_theta`` (default 10000), ``rope_type``
    (default ``"default"``) and the type's own fields, from ``rope_parameters`` over ``rope_scaling``
    over the top-level ``rope_theta`` and ``partial_rotary_factor``.

    Where a family keeps one rope per layer type (Gemma-3: ``rope_parameters`` keyed by
    ``sliding_attention`` / ``full_attention``), ``layer_type`` picks one; sliding layers of an
    older Gemma-3 config (``rope_local_base_freq``) or of MiMo-V2 (``swa_rope_theta``) turn at their
    own base, unscaled."""
    merged: dict[str, Any] = {"rope_type": "default", "rope_theta": 10000.0}
    for name in ("rope_theta", "partial_rotary_factor"):
        if config.get(name) is not None:
            merged[name] = config[name]
    for local in LOCAL_THETA:
        if layer_type == "sliding_attention" and config.get(local) is not None:
            return {**merged, "rope_theta": config[local]}
    for source in ("rope_scaling", "rope_parameters"):
        given = config.get(source) or {}
        if given and all(isinstance(v, Mapping) for v in given.values()):
            if layer_type not in given:
                raise ValueError(f"{source}: one rope per layer type ({sorted(given)}); "
                                 f"layer type {layer_type!r} has none")
            given = given[layer_type]
        merged.update({k: v for k, v in given.items() if v is not None})
    if "type" in merged:  # the old name of rope_type
        merged["rope_type"] = merged.pop("type")
    if merged["rope_type"] not in ROPE_TYPES:
        raise ValueError(f"rope_type {merged['rope_type']!r}: expected one of {', '.join(ROPE_TYPES)}")
    return merged


def check_settings(settings: Any, where: str = "rope", *, max_tokens: int) -> dict[str, Any]:
    """``settings`` as a spec states them, checked field by field: a mapping of :data:`FIELDS` (a
    null one is absent) with ``rope_theta``, whose ``rope_type`` kvcalc computes, whose numbers are
    positive and whose ``original_max_position_embeddings`` is a token count up to ``max_tokens``.
    Raises ValueError naming the field and the value."""
    if not isinstance(settings, Mapping):
        raise ValueError(f"{where}: {settings!r}: expected a mapping of rope settings")
    settings = {key: value for key, value in settings.items() if value is not None}
    for key, value in settings.items():
        if key not in FIELDS:
            raise ValueError(f"{where}.{key}: not a rope setting (expected {', '.join(FIELDS)})")
        if key == "truncate" and not isinstance(value, bool):
            raise ValueError(f"{where}.truncate: {value!r}: expected true or false")
        positions = key == "original_max_position_embeddings"
        if positions and (type(value) is not int or not 0 < value <= max_tokens):
            raise ValueError(f"{where}.{key}: {value!r}: expected an integer from 1 to {max_tokens:,}")
        if key in NUMBER_FIELDS and (isinstance(value, bool) or not isinstance(value, int | float)
                                     or not 0 < value < float("inf")):
            raise ValueError(f"{where}.{key}: {value!r}: expected a positive number")
    if settings.get("rope_type", "default") not in ROPE_TYPES:
        raise ValueError(f"{where}.rope_type: {settings['rope_type']!r}: expected one of "
                         f"{', '.join(ROPE_TYPES)}")
    if "rope_theta" not in settings:
        raise ValueError(f"{where}.rope_theta: missing")
    return {"rope_type": "default", **settings}
