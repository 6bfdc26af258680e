"""kvcalc fit: the budget adds up, and the answers follow vLLM's and SGLang's allocation rules."""

import json

import pytest

from kvcalc.analytic import Options, curve
from kvcalc.capacity import GIB, check_parallel, fit, weights_bytes
from kvcalc.catalog import load_bundled
from kvcalc.errors import OptionError
from kvcalc.hardware import GPUS, get_gpu
from kvcalc.parallel import Parallel, ceil_div
from kvcalc.units import parse_bytes

V3 = load_bundled("deepseek-v3")
H200 = get_gpu("h200")


def v3_on_h200(**kw):
    options = Options(131072, kv_dtype="fp8", engine="vllm", parallel=Parallel(tp=8))
    return fit(V3, options, gpu_name=H200.display_name, gpu_mem_bytes=H200.memory_bytes,
               weights_dtype="fp8", **kw)


def test_budget_adds_up():
    f = v3_on_h200()
    assert f.usable_bytes == H200.memory_bytes * 9 // 10
    assert f.weights_bytes_per_gpu == 671_000_000_000 // 8
    assert f.reserve_bytes == 3 * GIB  # vLLM's documented default
    assert f.kv_budget_bytes_per_gpu == f.usable_bytes - f.weights_bytes_per_gpu - f.reserve_bytes


def test_tokens_follow_vllms_page_rule():
    f = v3_on_h200()
    # vLLM: num_blocks = budget // (block_size x bytes per token per layer x layers); tokens = blocks x 64
    pages = f.kv_budget_bytes_per_gpu // (64 * 576 * 61)
    assert f.kv_bytes_per_token_per_gpu == 576 * 61  # fp8 latent, replicated on every TP rank
    assert f.max_tokens == pages * 64 == 1_382_656


def test_tokens_follow_sglangs_cell_rule():
    options = Options(131072, kv_dtype="bf16", engine="sglang", parallel=Parallel(tp=8))
    f = fit(V3, options, gpu_name="h200", gpu_mem_bytes=H200.memory_bytes, weights_dtype="fp8")
    assert f.max_tokens == f.kv_budget_bytes_per_gpu // (1152 * 61)  # page size 1: whole cells


def test_concurrency_and_context_are_the_largest_that_fit():
    f = v3_on_h200()
    c = curve(V3, Options(1, kv_dtype="fp8", engine="vllm", parallel=Parallel(tp=8)))
    n = f.max_concurrency
    assert c.per_gpu_bytes(131072, n) <= f.kv_budget_bytes_per_gpu < c.per_gpu_bytes(131072, n + 1)
    assert (n, f.max_context, f.context_capped) == (10, 163_840, True)  # capped by max positions


def test_context_limited_by_memory():
    f = fit(load_bundled("llama-3.1-8b"), Options(8192), gpu_name="24GiB",
            gpu_mem_bytes=parse_bytes("24GiB", "--gpu-mem"))
    budget = 24 * GIB * 9 // 10 - 8_030_000_000 * 2
    assert f.kv_budget_bytes_per_gpu == budget
    assert f.max_context == budget // 131_072 and not f.context_capped


def test_dp_attention_multiplies_concurrency():
    plain = v3_on_h200()
    options = Options(131072, kv_dtype="fp8", engine="vllm", parallel=Parallel(tp=8, dp_attention=8))
    dp = fit(V3, options, gpu_name="h200", gpu_mem_bytes=H200.memory_bytes, weights_dtype="fp8")
    assert dp.max_concurrency == 8 * plain.max_concurrency


def test_sliding_models_can_fit_any_length():
    spec = load_bundled("mistral-7b-v0.1").replace(max_position_embeddings=None)
    f = fit(spec, Options(4096), gpu_name="h200", gpu_mem_bytes=H200.memory_bytes)
    assert f.max_context is None  # every layer holds at most 4096 tokens


def test_weights_that_do_not_fit_name_the_smallest_tp():
    f = fit(load_bundled("llama-3.1-405b"), Options(4096, parallel=Parallel(tp=2)),
            gpu_name="h100", gpu_mem_bytes=get_gpu("h100").memory_bytes)
    assert not f.weights_fit and f.max_tokens == 0
    assert f.smallest_tp == 16
    assert "the smallest tp that fits is 16" in f.notes[0]


@pytest.mark.parametrize(
    ("fmt", "params", "nbytes"),
    [("bf16", 10, 20), ("fp8", 10, 10), ("int4", 128, 66), ("mxfp4", 32, 17), ("nvfp4", 16, 9),
     ("fp8-block", 16384, 16388), ("fp8-block", 1, 2)],
)
def test_weight_formats_count_their_scales(fmt, params, nbytes):
    assert weights_bytes(params, fmt) == nbytes


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: weights_bytes(1, "fp4"), "--weights-dtype: unknown format 'fp4'"),
        (lambda: v3_on_h200(mem_util="1.5"), "--mem-util: 1.5 must be above 0"),
        (lambda: v3_on_h200(mem_util="most"), "--mem-util: 'most' is not a number"),
        (lambda: check_parallel(Parallel(tp=4), 6), "--gpus 6: must equal --tp 4 x --pp 1"),
        (lambda: get_gpu("h300"), "unknown GPU 'h300'; closest: h200"),
        (lambda: parse_bytes("80 parsecs", "--gpu-mem"), "--gpu-mem: '80 parsecs' is not a size"),
    ],
)
def test_errors(call, message):
    with pytest.raises(OptionError, match=message):
        call()


def test_gpus_alone_sets_tp():
    assert check_parallel(Parallel(pp=2), 8) == Parallel(tp=4, pp=2)


@pytest.mark.parametrize(("text", "nbytes"), [("80GiB", 80 << 30), ("80GB", 80 * 10**9), ("80G", 80 * 10**9),
                                              ("1.5TiB", 3 << 39), ("85899345920B", 85899345920), ("0", 0)])
def test_sizes(text, nbytes):
    assert parse_bytes(text, "--gpu-mem") == nbytes


def test_a_bare_number_asks_for_a_unit():
    with pytest.raises(OptionError, match=r"--gpu-mem: '80': give a unit: 80GiB \(powers of two\), 80GB or G"):
        parse_bytes("80", "--gpu-mem")


def test_gpu_table_covers_the_issue():
    assert {"a100-40gb", "a100-80gb", "h100-sxm", "h100-pcie", "h200", "b200", "gb200", "mi300x",
            "mi325x", "l40s", "rtx-4090", "rtx-5090"} <= set(GPUS)
    assert H200.memory_bytes == 143771 << 20  # as nvidia-smi reported on an H200 here


def test_cli_fit_json(cli):
    status, out, _ = cli("fit", "deepseek-v3", "--gpu", "h200", "--gpus", "8", "--engine", "vllm",
                         "--kv-dtype", "fp8", "--weights-dtype", "fp8", "--seq", "128k", "-f", "json")
    assert status == 0
    (row,) = json.loads(out)["rows"]
    assert {k: row[k] for k in ("gpu_mem_bytes", "max_tokens", "max_concurrency", "max_context")} == {
        "gpu_mem_bytes": 143771 << 20, "max_tokens": 1_382_656, "max_concurrency": 10,
        "max_context": 163_840}
    assert row["kv_budget_bytes_per_gpu"] == (row["gpu_mem_bytes"] * 9 // 10
                                              - row["weights_bytes_per_gpu"] - row["reserve_bytes"])


def test_cli_fit_table_breakdown(cli):
    status, out, _ = cli("fit", "llama-3.1-70b", "--gpu-mem", "80GiB", "--tp", "4")
    assert status == 0
    assert "  = KV budget per GPU" in out and "tokens that fit (pages of 1)" in out


def test_cli_fit_needs_a_gpu(cli):
    status, _, err = cli("fit", "llama-3.1-70b")
    assert (status, err) == (2, "kvcalc: error: --gpu or --gpu-mem: say which GPU (e.g. --gpu h200 or --gpu-mem 80GiB)\n")


def test_weights_default_to_how_the_checkpoint_stores_them():
    """DeepSeek-V3 publishes fp8 weights in 128 x 128 blocks: ~1 B per parameter, so 8 x H200 hold
    it with room for the cache, as vLLM serves it (in bf16 it would need 16)."""
    spec = load_bundled("deepseek-v3")
    f = fit(spec, Options(131_072, engine="vllm", parallel=Parallel(tp=8)), gpu_name="h200",
            gpu_mem_bytes=H200.memory_bytes)
    assert f.weights_dtype == "fp8-block" and f.weights_fit
    assert f.weights_bytes_per_gpu == -(-weights_bytes(spec.params, "fp8-block") // 8)
    assert any(n.startswith("weights fp8-block: as deepseek-v3 publishes them (its weights_dtype)") for n in f.notes)
    bf16 = fit(spec, Options(131_072, engine="vllm", parallel=Parallel(tp=8)), gpu_name="h200",
               gpu_mem_bytes=H200.memory_bytes, weights_dtype="bf16")
    assert not bf16.weights_fit and bf16.smallest_tp == 16


def test_vllm_capacity_line_as_vllm_logs_it():
    """v1/core/kv_cache_utils.py update_kv_cache_capacity: num_blocks = budget // block bytes; a
    request of max_model_len takes cdiv(max_model_len, 16) blocks; tokens = int(concurrency x L)."""
    spec = load_bundled("llama-3.1-8b")
    f = fit(spec, Options(32_000, engine="vllm"), gpu_name="h200", gpu_mem_bytes=H200.memory_bytes)
    blocks = f.kv_budget_bytes_per_gpu // (131_072 * 16)
    concurrency = blocks / 2000  # cdiv(32,000, 16)
    assert f.engine_log == (f"GPU KV cache size: {int(concurrency * 32_000):,} tokens, Maximum concurrency for "
                            f"32,000 tokens per request: {concurrency:.2f}x")
    assert f"vLLM logs, with this KV budget: {f.engine_log}" in f.notes


def test_vllm_admits_gemma_3_on_its_reservation_not_on_what_it_holds():
    """Gemma-3-27B at 32k on an H200: vLLM logs ~6.9x, where counting sliding layers at their
    window says 24. 10 full + 52 sliding layers in groups of 10 (6 sliding groups); a request
    reserves cdiv(32,768, 16) pages in the full group and cdiv(1,023 + 2 x 8,192, 16) + 1 in each
    sliding one (v1/kv_cache_interface.py max_admission_blocks_per_request)."""
    f = fit(load_bundled("gemma-3-27b"), Options(32_768, engine="vllm"), gpu_name="h200",
            gpu_mem_bytes=H200.memory_bytes)
    block = 10 * 16 * (2 * 16 * 128 * 2)
    reserved = 2048 + 6 * (1088 + 1)
    blocks = f.kv_budget_bytes_per_gpu // block
    assert f.max_num_batched_tokens == 8192  # vllm serve's default on an H200
    assert f.request_bytes_per_gpu == reserved * block
    assert f.max_concurrency == (blocks - 1) // reserved == 6
    assert f.engine_log == (f"GPU KV cache size: {int(blocks / reserved * 32_768):,} tokens, Maximum concurrency "
                            f"for 32,768 tokens per request: {blocks / reserved:.2f}x") == (
        "GPU KV cache size: 226,222 tokens, Maximum concurrency for 32,768 tokens per request: 6.90x")
    assert f.max_tokens == 226_222  # what vLLM logs as its GPU KV cache size
    held = any("up to 21 sequences can run at once when their prefills do not overlap" in n for n in f.notes)
    assert held


def test_max_num_batched_tokens_changes_the_reservation():
    spec = load_bundled("gemma-3-27b")
    small = fit(spec, Options(32_768, engine="vllm", max_num_batched_tokens=2048), gpu_name="h200",
                gpu_mem_bytes=H200.memory_bytes)
    assert small.request_bytes_per_gpu == (2048 + 6 * (ceil_div(1023 + 4096, 16) + 1)) * 10 * 16 * 8192
    assert small.max_concurrency > 6
    b200 = fit(spec, Options(32_768, engine="vllm"), gpu_name="b200", gpu_mem_bytes=get_gpu("b200").memory_bytes)
    assert b200.max_num_batched_tokens == 2048  # vllm serve's default from 160 GiB
    a100 = fit(spec, Options(32_768, engine="vllm"), gpu_name="a100-80gb",
               gpu_mem_bytes=get_gpu("a100-80gb").memory_bytes)
    assert a100.max_num_batched_tokens == 2048
    with pytest.raises(OptionError, match="--max-num-batched-tokens: vLLM's scheduler budget; sglang@default"):
        curve(spec, Options(1, engine="sglang", max_num_batched_tokens=2048))


def test_vllm_longest_context_is_the_longest_reservation_that_fits():
    """vLLM refuses to start when one request of max_model_len does not fit (kv_cache_planning.py
    _check_enough_kv_cache_memory, the null block set aside). With 3,001 blocks of Gemma-3-27B, a
    request of L <= 17,407 tokens reserves cdiv(L, 16) + 6 x (cdiv(L, 16) + 1) blocks: at most 3,000
    when cdiv(L, 16) <= 427."""
    spec = load_bundled("gemma-3-27b")
    block = 10 * 16 * 8192
    memory = weights_bytes(spec.params, "bf16") + 3001 * block + 5
    f = fit(spec, Options(32_768, engine="vllm", max_num_batched_tokens=8192), gpu_name="exact",
            gpu_mem_bytes=memory, mem_util="1", reserve_bytes=0)
    assert f.kv_budget_bytes_per_gpu // block == 3001
    assert f.max_context == 427 * 16 and not f.context_capped
    assert f.max_concurrency == 0  # no 32k request fits
    # vllm serve's default on a GPU under 70 GiB is 2,048: past 1,023 + 4,096 tokens the sliding
    # groups reserve 321 blocks each, so cdiv(L, 16) <= 3,000 - 1,926
    small = fit(spec, Options(32_768, engine="vllm"), gpu_name="exact", gpu_mem_bytes=memory, mem_util="1",
                reserve_bytes=0)
    assert small.max_num_batched_tokens == 2048 and small.max_context == 1074 * 16


def test_sglang_budget_is_mem_fraction_static_less_weights():
    """SGLang gives weights and KV pools mem_fraction_static of the memory; activations and CUDA
    graphs live in the rest, so no reserve comes out of the KV budget."""
    f = fit(load_bundled("llama-3.1-8b"), Options(32_768, engine="sglang"), gpu_name="h200",
            gpu_mem_bytes=H200.memory_bytes, mem_util="0.903")
    assert f.reserve_bytes == 0
    assert f.kv_budget_bytes_per_gpu == int(H200.memory_bytes * 0.903) - 16_060_000_000
    assert f.max_tokens == f.kv_budget_bytes_per_gpu // 131_072
    assert f.engine_log == f"max_total_num_tokens={f.max_tokens}"
    assert not any("mem_fraction_static 0.9 assumed" in n for n in f.notes)


def test_sglang_sizes_gpt_oss_pools_by_the_swa_ratio():
    """gpt-oss-120b is a hybrid SWA model in SGLang: full pool = budget // (18 full layers + 0.8 x 18
    sliding layers' bytes per token), SWA pool = 0.8 of it (pool_configurator.py)."""
    f = fit(load_bundled("gpt-oss-120b"), Options(32_768, engine="sglang"), gpu_name="h200",
            gpu_mem_bytes=H200.memory_bytes, weights_dtype="mxfp4")
    full = int(f.kv_budget_bytes_per_gpu // (36_864 + 0.8 * 36_864))
    assert f.max_tokens == full == 1_108_023
    assert f.engine_log == f"Use sliding window memory pool. full_layer_tokens={full}, swa_layer_tokens={int(full * 0.8)}"
    assert f.max_concurrency == full // 32_768 == 33
    assert f.max_context == 131_072 and f.context_capped
    assert f.mem_util == "0.9" and any(n.startswith("mem_fraction_static 0.9 assumed: SGLang picks its own")
                                       for n in f.notes)


def test_sglang_keeps_gemma_3_in_one_pool():
    f = fit(load_bundled("gemma-3-27b"), Options(32_768, engine="sglang"), gpu_name="h200",
            gpu_mem_bytes=H200.memory_bytes)
    assert f.max_tokens == f.kv_budget_bytes_per_gpu // (62 * 8192)  # every layer, every token
    assert f.max_concurrency == f.max_tokens // 32_768
    assert f.engine_log == f"max_total_num_tokens={f.max_tokens}"




def test_plot_and_fit_agree_on_vllms_longest_context():
    from kvcalc.analytic import in_flight_tokens
    from kvcalc.capacity import longest_context
    from kvcalc.plot import Series

    spec = load_bundled("gemma-3-27b")
    options = Options(1_000_000, engine="vllm", max_num_batched_tokens=8192)
    budget = 2 * GIB
    c = curve(spec, options)
    series = Series("gemma", c, budget, in_flight_tokens(options))
    longest = longest_context(c, budget, in_flight=in_flight_tokens(options))
    blocks = budget // c.block_bytes[0] - 1  # the null block set aside
    assert c.request_blocks(longest, 16_384) <= blocks < c.request_blocks(longest + 1, 16_384)
    assert series.bytes_at(longest, 1) == c.request_blocks(longest, 16_384) * c.block_bytes[0]
