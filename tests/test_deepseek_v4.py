"""DeepSeek-V4 (transformers' ``deepseek_v4``): a sliding window on every layer, compressed entries
on the compressed ones, the CSA indexer's keys and the compressors' state -- read as transformers
5.23 reads the config, and byte-exact to the cache its real model holds after prefill and decode."""

import json
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoConfig

from kvcalc.analytic import Options, curve, footprint
from kvcalc.capacity import longest_context
from kvcalc.catalog import load_bundled, parse_spec
from kvcalc.errors import OptionError, SpecError
from kvcalc.parallel import Parallel
from kvcalc.spec import CompressedAttention, LayerKind, ModelSpec, StandardAttention

PUBLISHED = Path(__file__).parent / "data" / "published"
KINDS = {"sliding_attention": "sliding", "compressed_sparse_attention": "compressed_sparse",
         "heavily_compressed_attention": "heavily_compressed"}
TINY = {"model_type": "deepseek_v4", "vocab_size": 128, "hidden_size": 64, "moe_intermediate_size": 32,
        "num_hidden_layers": 5, "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 32,
        "q_lora_rank": 32, "sliding_window": 8, "o_groups": 2, "o_lora_rank": 16, "index_n_heads": 2,
        "index_head_dim": 16, "index_topk": 2, "n_routed_experts": 4, "num_experts_per_tok": 2, "hc_mult": 2,
        "max_position_embeddings": 512, "qk_rope_head_dim": 8}
# Each way a config can give the layers and rates: layer_types with compress_rates; a published
# file's compress_ratios (one per layer, plus the MTP layer's); the older compress_rate_csa / _hca
# (rates that do not divide one another); the class default layout.
VARIANTS = {
    "layer_types": {"layer_types": ["sliding_attention", "compressed_sparse_attention",
                                    "heavily_compressed_attention", "compressed_sparse_attention",
                                    "sliding_attention"],
                    "compress_rates": {"compressed_sparse_attention": 4, "heavily_compressed_attention": 16}},
    "compress_ratios": {"compress_ratios": [0, 4, 128, 4, 128, 0]},
    "legacy_rates": {"compress_rate_csa": 3, "compress_rate_hca": 10},
    "default": {},
}


def read(config: dict, tmp_path) -> ModelSpec:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return parse_spec(path.read_text(), str(path))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_layers_and_rates_match_transformers(tmp_path, variant):
    config = {**TINY, **VARIANTS[variant]}
    theirs = AutoConfig.for_model(**config)
    spec = read(config, tmp_path)
    assert [str(k) for k in spec.layer_kinds] == [KINDS[t] for t in theirs.layer_types]
    attn = spec.attention
    assert (attn.csa_rate, attn.hca_rate) == (theirs.compress_rates["compressed_sparse_attention"],
                                              theirs.compress_rates["heavily_compressed_attention"])
    assert (attn.head_dim, attn.qk_rope_head_dim, spec.sliding_window) == (
        theirs.head_dim, theirs.qk_rope_head_dim, theirs.sliding_window)


def held_bytes(cache) -> int:
    """Every tensor the cache's layers hold, each once (a compressed layer's values *are* its keys)."""
    import torch

    seen, total = set(), 0
    for layer in cache.layers:
        for value in vars(layer).values():
            for t in value.values() if isinstance(value, dict) else [value]:
                if isinstance(t, torch.Tensor) and t.numel() > 1 and id(t) not in seen:
                    seen.add(id(t))
                    total += t.numel() * t.element_size()
    return total


@pytest.mark.parametrize("variant", ["layer_types", "compress_ratios", "legacy_rates"])
@pytest.mark.parametrize("kv_dtype", ["fp32", "bf16"])
def test_cache_bytes_match_transformers(tmp_path, variant, kv_dtype):
    """A tiny model saved and loaded back as users load one (from_pretrained: in bf16 the
    compressors' position bias stays fp32, and so do the last-window gates it is added to); after a
    prefill and after every decode step, through windows closing (rate 4, 16 / 3, 10) and the
    sliding window filling (8), the bytes of every tensor its cache holds equal kvcalc's
    --engine transformers figure."""
    import torch
    from transformers import AutoModelForCausalLM

    config = {**TINY, **VARIANTS[variant]}
    spec = read(config, tmp_path)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(AutoConfig.for_model(**config)).save_pretrained(tmp_path / "model")
    dtype = torch.float32 if kv_dtype == "fp32" else torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "model", dtype=dtype).eval()
    checked = 0
    for prefill in (3, 15, 30):
        with torch.no_grad():
            cache = model(torch.randint(0, 128, (1, prefill)), use_cache=True).past_key_values
            for length in range(prefill, prefill + 4):
                ours = footprint(spec, Options(length, kv_dtype=kv_dtype, engine="transformers")).total_bytes
                assert ours == held_bytes(cache), length
                checked += 1
                model(torch.randint(0, 128, (1, 1)), past_key_values=cache, use_cache=True)
    assert checked == 12


def test_flash_is_read_as_transformers_reads_it():
    path = PUBLISHED / "deepseek-v4-flash.json"
    config = json.loads(path.read_text())
    spec = parse_spec(path.read_text(), str(path))
    assert [str(k) for k in spec.layer_kinds] == [KINDS[t] for t in AutoConfig.for_model(**config).layer_types]
    assert {str(k): n for k, n in spec.layer_counts.items()} == {
        "sliding": 2, "compressed_sparse": 21, "heavily_compressed": 20}
    assert spec.mtp_layers == 1 and spec.sliding_window == 128


@pytest.mark.parametrize("name", ["deepseek-v4-flash", "deepseek-v4-pro"])
def test_the_catalog_holds_what_the_published_config_says(name):
    path = PUBLISHED / f"{name}.json"
    published = parse_spec(path.read_text(), str(path))
    ours = load_bundled(name)
    assert (published.layer_kinds, published.attention, published.sliding_window, published.mtp_layers,
            published.max_position_embeddings, published.hidden_size) == (
        ours.layer_kinds, ours.attention, ours.sliding_window, ours.mtp_layers,
        ours.max_position_embeddings, ours.hidden_size)


def flash_ideal_bytes(seq: int) -> int:
    """DeepSeek-V4-Flash in bf16, worked by hand: K = V 512 x 2 B on every layer's window of 128;
    on the 21 CSA layers floor(seq / 4) entries of 1,024 B and indexer keys of 132 B, room for an
    open window of 3 rows of kv and gate in two series (2 x 2 x 512 x 2 B, and 2 x 2 x 128 x 2 B for
    the indexer's) and the last window's 4 rows of kv and gate (512 and 128 wide); on the 20 HCA
    layers floor(seq / 128) entries, room for 127 rows of kv and gate (2 x 512 x 2 B)."""
    window = min(seq, 128) * 1024
    closed = seq >= 4
    csa = (window + seq // 4 * (1024 + 132) + min(seq, 3) * (4096 + 1024)
           + closed * 4 * (2 * 1024 + 2 * 256))
    hca = window + seq // 128 * 1024 + min(seq, 127) * 2048
    return 2 * window + 21 * csa + 20 * hca


@pytest.mark.parametrize("seq", [1, 3, 4, 127, 128, 1000, 131_072, 1 << 20])
def test_flash_ideal_figures(seq):
    assert footprint(load_bundled("deepseek-v4-flash"), Options(seq)).total_bytes == flash_ideal_bytes(seq)


def test_flash_at_a_million_tokens():
    """At 1M tokens the compressed entries are nearly all of it: 6.09 GiB in bf16, where DeepSeek-V3.2
    holds 76.5 GiB."""
    assert flash_ideal_bytes(1 << 20) == 6_542_955_520
    v32 = footprint(load_bundled("deepseek-v3.2"), Options(1 << 20)).total_bytes
    assert v32 == 78_324 * (1 << 20)


def test_tensor_parallelism_replicates_every_part():
    spec = load_bundled("deepseek-v4-flash")
    fp = footprint(spec, Options(4096, parallel=Parallel(tp=8)))
    assert fp.per_gpu_bytes == fp.total_bytes
    assert "replicated on 8 attention-TP ranks" in fp.notes[0]
    assert footprint(spec, Options(4096, parallel=Parallel(pp=2))).per_gpu_bytes < fp.total_bytes


def test_mha_equivalent_gives_every_head_its_own_k_and_v():
    spec = load_bundled("deepseek-v4-flash")
    from kvcalc.analytic import mha_equivalent

    mha = mha_equivalent(spec, Options(1000))
    assert mha.bytes_per_token == 2 * 64 * 512 * 2 * 43
    assert mha.total_bytes == 2 * 64 * 512 * 2 * (2 * 128 + 41 * 1000)  # two layers only slide


@pytest.mark.parametrize(("engine", "message"), [
    ("sglang", r"sglang@default: SGLang keeps DeepSeek-V4's sliding-window pages in its radix tree"),
    ("llama.cpp", r"how llama.cpp caches DeepSeek-V4 \(LLM_ARCH_DEEPSEEK4\) is not modelled"),
    ("reference", r"DeepSeek-V3's inference/model.py does not run DeepSeek-V4"),
    ("transformers@5.14", r"as transformers 5.23 caches it: --engine transformers"),
])
def test_engines_kvcalc_does_not_model_for_v4_are_refused(engine, message):
    with pytest.raises(OptionError, match=message):
        footprint(load_bundled("deepseek-v4-flash"), Options(1000, engine=engine))


@pytest.mark.parametrize(("options", "message"), [
    (Options(1000, mtp=True), r"--mtp: how deepseek-v4-flash's MTP layer caches"),
    (Options(1000, parallel=Parallel(tp=2, dcp=2)), r"--dcp 2: how DeepSeek-V4's compressed entries"),
    (Options(1000, block_size=16), r"--block-size 16: how pages hold DeepSeek-V4's compressed entries"),
    (Options(1000, kv_dtype="fp8_ds_mla"), r"--kv-dtype fp8_ds_mla: packs an MLA latent, but deepseek-v4-flash "
                                           r"uses CSA/HCA attention"),
])
def test_options_kvcalc_does_not_model_for_v4_are_refused(options, message):
    with pytest.raises(OptionError, match=message):
        footprint(load_bundled("deepseek-v4-flash"), options)


@pytest.mark.parametrize(("fields", "message"), [
    ({"num_key_value_heads": 8}, r"num_key_value_heads: 8: DeepSeek-V4 caches one K = V head"),
    ({"compress_ratios": [0, 4, 16, 4, 4]}, r"compress_ratios: .*: expected at least 5 entries of 0, 4 or 128"),
    ({"compress_ratios": [0, 4]}, r"compress_ratios: .*: expected at least 5 entries"),
    ({"layer_types": ["full_attention"] * 5}, r"layer_types: 'full_attention' is not supported \(kvcalc models "
                                              r"sliding_attention, compressed_sparse_attention"),
    ({"compress_rates": {"compressed_sparse_attention": "4"}},
     r"compress_rates.compressed_sparse_attention: '4': expected an integer"),
    ({"compress_rates": {"sparse": 4}}, r"compress_rates: \{'sparse': 4\}: expected compressed_sparse_attention"),
    ({"head_dim": None}, r"head_dim: required field is missing"),
    ({"partial_rotary_factor": 2}, r"partial_rotary_factor: 2: expected a number in \(0, 1\]"),
])
def test_configs_kvcalc_cannot_read_are_refused(tmp_path, fields, message):
    with pytest.raises(SpecError, match=message):
        read({**TINY, **fields}, tmp_path)


def test_defaults_are_said(tmp_path):
    config = {k: v for k, v in TINY.items() if k not in ("qk_rope_head_dim", "index_head_dim")}
    spec = read(config, tmp_path)
    assert spec.attention.qk_rope_head_dim == 4  # 32 x 64 / 512
    assert spec.attention.index_head_dim == 128
    assert "compress_rates.compressed_sparse_attention 4 (class default; absent from the config)" in spec.assumptions
    assert "index_head_dim 128 (class default; absent from the config)" in spec.assumptions


ATTN = CompressedAttention(num_heads=4, head_dim=32, qk_rope_head_dim=8, q_lora_rank=16, index_n_heads=2,
                           index_head_dim=16)


@pytest.mark.parametrize(("fields", "message"), [
    ({"layer_types": ("full", "compressed_sparse")}, r"1 layers are full, but compressed attention"),
    ({"layer_types": ("sliding", "compressed_sparse"), "sliding_window": None},
     r"2 layers are sliding but sliding_window is not set"),
    ({"layer_types": ("sliding", "heavily_compressed"),
      "attention": StandardAttention(num_heads=4, num_kv_heads=1, head_dim=32)},
     r"1 layers are heavily_compressed, which needs attention of kind compressed, not standard"),
    ({"layer_attention": {LayerKind.SLIDING: ATTN}}, r"layer_attention: compressed attention takes one shape"),
])
def test_the_spec_keeps_compressed_attention_consistent(fields, message):
    base = {"name": "t", "display_name": "t", "num_layers": 2, "hidden_size": 64, "attention": ATTN,
            "sliding_window": 8, "layer_types": ("sliding", "compressed_sparse")}
    with pytest.raises(ValueError, match=message):
        ModelSpec(**{**base, **fields})


def tiny_spec(kinds, csa: int, hca: int, window: int) -> ModelSpec:
    attn = CompressedAttention(num_heads=4, head_dim=16, qk_rope_head_dim=4, q_lora_rank=8, index_n_heads=2,
                               index_head_dim=8, csa_rate=csa, hca_rate=hca)
    return ModelSpec(name="t", display_name="t", num_layers=len(kinds), hidden_size=64, attention=attn,
                     sliding_window=window, layer_types=tuple(kinds))


@settings(max_examples=60, deadline=None)
@given(kinds=st.lists(st.sampled_from(["sliding", "compressed_sparse", "heavily_compressed"]), min_size=1,
                      max_size=4),
       csa=st.integers(1, 12), hca=st.integers(1, 40), window=st.integers(1, 30))
def test_the_peak_is_the_most_held_at_any_length_so_far(kinds, csa, hca, window):
    """transformers' cache shrinks when a window closes; what a sequence needs to grow to n tokens
    is the most it held on the way, found from O(lcm of the rates) lengths -- checked against every
    length (the ideal's buffers never shrink: its peak is its figure)."""
    spec = tiny_spec(kinds, csa, hca, window)
    hf, ideal = curve(spec, Options(1, engine="transformers")), curve(spec, Options(1))
    assert ideal.monotone
    most = 0
    for n in range(1, 3 * math.lcm(csa, hca) + 5):
        most = max(most, hf.per_gpu_bytes(n))
        assert hf.peak_per_gpu_bytes(n) == most, n
        assert ideal.peak_per_gpu_bytes(n) == ideal.per_gpu_bytes(n)


def test_the_longest_context_under_transformers_counts_the_peak():
    spec = tiny_spec(["heavily_compressed"], 4, 16, 8)
    hf = curve(spec, Options(1, engine="transformers"))
    budget = hf.per_gpu_bytes(47)  # the open window of 16 is full at 47 and empties at 48
    assert hf.per_gpu_bytes(48) < budget < hf.per_gpu_bytes(63)
    longest = longest_context(hf, budget)
    assert hf.peak_per_gpu_bytes(longest) <= budget < hf.peak_per_gpu_bytes(longest + 1)
    assert longest == max(n for n in range(1, 100) if all(hf.per_gpu_bytes(m) <= budget for m in range(1, n + 1)))


def test_show_explains_each_part_and_rule(cli):
    status, out, _ = cli("show", "deepseek-v4-flash", "--seq", "1001", "--explain", "--engine", "transformers")
    assert status == 0
    assert ("compressed_sparse layers (one entry per 4 tokens): (512 + 128) × 2 B × 21 layers = 26,880 B per "
            "entry; per token 26,880 / 4 = 6,720 B/token") in out
    assert "heavily_compressed layers (compressor's open window of 128): 40,960 B × (1,001 mod 128) = 105 rows" in out
    assert "compressor gate, last window: 512 fp32 values × 4 B = 2,048 B (fp32 whatever the cache dtype)" in out
    assert "DeepSeek-V4 (DeepseekV4HCACache / DeepseekV4CSACache)" in out


def test_an_engine_kvcalc_does_not_model_exits_2(cli):
    status, _, err = cli("show", "deepseek-v4-pro", "--engine", "vllm", "--seq", "4k")
    assert status == 2 and "DeepSeek-V4" in err and "Traceback" not in err


@pytest.mark.parametrize("name", ["deepseek-v4-flash", "deepseek-v4-pro"])
def test_import_writes_a_spec_that_reads_back_the_same(cli, tmp_path, name):
    target = tmp_path / "spec.yaml"
    source = PUBLISHED / f"{name}.json"
    assert cli("import", str(source), "-o", str(target))[0] == 0
    spec, again = parse_spec(source.read_text(), str(source)), parse_spec(target.read_text(), str(target))
    assert again.attention == spec.attention and again.layer_kinds == spec.layer_kinds
    for engine in (None, "transformers"):
        options = Options(50_001, engine=engine)
        assert footprint(again, options).total_bytes == footprint(spec, options).total_bytes


# vLLM 0.33 (FlashMLA on Hopper) packs V4-Flash into five groups sharing blocks of 1,002,240 B: the
# 43 windows' K = V split 22 / 21 (pages of 64 tokens, 37,440 B), the 62 compressed-entry and
# indexer pages (256 tokens; the widest: 21 x 37,440 + 20 x 1,728 + 21 x 8,640), the 42 CSA state
# pages (4 tokens, window 8) and the 20 HCA state pages (8 tokens, window 128).
FLASH_BLOCK = 21 * 37_440 + 20 * 1_728 + 21 * 8_640
FLASH_GROUPS = [(64, 128), (64, 128), (256, None), (4, 8), (8, 128)]


def held_blocks(tokens: int, block: int, window: int | None) -> int:
    """Blocks a group holds while a sequence's last token is computed, as vLLM's managers count
    them (single_type_kv_cache_manager.py): cdiv(N, B) allocated for N = tokens slots, less the
    blocks wholly before the window of the P = tokens - 1 processed (skipped: P - W + 1)."""
    allocated = -(-tokens // block)
    return allocated if window is None else allocated - max(0, tokens - 1 - window + 1) // block


def vllm(seq: int, **options) -> Options:
    return Options(seq, kv_dtype="fp8_ds_mla", engine="vllm", **options)


@settings(max_examples=80, deadline=None, derandomize=True)
@given(seq=st.integers(1, 5000), batch=st.integers(1, 3))
def test_vllm_holds_whole_blocks_of_every_group(seq, batch):
    spec = load_bundled("deepseek-v4-flash")
    blocks = sum(held_blocks(seq, block, window) for block, window in FLASH_GROUPS)
    assert footprint(spec, vllm(seq, batch=batch)).total_bytes == blocks * FLASH_BLOCK * batch


def test_vllm_figures_at_1000_and_128k_tokens():
    spec = load_bundled("deepseek-v4-flash")
    assert FLASH_BLOCK == 1_002_240
    assert footprint(spec, vllm(1000)).total_bytes == (3 + 3 + 4 + 2 + 16) * 1_002_240
    assert footprint(spec, vllm(131_072)).total_bytes == (2 + 2 + 512 + 2 + 16) * 1_002_240


def test_vllm_packs_v4_pro_in_wider_blocks():
    """61 layers: the windows split 31 / 30, the 91 entry pages the widest group."""
    from kvcalc.packing import groups

    spec = load_bundled("deepseek-v4-pro")
    found, block = groups(spec.attention, spec.layer_kinds, spec.sliding_window)
    assert block == 30 * 37_440 + 31 * 1_728 + 30 * 8_640 == 1_435_968
    assert sorted(g.page_bytes for g in found) == sorted([31 * 37_440, 30 * 37_440, block,
                                                          30 * (32_832 + 8_640), 31 * 32_832])
    seq = 50_000
    blocks = 2 * held_blocks(seq, 64, 128) + held_blocks(seq, 256, None) + held_blocks(seq, 4, 8) + held_blocks(
        seq, 8, 128)
    assert footprint(spec, vllm(seq)).total_bytes == blocks * block


def test_vllm_packs_each_pipeline_stage_apart():
    """pp 2: 22 and 21 layers, each stage its own groups; the second's windows split 11 / 10 and
    its entry pages (11 CSA, 10 HCA, 11 indexer) are the widest."""
    spec = load_bundled("deepseek-v4-flash")
    fp = footprint(spec, vllm(131_072, parallel=Parallel(pp=2)))
    second = 11 * 37_440 + 10 * 1_728 + 11 * 8_640
    first = 10 * 37_440 + 10 * 1_728 + 10 * 8_640  # 22 layers: 2 only slide
    assert fp.per_gpu_bytes == (2 + 2 + 512 + 2 + 16) * max(first, second)
    assert footprint(spec, vllm(131_072, parallel=Parallel(tp=8))).per_gpu_bytes == fp.total_bytes


@pytest.mark.parametrize(("options", "message"), [
    (Options(1000, engine="vllm"), r"--kv-dtype bf16: vLLM's FlashMLA \(Hopper\) stores DeepSeek-V4 as fp8_ds_mla"),
    (vllm(1000, block_size=64), r"--block-size 64: vLLM runs DeepSeek-V4 with blocks of 256 tokens"),
])
def test_what_vllm_does_not_run_is_refused(options, message):
    with pytest.raises(OptionError, match=message):
        footprint(load_bundled("deepseek-v4-flash"), options)


def test_vllm_runs_only_the_published_shape():
    spec = tiny_spec(["sliding", "compressed_sparse"], 4, 128, 8)
    with pytest.raises(OptionError, match=r"vLLM runs DeepSeek-V4 with head_dim 512 \(64 RoPE\)"):
        footprint(spec, vllm(100))


def test_vllm_explains_pages_and_padding(cli):
    status, out, _ = cli("show", "deepseek-v4-flash", "--engine", "vllm", "--kv-dtype", "fp8_ds_mla", "--seq", "1000",
                         "--explain")
    assert status == 0
    assert "K = V: a 37,440-B page (padded to a multiple of 576 B) of 64 tokens = 585 B per token" in out
    assert ("block padding beside 20 compressor state pages: 345,600 B of each 8-token block beyond the group's "
            "pages = 43,200 B per token") in out
    assert "7 entries → 8 (4 pages of 256 tokens, 2 entries each)" in out
    assert "total: 28,062,720 B" in out


def test_fit_counts_sequences_in_whole_blocks():
    from kvcalc.capacity import fit

    spec = load_bundled("deepseek-v4-flash")
    result = fit(spec, vllm(131_072, parallel=Parallel(tp=8)), gpu_name="H200", gpu_mem_bytes=141 * 10**9)
    # vLLM admits on its reservation (docs/facts/vllm-0.33-deepseek-v4.md section 4), M = 2 x 8,192:
    # G0, G1: cdiv(127 + M, 64) + 1; G2: cdiv(L, 256); G3: cdiv(7 + M, 4) + 1; G4: cdiv(127 + M, 8) + 1
    reserved = 2 * 259 + 512 + 4099 + 2065
    blocks = result.kv_budget_bytes_per_gpu // FLASH_BLOCK  # replicated on every TP rank
    assert result.request_bytes_per_gpu == reserved * FLASH_BLOCK
    assert result.max_concurrency == (blocks - 1) // reserved > 0
    assert result.engine_log == (f"GPU KV cache size: {int(blocks / reserved * 131_072):,} tokens, Maximum "
                                 f"concurrency for 131,072 tokens per request: {blocks / reserved:.2f}x")
    assert result.page_tokens == 1
