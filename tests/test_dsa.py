"""DeepSeek Sparse Attention (DeepSeek-V3.2): the lightning indexer's key cached beside the latent.

Figures from the engines' source (vLLM 0.33 models/deepseek_v32/attention.py: 128 fp8 values + one
fp32 scale = 132 B, uint8, one head, max_tp_shards=1; SGLang 0.5.23 mem_cache/index_key_cache.py;
DeepSeek-V3.2-Exp inference/model.py: k_cache fp8 + k_scale_cache fp32 per 128). transformers keeps
the keys in the model dtype (tests/test_families.py checks that against its real cache).
"""

import json

import pytest

from kvcalc.analytic import Options, footprint
from kvcalc.catalog import load_bundled
from kvcalc.errors import OptionError
from kvcalc.parallel import Parallel

V32 = load_bundled("deepseek-v3.2")


def per_token(**options) -> int:
    return footprint(V32, Options(1, **options)).bytes_per_token


@pytest.mark.parametrize(
    ("options", "bytes_per_token"),
    [
        ({}, (1_152 + 132) * 61),  # engine-neutral: DeepSeek's indexer format
        ({"engine": "vllm"}, 78_324),  # (1,152 + 132) x 61, the published figure
        ({"engine": "vllm", "kv_dtype": "fp8_ds_mla"}, 48_068),  # (656 + 132) x 61
        ({"engine": "vllm", "kv_dtype": "fp8_ds_mla", "mtp": True}, 48_856),  # x 62: the MTP layer too
        ({"engine": "vllm", "mtp": True}, 79_608),
        ({"engine": "sglang"}, 78_324),
        ({"engine": "sglang", "kv_dtype": "fp8_ds_mla"}, 48_068),
        ({"engine": "reference"}, 78_324),
        ({"engine": "transformers"}, (1_152 + 256) * 61),  # indexer keys in bf16
    ],
)
def test_bytes_per_token(options, bytes_per_token):
    assert per_token(**options) == bytes_per_token


def test_the_indexer_pages_with_the_latent_in_64_token_pages():
    for engine in ("vllm", "vllm@default", "sglang"):  # SGLang's default page is 1; DSA forces 64
        fp = footprint(V32, Options(100, engine=engine))
        assert fp.total_bytes == 78_324 * 128


def test_the_indexer_is_replicated_on_every_tp_rank():
    fp = footprint(V32, Options(4096, engine="vllm", parallel=Parallel(tp=8)))
    assert fp.gpu_bytes_per_token == fp.bytes_per_token == 78_324
    assert fp.notes[0].startswith("latent and DSA indexer keys replicated on 8 attention-TP ranks")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"engine": "llama.cpp"}, r"llama.cpp@2026: does not run DeepSeek Sparse Attention"),
        ({"engine": "vllm@no-mla"}, r"vllm@no-mla: does not run DeepSeek Sparse Attention"),
        ({"engine": "transformers@5.14"}, r"does not run DeepSeek Sparse Attention"),
        ({"engine": "reference@naive"}, r"does not run DeepSeek Sparse Attention"),
        ({"engine": "vllm", "kv_dtype": "fp8"}, r"fp8_ds_mla \(656 B\) on Hopper and as plain fp8 \(576 B\)"),
        ({"engine": "sglang", "kv_dtype": "fp16"}, r"latent in bf16, fp8_ds_mla only"),
        ({"engine": "vllm", "block_size": 16}, r"pages of 64 tokens"),
        ({"engine": "vllm", "parallel": Parallel(tp=8, dcp=2)}, r"--dcp 2: how vllm@flashmla splits"),
    ],
)
def test_what_no_engine_runs_is_refused(options, message):
    with pytest.raises(OptionError, match=message):
        footprint(V32, Options(1, **options))


def test_explain_names_the_indexer_format(cli):
    status, out, _ = cli("show", "deepseek-v3.2", "--explain", "--engine", "vllm", "--kv-dtype", "fp8_ds_mla")
    assert status == 0
    assert "  indexer key: 128 fp8 values × 1 B + 1 fp32 scale × 4 B = 132 B" in out
    assert "  (528 + 128 + 132) B × 61 layers = 48,068 B/token" in out


def test_measure_builds_the_indexer(cli):
    """One real DSA layer at 256 tokens: the bf16 latent and rope key (1,152 B) and the indexer's fp8
    key with its fp32 scale (132 B) per token, measured equal to the formula."""
    status, out, _ = cli("measure", "deepseek-v3.2", "--seq", "256", "--device", "cpu", "-f", "json")
    assert status == 0
    row = json.loads(out)["rows"][0]
    assert row["measured_bytes"] == row["analytic_bytes"] == (1152 + 132) * 256


def test_an_indexer_needs_both_fields_and_a_low_rank_query(spec_file, cli):
    text = spec_file().read_text()
    mla = text.replace(
        "  kind: standard\n  num_heads: 8\n  num_kv_heads: 2\n  head_dim: 8\n",
        "  kind: mla\n  num_heads: 8\n  q_lora_rank: null\n  kv_lora_rank: 32\n  qk_nope_head_dim: 16\n"
        "  qk_rope_head_dim: 8\n  v_head_dim: 16\n  index_head_dim: 32\n  index_n_heads: 4\n",
    )
    status, _, err = cli("show", str(spec_file(mla)))
    assert status == 2 and "the DSA indexer reads the low-rank query; q_lora_rank is null" in err


def test_vllm_nvfp4_ds_mla_on_blackwell():
    """vLLM 0.33's nvfp4_ds_mla (flashmla_sparse.py; mla_attention.py state_content_bytes 352): 512
    e2m1 latent values (256 B) + 32 fp8 scales + 64 fp8 rope values = 352 B, beside the indexer's
    132 B; FlashMLA's sparse backend only, so DSA models only."""
    fp = footprint(load_bundled("deepseek-v3.2"), Options(1000, kv_dtype="nvfp4_ds_mla", engine="vllm"))
    assert fp.bytes_per_token == (352 + 132) * 61 == 29_524
    with pytest.raises(OptionError, match=r"--kv-dtype nvfp4_ds_mla: vLLM serves it with FlashMLA's sparse"):
        footprint(load_bundled("deepseek-v3"), Options(1000, kv_dtype="nvfp4_ds_mla", engine="vllm"))
    with pytest.raises(OptionError, match=r"sglang@default caches in .* only"):
        footprint(load_bundled("deepseek-v3.2"), Options(1000, kv_dtype="nvfp4_ds_mla", engine="sglang"))


def test_plain_nvfp4_is_blocks_of_16_values_in_9_bytes():
    fp = footprint(load_bundled("llama-3.1-8b"), Options(1000, kv_dtype="nvfp4"))
    assert fp.bytes_per_token == 2 * (8 * 128 // 16) * 9 * 32  # K and V: 64 blocks of 9 B each, 32 layers
