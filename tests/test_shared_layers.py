"""Layers that reuse an earlier layer's cache (Gemma-3n's num_kv_shared_layers): they hold nothing of
their own. transformers 5.23 makes them DummyLayers (tests/test_families.py checks its real cache)."""

import pytest

from kvcalc.analytic import Options, footprint
from kvcalc.catalog import parse_spec
from kvcalc.errors import OptionError
from kvcalc.parallel import Parallel

SPEC = """\
name: tiny-shared
display_name: Tiny shared
num_layers: 6
hidden_size: 64
sliding_window: 8
attention: {kind: standard, num_heads: 4, num_kv_heads: 2, head_dim: 16}
layer_types: [sliding, sliding, full, sliding, shared, shared]
"""
PER_LAYER = 2 * 2 * 16 * 2  # K and V, 2 KV heads x 16, bf16


def spec():
    return parse_spec(SPEC, "tiny.yaml")


def test_shared_layers_hold_nothing():
    fp = footprint(spec(), Options(100))
    assert fp.bytes_per_token == 4 * PER_LAYER
    assert fp.total_bytes == PER_LAYER * (100 + 3 * 8)
    assert {p.layer_kind for p in fp.parts} == {"full", "sliding"}


def test_a_pipeline_stage_of_shared_layers_holds_nothing():
    fp = footprint(spec(), Options(100, parallel=Parallel(pp=3)))  # stages: 2 + 2 + 2 layers
    assert fp.per_gpu_bytes == PER_LAYER * (100 + 8)  # the middle stage: one full, one sliding


@pytest.mark.parametrize("engine", [None, "vllm", "vllm@flashmla", "llama.cpp", "transformers"])
@pytest.mark.parametrize("seq_len", [5, 100, 1000])
def test_a_shared_layer_adds_nothing_under_engines_that_allocate_it_nothing(engine, seq_len):
    """vLLM gives a layer with kv_sharing_target_layer_name no cache spec; llama.cpp creates no K/V
    tensors past n_layer_kv_from_start; transformers makes it a DummyLayer."""
    without = parse_spec(SPEC.replace("num_layers: 6", "num_layers: 4").replace(", shared, shared", ""), "t.yaml")
    options = Options(seq_len, batch=3, engine=engine)
    assert footprint(spec(), options).total_bytes == footprint(without, options).total_bytes


@pytest.mark.parametrize("engine", ["sglang", "transformers@5.14"])
def test_engines_whose_sharing_is_not_modelled_refuse(engine):
    """SGLang 0.5.23 allocates buffers for every layer, the shared ones included, and turns hybrid
    SWA memory off for Gemma-3n: not modelled."""
    with pytest.raises(OptionError, match=r"layers that share another layer's cache"):
        footprint(spec(), Options(100, engine=engine))


def test_show_says_which_layers_share(cli, spec_file):
    status, out, _ = cli("show", str(spec_file(SPEC)))
    assert status == 0
    assert "shared layers: 2 of 6 reuse an earlier layer's cache (num_kv_shared_layers): 0 B of their own" in out


def test_measure_builds_no_shared_layer(cli, spec_file):
    status, out, _ = cli("measure", str(spec_file(SPEC)), "--seq", "64", "--device", "cpu", "-f", "json")
    assert status == 0
    import json

    (row,) = json.loads(out)["rows"]
    assert row["layers"] == 2 and row["measured_bytes"] == row["analytic_bytes"] == PER_LAYER * (64 + 8)
    assert row["model_bytes_scaled"] == row["model_bytes"] == PER_LAYER * (64 + 3 * 8)
