"""The runtime spec (invariants) and the file schema (shapes and types)."""

import dataclasses

import pytest

from kvcalc.errors import SpecError
from kvcalc.schema import (
    CompressedAttentionFile,
    MlaAttentionFile,
    ModelSpecFile,
    StandardAttentionFile,
    validate_spec,
)
from kvcalc.spec import CompressedAttention, LayerKind, MlaAttention, ModelSpec, StandardAttention

BASE = {
    "name": "m",
    "display_name": "M",
    "num_layers": 6,
    "hidden_size": 64,
    "attention": {"kind": "standard", "num_heads": 8, "num_kv_heads": 2, "head_dim": 8},
}


def spec(**changes) -> ModelSpec:
    return validate_spec(BASE | changes, "m.yaml")


def attention(**changes) -> dict:
    return BASE["attention"] | changes


@pytest.mark.parametrize(("kv_heads", "variant"), [(8, "MHA"), (2, "GQA"), (1, "MQA")])
def test_variant_follows_kv_heads(kv_heads, variant):
    assert spec(attention=attention(num_kv_heads=kv_heads)).attention.variant == variant


def test_layers_default_to_full():
    assert spec().layer_kinds == (LayerKind.FULL,) * 6


def test_layer_pattern_repeats_from_layer_zero():
    s = spec(num_layers=13, sliding_window=1024, layer_pattern=["sliding"] * 5 + ["full"])
    assert [i for i, k in enumerate(s.layer_kinds) if k is LayerKind.FULL] == [5, 11]
    assert s.layer_counts[LayerKind.SLIDING] == 11


def test_layer_types_are_explicit():
    s = spec(num_layers=3, sliding_window=128, layer_types=["sliding", "full", "full"])
    assert s.layer_counts == {LayerKind.SLIDING: 1, LayerKind.FULL: 2}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"attention": attention(num_kv_heads=3)}, "m.yaml: attention: num_kv_heads 3 does not divide num_heads 8"),
        ({"num_layers": 0}, "m.yaml: num_layers: 0: Input should be greater than or equal to 1"),
        ({"num_layers": "6"}, "num_layers: '6': Input should be a valid integer"),
        ({"num_layers": 6.0}, "num_layers: 6.0: Input should be a valid integer"),
        ({"num_layers": True}, "num_layers: True: Input should be a valid integer"),
        ({"attention": attention(head_dim=-1)}, "attention.head_dim: -1: Input should be greater than or equal to 1"),
        ({"sliding_window": 0, "layer_pattern": ["sliding"]}, "sliding_window: 0: Input should be greater"),
        ({"sliding_window": 4096}, "sliding_window is 4096 but no layer is sliding"),
        ({"layer_pattern": ["sliding"]}, "6 layers are sliding but sliding_window is not set"),
        ({"layer_types": ["full"] * 5}, "layer_types lists 5 layers but num_layers is 6"),
        ({"layer_pattern": ["full"], "layer_types": ["full"] * 6}, "not both"),
        ({"layer_pattern": ["global"]}, "layer_pattern.0: 'global': Input should be 'full', 'sliding', 'chunked', 'compressed_sparse', "
         "'heavily_compressed', 'shared', 'recurrent', 'hybrid' or 'mlp'"),
        ({"layer_pattern": []}, "layer_pattern: \\[\\]: Tuple should have at least 1 item"),
        ({"heads": 8}, "heads: unknown field \\(value 8\\)"),
        ({"name": "Has Spaces"}, "name: 'Has Spaces': String should match pattern"),
        ({"rope": {"rope_type": "longrope", "rope_theta": 1e4}}, "m.yaml: rope.rope_type: 'longrope': expected one of"),
        ({"rope": {"rope_type": "yarn"}}, "rope.rope_theta: missing"),
        ({"rope": {"rope_theta": -1}}, "rope.rope_theta: -1: expected a positive number"),
        ({"rope": {"rope_theta": 1e4, "factor": "8"}}, "rope.factor: '8': expected a positive number"),
        ({"rope": {"rope_theta": 1e4, "mrope_section": [1]}}, "rope.mrope_section: not a rope setting"),
        ({"rope": {"rope_theta": 1e4, "truncate": 1}}, "rope.truncate: 1: expected true or false"),
        ({"rope": {"sliding": {"rope_theta": 1e4}}}, "rope: no settings for the full layers"),
        ({"rope": {"global": {"rope_theta": 1e4}}}, "rope: 'global' is not one of"),
        ({"attention_bias": "yes"}, "attention_bias: 'yes': Input should be a valid boolean"),
    ],
)
def test_validation_names_field_and_value(changes, message):
    with pytest.raises(SpecError, match=message):
        spec(**changes)


def test_mla_needs_q_lora_rank_even_when_null():
    mla = {"kind": "mla", "num_heads": 4, "kv_lora_rank": 32, "qk_nope_head_dim": 8,
           "qk_rope_head_dim": 4, "v_head_dim": 8}
    with pytest.raises(SpecError, match="attention.q_lora_rank: required field is missing"):
        spec(attention=mla)
    assert spec(attention=mla | {"q_lora_rank": None}).attention.variant == "MLA"


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: StandardAttention(num_heads=8, num_kv_heads=3, head_dim=8), "does not divide"),
        (lambda: StandardAttention(num_heads=8, num_kv_heads=0, head_dim=8), "num_kv_heads: 0 must be an integer from 1 to 65,536"),
        (lambda: MlaAttention(num_heads=2, q_lora_rank=0, kv_lora_rank=8, qk_nope_head_dim=8,
                              qk_rope_head_dim=4, v_head_dim=8), "q_lora_rank: 0"),
        (lambda: ModelSpec.from_dict(BASE | {"mtp_layers": -1}), "mtp_layers: -1 must be an integer from 0 to 10,000"),
        (lambda: ModelSpec.from_dict(BASE | {"name": "X"}), "name: 'X' must be lowercase"),
        (lambda: ModelSpec.from_dict(BASE | {"layer_pattern": ["global"]}), "'global' is not one of 'full', 'sliding', 'chunked', 'compressed_sparse', "
         "'heavily_compressed', 'shared'"),
    ],
)
def test_the_runtime_spec_enforces_its_invariants(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_spec_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec().num_layers = 7


def test_to_dict_round_trips():
    s = spec(num_layers=13, sliding_window=1024, layer_pattern=["sliding", "full"], assumptions=["x"])
    assert ModelSpec.from_dict(s.to_dict()) == s
    assert validate_spec(s.to_dict(), "again") == s


@pytest.mark.parametrize(
    ("schema", "runtime"),
    [(ModelSpecFile, ModelSpec), (StandardAttentionFile, StandardAttention), (MlaAttentionFile, MlaAttention),
     (CompressedAttentionFile, CompressedAttention)],
)
def test_schema_and_runtime_spec_have_the_same_fields(schema, runtime):
    fields = {f.name for f in dataclasses.fields(runtime)} | {"kind"} - ({"kind"} if runtime is ModelSpec else set())
    assert set(schema.model_fields) == fields


def test_weights_dtype_names_a_weight_format():
    assert spec(weights_dtype="fp8-block").weights_dtype == "fp8-block"
    with pytest.raises(SpecError, match=r"weights_dtype: 'fp3' is not one of fp32, bf16"):
        spec(weights_dtype="fp3")


def test_rope_settings_one_for_all_layers_or_one_per_kind():
    yarn = {"rope_type": "yarn", "rope_theta": 1e4, "factor": 40.0, "original_max_position_embeddings": 4096}
    one = spec(rope=yarn)
    assert one.rope_for(LayerKind.FULL) == yarn
    per_kind = spec(rope={"full": {"rope_theta": 1e6}, "sliding": {"rope_theta": 1e4}},
                    layer_pattern=["sliding", "full"], sliding_window=512)
    assert per_kind.rope_for(LayerKind.SLIDING) == {"rope_type": "default", "rope_theta": 1e4}
    assert per_kind.rope_for(LayerKind.FULL)["rope_theta"] == 1e6
    assert spec().rope_for(LayerKind.FULL) is None
    assert ModelSpec.from_dict(per_kind.to_dict()) == per_kind
