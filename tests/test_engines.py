"""Engine profiles: layouts, pages, windows and formats, each against the engine's own rule."""

import pytest

from kvcalc.analytic import Layout, Options, footprint
from kvcalc.catalog import load_bundled
from kvcalc.engines import get_engine
from kvcalc.errors import OptionError
from kvcalc.parallel import Parallel, ceil_div

V3 = load_bundled("deepseek-v3")


def fp(name, seq, **kw):
    return footprint(load_bundled(name), Options(seq, **kw))


def test_vllm_picks_flashmla_pages_for_mla():
    assert get_engine("vllm", is_mla=True).page_tokens == 64
    assert get_engine("vllm", is_mla=False).page_tokens == 16


def test_vllm_rounds_each_sequence_to_whole_pages():
    f = fp("deepseek-v3", 100_000, engine="vllm", batch=2)
    assert f.parts[0].cells == 2 * 1563 * 64  # ceil(100,000 / 64) pages per sequence
    assert f.total_bytes == 70_272 * 2 * 100_032


def test_block_size_overrides_the_page():
    assert fp("llama-3.1-8b", 100, engine="vllm", block_size=128).parts[0].cells == 128


@pytest.mark.parametrize(("kv_dtype", "per_layer"), [("fp8", 576), ("fp8_ds_mla", 656), ("bf16", 1152)])
def test_vllm_mla_page_bytes(kv_dtype, per_layer):
    # MLAAttentionSpec: block_size x 576 x dtype, or block_size x 656 for fp8_ds_mla
    assert fp("deepseek-v3", 64, engine="vllm", kv_dtype=kv_dtype).bytes_per_token == per_layer * 61


def test_vllm_without_mla_pads_v_to_the_k_width():
    f = fp("deepseek-v3", 16, engine="vllm@no-mla")
    assert f.bytes_per_token == 2 * 128 * 192 * 2 * 61


@pytest.mark.parametrize(("seq", "cells"), [(4000, 4000), (32768, 4096), (32770, 4112)])
def test_vllm_sliding_window_keeps_the_pages_spanning_it(seq, cells):
    # Mistral: window 4096, pages of 16. At 32,770 tokens the window [28,674, 32,770) straddles
    # 257 pages; at 32,768 it is page-aligned (256 pages).
    assert fp("mistral-7b-v0.1", seq, engine="vllm").parts[0].cells == cells


def test_sglang_default_is_unpaged_latent():
    f = fp("deepseek-v3", 100_000, engine="sglang")
    assert (f.layout, f.parts[0].cells) == ("latent", 100_000)
    assert fp("deepseek-v3", 100_000, engine="sglang@flashmla").parts[0].cells == 100_032


def test_llama_cpp_pads_the_context_to_256():
    assert fp("llama-3.1-8b", 1000, engine="llama.cpp").parts[0].cells == 1024


@pytest.mark.parametrize(("seq", "batch", "swa_cells"), [(32768, 1, 1536), (8192, 4, 4608), (600, 1, 768)])
def test_llama_cpp_swa_cells(seq, batch, swa_cells):
    # pad(min(n_ctx, n_swa x n_seq + n_ubatch 512), 256); n_ctx = pad(seq x batch, 256)
    f = fp("gemma-3-27b", seq, engine="llama.cpp", batch=batch)
    sliding = [p for p in f.parts if p.layer_kind == "sliding"]
    assert {p.cells for p in sliding} == {swa_cells}


def test_llama_cpp_eras():
    values = {
        era: fp("deepseek-v3", 256, engine=f"llama.cpp@{era}").bytes_per_token // (2 * 61)
        for era in ("2024", "2025", "2026")
    }
    assert values == {"2024": 128 * (192 + 128), "2025": 512 + 64 + 512, "2026": 512 + 64}


def test_llama_cpp_quantised_rows():
    assert fp("deepseek-v3", 256, engine="llama.cpp", kv_dtype="q8_0").bytes_per_token == 612 * 61


def test_transformers_versions_and_window():
    assert fp("deepseek-v3", 10, engine="transformers@5.14").bytes_per_token == 4_997_120
    assert fp("deepseek-v3", 10, engine="transformers").bytes_per_token == 70_272
    sliding = [p for p in fp("gemma-3-27b", 32768, engine="transformers").parts if p.layer_kind == "sliding"]
    assert {p.cells for p in sliding} == {1023}


def test_reference_modes():
    assert fp("deepseek-v3", 10, engine="reference").layout == "latent"
    assert fp("deepseek-v3", 10, engine="reference@naive").bytes_per_token == 4_997_120


@pytest.mark.parametrize(
    ("model", "options", "message"),
    [
        ("llama-3.1-8b", {"engine": "reference"}, "runs DeepSeek MLA models only"),
        ("llama-3.1-8b", {"engine": "llama.cpp", "kv_dtype": "fp8"}, "llama.cpp@2026 caches in fp32"),
        ("llama-3.1-8b", {"engine": "vllm", "kv_dtype": "q8_0"}, "vllm@default caches in"),
        ("deepseek-v3", {"engine": "vllm", "layout": Layout.DECOMPRESSED}, "vllm@no-mla"),
        ("deepseek-v3", {"engine": "tgi"}, "unknown engine 'tgi'"),
        ("deepseek-v3", {"engine": "vllm", "block_size": 0}, "--block-size: 0"),
    ],
)
def test_engine_errors(model, options, message):
    with pytest.raises(OptionError, match=message):
        fp(model, 10, **options)


# SGLang 0.5.23 keeps sliding layers apart (its hybrid SWA pool) only for the architectures
# srt/configs/model_config.py ``is_hybrid_swa_model`` lists; every other model runs one KV pool
# across all layers, so its sliding layers hold every token (Gemma-2/3 besides have hybrid SWA
# memory turned off by model_overrides/gemma2_gemma3.py).
@pytest.mark.parametrize(("name", "per_token"), [
    ("gemma-3-27b", 2 * 16 * 128 * 2 * 62),  # 52 sliding + 10 full layers, all of every token
    ("gemma-2-9b", 2 * 8 * 256 * 2 * 42),
    ("mistral-7b-v0.1", 2 * 8 * 128 * 2 * 32),
    ("phi-3-mini-4k", 2 * 32 * 96 * 2 * 32),
])
def test_sglang_holds_every_token_outside_its_hybrid_swa_list(name, per_token):
    seq = 32_768
    assert fp(name, seq, engine="sglang").total_bytes == per_token * seq
    assert fp(name, seq).total_bytes < per_token * seq  # the ideal holds only the windows


def test_sglang_keeps_windows_apart_for_the_architectures_it_lists():
    """...in an SWA pool sized off the full one, not at the window (test_sglang_charges_hybrid_swa_...)."""
    seq = 32_768
    every_token = 36 * 2048 * seq
    assert fp("gpt-oss-120b", seq).total_bytes < fp("gpt-oss-120b", seq, engine="sglang").total_bytes < every_token
    assert "GptOssForCausalLM" in get_engine("sglang").hybrid_swa
    assert "Gemma3ForConditionalGeneration" not in get_engine("sglang").hybrid_swa


def test_sglang_explains_why_a_sliding_layer_holds_every_token():
    from kvcalc.analytic import mha_equivalent
    from kvcalc.explain import explain

    spec = load_bundled("gemma-3-27b")
    options = Options(32_768, engine="sglang")
    text = "\n".join(explain(spec, footprint(spec, options), mha_equivalent(spec, options), with_totals=True))
    assert "Gemma3ForConditionalGeneration is not in its hybrid SWA list" in text
    assert "→ 32,768 cells (every token: no window kept apart)" in text


def test_sglang_needs_the_architecture_of_a_sliding_model():
    spec = load_bundled("gemma-3-27b").replace(architecture=None)
    with pytest.raises(OptionError, match=r"sglang@default: it keeps a sliding window apart only for the "
                                          r"architectures it lists .* give its `architecture`"):
        footprint(spec, Options(1000, engine="sglang"))
    assert footprint(load_bundled("llama-3.1-8b").replace(architecture=None),
                     Options(1000, engine="sglang")).total_bytes == 131_072 * 1000  # no window: no question


# vLLM's hybrid allocator (v1/core/kv_cache_planning.py _get_kv_cache_groups_uniform_page_size)
# deals each kind's layers into groups of one size; a block holds a page for every slot of a group.
def test_vllm_pads_gemma3_sliding_layers_to_whole_groups():
    """52 sliding and 10 full layers: groups of 10, so the sliding layers fill 6 groups (60 slots)."""
    f = fp("gemma-3-27b", 32_768, engine="vllm")
    per_layer = 2 * 16 * 128 * 2  # K and V, 16 KV heads of 128, bf16
    assert f.total_bytes == per_layer * (10 * 32_768 + 60 * 1024)  # the window in 16-token pages
    padding = [p for p in f.parts if p.layer_kind == "block padding"]
    assert [(p.layers, p.cells) for p in padding] == [(8, 1024), (8, 1024)]  # K and V of 8 padding slots


def test_vllm_needs_no_padding_when_the_kinds_match():
    for name in ("gpt-oss-120b", "gemma-2-9b", "llama-4-scout"):
        assert not [p for p in fp(name, 32_768, engine="vllm").parts if p.layer_kind == "block padding"]


def test_vllm_pads_per_pipeline_stage():
    """Gemma-2-9B, pp 2: its 21 sliding and 21 full layers form one group each; stage 0 holds 11 of
    the sliding ones and 10 of the full, so its blocks are 11 pages wide for both."""
    f = fp("gemma-2-9b", 32_768, engine="vllm", parallel=Parallel(pp=2))
    per_layer = 2 * 8 * 256 * 2
    assert f.per_gpu_bytes == per_layer * (11 * 32_768 + 11 * 4096)
    assert f.total_bytes == per_layer * (21 * 32_768 + 21 * 4096)


def test_request_bytes_are_vllms_reservation(cli):
    """compare's JSON carries what vLLM reserves to admit the sequence beside what it holds."""
    import json

    status, out, _ = cli("compare", "gemma-3-27b", "llama-3.1-8b", "--seq", "32k", "--engine", "vllm",
                         "--format", "json")
    gemma, llama = json.loads(out)["rows"]
    assert status == 0
    assert gemma["total_bytes"] == 3_187_671_040  # held: 60 padded sliding + 10 full layers
    assert gemma["request_bytes"] == (2048 + 6 * 1089) * 10 * 16 * 8192
    assert llama["request_bytes"] == llama["total_bytes"]
    status, out, _ = cli("compare", "gemma-3-27b", "--seq", "32k", "--engine", "vllm", "--format", "json",
                         "--max-num-batched-tokens", "2048")
    assert json.loads(out)["rows"][0]["request_bytes"] == (2048 + 6 * (ceil_div(1023 + 4096, 16) + 1)) * 10 * 16 * 8192


def test_sglang_charges_hybrid_swa_layers_their_pool_share():
    """gpt-oss is a hybrid SWA model in SGLang: its SWA pool is 0.8 of the full pool's tokens, so a
    sequence's sliding layers cost ceil(0.8 x tokens) rows, whatever the window."""
    from kvcalc.catalog import load_bundled

    fp = footprint(load_bundled("gpt-oss-120b"), Options(32_768, engine="sglang"))
    sliding = [p for p in fp.parts if p.layer_kind == "sliding"]
    assert {p.cells for p in sliding} == {26_215}  # ceil(0.8 x 32,768)
    assert fp.total_bytes == 18 * 2048 * (32_768 + 26_215)
    assert fp.request_bytes == fp.total_bytes


@pytest.mark.parametrize("name", ["gemma-2-27b", "gemma-3-27b", "gemma-3n-e4b", "gpt-oss-20b", "llama-4-scout",
                                  "mistral-7b-v0.1", "deepseek-v4-flash", "llama-3.1-8b"])
def test_vllm_never_holds_more_than_it_reserves(name):
    """vLLM sizes a request's admission cap so that what it holds never exceeds it
    (single_type_kv_cache_manager.py get_num_blocks_to_allocate): at every length, in whole blocks."""
    from kvcalc.analytic import curve, in_flight_tokens

    spec = load_bundled(name)
    kv = "fp8_ds_mla" if name.startswith("deepseek-v4") else "bf16"
    options = Options(1, engine="vllm", kv_dtype=kv)
    c = curve(spec, options)
    for length in (1, 15, 16, 17, 127, 128, 129, 1023, 1024, 1025, 8192, 16_384, 20_000, 131_072, 1_000_003):
        held = c.peak_per_gpu_bytes(length)
        reserved = c.request_blocks(length, in_flight_tokens(options)) * c.block_bytes[0]
        assert held % c.block_bytes[0] == 0 and held <= reserved


def test_show_explains_vllms_reservation(cli):
    status, out, _ = cli("show", "gemma-3-27b", "--engine", "vllm", "--seq", "32k", "--explain")
    assert status == 0
    assert ("  sliding layers (window 1,024): cdiv(min(1,024 - 1 + 16,384, 32,768), 16) + 1 = 1,089 pages of "
            "16 tokens") in out
    assert "  request_bytes: 11,248,599,040 B (10.5 GiB), beside 3,187,671,040 B held" in out
    assert "max_admission_blocks_per_request" in out  # the rule cites its source
    status, out, _ = cli("show", "llama-3.1-8b", "--engine", "vllm", "--seq", "32k", "--explain")
    assert "vLLM reserves" not in out  # every layer keeps every token: it reserves what it holds
