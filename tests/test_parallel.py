"""Bytes per GPU: tp, pp, dcp and DP attention, against KV-CACHE-FACTS section 4."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvcalc.analytic import Layout, Options, footprint
from kvcalc.catalog import bundled_names, load_bundled
from kvcalc.errors import OptionError
from kvcalc.parallel import Parallel, stages
from kvcalc.spec import ModelSpec, StandardAttention


def fp(name, seq=131072, batch=1, **par):
    return footprint(load_bundled(name), Options(seq, batch, parallel=Parallel(**par)))


def test_mla_latent_is_replicated_on_every_tp_rank():
    f = fp("deepseek-v3", tp=8)
    assert f.per_gpu_bytes == f.total_bytes == 70_272 * 131072
    assert f.notes[0].startswith("latent replicated on 8 attention-TP ranks: 8× the single copy")


def test_decompressed_mla_splits_by_heads():
    spec = load_bundled("deepseek-v3")
    f = footprint(spec, Options(4096, layout=Layout.DECOMPRESSED, parallel=Parallel(tp=8)))
    assert f.per_gpu_bytes * 8 == f.total_bytes


def test_gqa_heads_split_then_replicate():
    assert fp("llama-3.1-70b", tp=8).gpu_bytes_per_token == 327_680 // 8
    qwen = fp("qwen3-235b-a22b", tp=8)  # 4 KV heads on 8 ranks: one each, 2x duplication
    assert qwen.gpu_bytes_per_token == 2 * 1 * 128 * 2 * 94
    assert "every KV head replicated 2×" in qwen.notes[0]


def test_dp_attention_holds_only_its_own_sequences():
    f = fp("deepseek-v3", batch=64, tp=8, dp_attention=8)
    assert f.per_gpu_bytes == 70_272 * 131072 * 8
    assert not any("replicated" in note for note in f.notes)


def test_dcp_splits_the_tokens():
    assert fp("deepseek-v3", tp=8, dcp=8).gpu_parts[0].cells == 16384


def test_pp_counts_the_fullest_stage():
    assert [len(r) for r in stages(61, 4)] == [15, 15, 16, 15]  # vLLM get_pp_indices
    assert fp("deepseek-v3", pp=4).gpu_bytes_per_token == 1152 * 16
    spec = load_bundled("deepseek-v3")
    with_mtp = footprint(spec, Options(1, mtp=True, parallel=Parallel(pp=2)))
    assert with_mtp.gpu_parts[0].layers == 31  # stages 31 and 30 + 1 MTP


def test_pp_with_mixed_layers_picks_the_heaviest_stage():
    f = fp("gemma-3-27b", seq=32768, pp=2)  # 31 layers each; stage 1 has layers 31..61
    full_layers = {p.layers for p in f.gpu_parts if p.layer_kind == "full"}
    assert full_layers == {5}  # global layers 5, 11, ..., 59: five on each stage


@pytest.mark.parametrize(
    ("model", "par", "message"),
    [
        ("llama-3.1-8b", {"tp": 3}, "attention tp 3 does not divide llama-3.1-8b's 32 query heads"),
        ("deepseek-v3", {"pp": 62}, "more stages than deepseek-v3's 61 layers"),
        ("deepseek-v3", {"tp": 8, "dp_attention": 3}, "--dp-attention 3: must divide --tp 8"),
        ("deepseek-v3", {"tp": 4, "dcp": 8}, "--dcp 8: must divide --tp 4"),
        ("deepseek-v3", {"tp": 0}, "--tp: 0 must be at least 1"),
    ],
)
def test_invalid_parallelism(model, par, message):
    with pytest.raises(OptionError, match=message):
        fp(model, **par)


def test_kv_heads_and_tp_must_divide_one_another():
    spec = ModelSpec(
        name="odd", display_name="odd", num_layers=2, hidden_size=64,
        attention=StandardAttention(num_heads=24, num_kv_heads=8, head_dim=8),
    )
    with pytest.raises(OptionError, match="attention tp 12 and odd's 8 KV heads"):
        footprint(spec, Options(1, parallel=Parallel(tp=12)))


divisors = st.sampled_from([1, 2, 4, 8])


@given(st.sampled_from(bundled_names()), st.integers(1, 1 << 18), st.integers(1, 16),
       divisors, divisors, divisors, st.sampled_from([None, "vllm", "sglang", "llama.cpp"]))
def test_one_gpu_never_holds_more_than_the_cache_and_all_gpus_hold_it(name, seq, batch, tp, dp, pp, engine):
    spec = load_bundled(name)
    par = Parallel(tp=tp * dp, pp=min(pp, spec.num_layers), dp_attention=dp)
    try:
        par.check(spec)
        f = footprint(spec, Options(seq, batch, engine=engine, parallel=par))
    except OptionError:  # a split or an engine that cannot run this model (llama.cpp and DSA)
        return
    assert f.per_gpu_bytes <= f.total_bytes
    assert f.per_gpu_bytes * f.gpus >= f.total_bytes
