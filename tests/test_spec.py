import pytest
from pydantic import ValidationError

from kvcalc.spec import LayerKind, ModelSpec

BASE = {
    "name": "m",
    "display_name": "M",
    "num_layers": 6,
    "hidden_size": 64,
    "attention": {"kind": "standard", "num_heads": 8, "num_kv_heads": 2, "head_dim": 8},
}


def spec(**changes) -> ModelSpec:
    return ModelSpec.model_validate(BASE | changes)


def attention(**changes) -> dict:
    return BASE["attention"] | changes


@pytest.mark.parametrize(
    ("kv_heads", "variant"), [(8, "MHA"), (2, "GQA"), (1, "MQA")]
)
def test_variant_follows_kv_heads(kv_heads, variant):
    assert spec(attention=attention(num_kv_heads=kv_heads)).attention.variant == variant


def test_layers_default_to_full():
    assert spec().layer_kinds == (LayerKind.FULL,) * 6


def test_layer_pattern_repeats_from_layer_zero():
    s = spec(num_layers=13, sliding_window=1024, layer_pattern=["sliding"] * 5 + ["full"])
    kinds = s.layer_kinds
    assert [i for i, k in enumerate(kinds) if k is LayerKind.FULL] == [5, 11]
    assert s.layer_counts[LayerKind.SLIDING] == 11


def test_layer_types_are_explicit():
    s = spec(num_layers=3, sliding_window=128, layer_types=["sliding", "full", "full"])
    assert s.layer_counts == {LayerKind.SLIDING: 1, LayerKind.FULL: 2}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"attention": attention(num_kv_heads=3)}, "num_kv_heads 3 does not divide num_heads 8"),
        ({"num_layers": 0}, "greater than 0"),
        ({"num_layers": "6"}, "valid integer"),
        ({"num_layers": 6.0}, "valid integer"),
        ({"num_layers": True}, "valid integer"),
        ({"attention": attention(head_dim=-1)}, "greater than 0"),
        ({"sliding_window": 0, "layer_pattern": ["sliding"]}, "greater than 0"),
        ({"sliding_window": 4096}, "no layer is sliding"),
        ({"layer_pattern": ["sliding"]}, "sliding_window is not set"),
        ({"layer_types": ["full"] * 5}, "layer_types lists 5 layers but num_layers is 6"),
        ({"layer_pattern": ["full"], "layer_types": ["full"] * 6}, "not both"),
        ({"layer_pattern": ["global"]}, "'full' or 'sliding'"),
        ({"heads": 8}, "Extra inputs are not permitted"),
        ({"name": "Has Spaces"}, "pattern"),
    ],
)
def test_validation_rejects(changes, message):
    with pytest.raises(ValidationError, match=message):
        spec(**changes)


def test_mla_needs_q_lora_rank_even_when_null():
    mla = {
        "kind": "mla",
        "num_heads": 4,
        "kv_lora_rank": 32,
        "qk_nope_head_dim": 8,
        "qk_rope_head_dim": 4,
        "v_head_dim": 8,
    }
    with pytest.raises(ValidationError, match="q_lora_rank"):
        spec(attention=mla)
    assert spec(attention=mla | {"q_lora_rank": None}).attention.variant == "MLA"


def test_spec_is_frozen():
    with pytest.raises(ValidationError, match="frozen"):
        spec().num_layers = 7
