"""GGUF files -> specs, read as llama.cpp reads them (kvcalc/gguf.py).

Each test writes a tiny GGUF file with llama.cpp's own ``gguf`` package (real key names, a few tiny
tensors) and checks the spec and, through ``footprint``, the bytes llama.cpp's cache holds, worked
out by hand from its rules: every layer's cache padded to 256 cells (flash attention), sliding
layers ``pad(min(n_ctx, n_swa + 512), 256)`` cells for one sequence, bf16 = 2 bytes.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

gguf = pytest.importorskip("gguf")
np = pytest.importorskip("numpy")

from kvcalc.analytic import Options, footprint  # noqa: E402
from kvcalc.errors import OptionError, SpecError  # noqa: E402
from kvcalc.gguf import _GENERIC_READS, _MLA_READS, _NEUTRAL, _WINDOW_READS, spec_from_gguf  # noqa: E402

Q8_0 = gguf.GGMLQuantizationType.Q8_0


def pad(cells: int, to: int = 256) -> int:
    return -(-cells // to) * to


def write(tmp_path, arch: str, keys: dict, *, name: str = "model.gguf", tensors: dict | None = None):
    """A GGUF file of ``arch`` holding ``keys`` (``{arch}.`` is prefixed to keys that are not
    ``general.`` or ``split.`` ones) and ``tensors`` (default: three tiny ones, f32, f16 and q8_0)."""
    path = tmp_path / name
    writer = gguf.GGUFWriter(path, arch)
    for key, value in keys.items():
        full = key if key.startswith(("general.", "split.")) else f"{arch}.{key}"
        if isinstance(value, bool):
            writer.add_bool(full, value)
        elif isinstance(value, int):
            writer.add_uint32(full, value)
        elif isinstance(value, float):
            writer.add_float32(full, value)
        elif isinstance(value, str):
            writer.add_string(full, value)
        else:
            writer.add_array(full, value)
    for tensor_name, array in (TENSORS if tensors is None else tensors).items():
        raw = Q8_0 if array.dtype == np.uint8 else None
        writer.add_tensor(tensor_name, array, raw_dtype=raw)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


TENSORS = {
    "token_embd.weight": np.zeros((10, 16), dtype=np.float32),  # 160 elements, 640 B
    "blk.0.attn_q.weight": np.zeros((16, 16), dtype=np.float16),  # 256 elements, 512 B
    "blk.0.ffn_up.weight": np.zeros((3, 2 * 34), dtype=np.uint8),  # q8_0: 3 rows of 64 = 192, 204 B
}
TENSOR_ELEMENTS = 160 + 256 + 192
TENSOR_BYTES = 640 + 512 + 3 * 2 * 34

LLAMA = {
    "general.name": "Tiny Llama 3", "block_count": 4, "context_length": 8192, "embedding_length": 64,
    "feed_forward_length": 128, "attention.head_count": 8, "attention.head_count_kv": 2,
    "attention.key_length": 16, "attention.value_length": 16, "rope.dimension_count": 16,
    "rope.freq_base": 500000.0, "attention.layer_norm_rms_epsilon": 1e-5, "vocab_size": 10,
}


def kv_bytes(layers: int, cells: int, per_token_layer: int, dtype_bytes: int = 2) -> int:
    return layers * cells * per_token_layer * dtype_bytes


# -- architectures read -------------------------------------------------------------------------


def test_llama_gqa(tmp_path):
    spec = spec_from_gguf(write(tmp_path, "llama", LLAMA))
    attn = spec.attention
    assert (spec.name, spec.display_name, spec.default_engine) == ("tiny-llama-3", "Tiny Llama 3", "llama.cpp")
    assert (spec.num_layers, spec.hidden_size, spec.max_position_embeddings) == (4, 64, 8192)
    assert (attn.num_heads, attn.num_kv_heads, attn.head_dim, attn.v_head_dim) == (8, 2, 16, None)
    assert spec.layer_kinds == ("full",) * 4 and spec.architecture is None
    assert (spec.weights_bytes, spec.params) == (TENSOR_BYTES, TENSOR_ELEMENTS)
    assert spec.source == str(tmp_path / "model.gguf")
    f = footprint(spec, Options(seq_len=1000))
    assert f.engine.name == "llama.cpp@2026"  # the spec's own engine, --engine not given
    assert f.total_bytes == kv_bytes(4, pad(1000), 2 * 2 * 16)  # K and V, 2 KV heads x 16


def test_weights_bytes_equal_the_reader_tensor_table(tmp_path):
    path = write(tmp_path, "llama", LLAMA)
    reader = gguf.GGUFReader(path)
    spec = spec_from_gguf(path)
    assert spec.weights_bytes == sum(int(t.n_bytes) for t in reader.tensors) == TENSOR_BYTES
    assert spec.params == sum(int(t.n_elements) for t in reader.tensors) == TENSOR_ELEMENTS


def test_head_size_defaults_to_embedding_over_heads_said_so(tmp_path):
    keys = {k: v for k, v in LLAMA.items() if not k.startswith(("attention.key", "attention.value", "rope.dim"))}
    spec = spec_from_gguf(write(tmp_path, "llama", keys))
    assert spec.attention.head_dim == 8  # 64 / 8, as llama.cpp's load_hparams defaults it
    assert any("key_length 8 = embedding_length / head_count" in a for a in spec.assumptions)


def test_name_from_the_file_or_given(tmp_path):
    keys = {k: v for k, v in LLAMA.items() if k != "general.name"}
    path = write(tmp_path, "llama", keys, name="Llama-3.1-8B-Q4_K_M.gguf")
    assert spec_from_gguf(path).name == "llama-3.1-8b-q4_k_m"
    assert spec_from_gguf(path, name="mine").name == "mine"


@pytest.mark.parametrize("arch", ["qwen2", "qwen2moe", "qwen3", "qwen3moe"])
def test_qwen_every_layer_full(tmp_path, arch):
    keys = {**LLAMA, "attention.head_count": 4, "attention.head_count_kv": 4, "attention.key_length": 32,
            "attention.value_length": 32, "rope.dimension_count": 32, "expert_count": 4}
    spec = spec_from_gguf(write(tmp_path, arch, keys))
    assert (spec.attention.variant, spec.attention.head_dim, spec.layer_kinds) == ("MHA", 32, ("full",) * 4)
    assert footprint(spec, Options(seq_len=300)).total_bytes == kv_bytes(4, 512, 2 * 4 * 32)


def test_phi3_window_is_off_in_llama_cpp(tmp_path):
    keys = {**LLAMA, "attention.head_count_kv": 8, "attention.sliding_window": 2047}
    spec = spec_from_gguf(write(tmp_path, "phi3", keys))
    assert spec.layer_kinds == ("full",) * 4 and spec.sliding_window is None
    assert any("llama.cpp turns phi3.attention.sliding_window 2047 off" in a for a in spec.assumptions)
    assert footprint(spec, Options(seq_len=5000)).total_bytes == kv_bytes(4, pad(5000), 2 * 8 * 16)


GEMMA = {**LLAMA, "general.name": "Tiny Gemma", "block_count": 12, "attention.head_count": 4, "attention.head_count_kv": 2,
         "attention.key_length": 32, "attention.value_length": 32, "rope.dimension_count": 32}


def test_gemma2_alternates_from_a_sliding_layer_0_with_the_default_window(tmp_path):
    spec = spec_from_gguf(write(tmp_path, "gemma2", GEMMA))
    assert spec.layer_pattern == ("sliding", "full") and spec.sliding_window == 4096
    assert any("gemma2.attention.sliding_window 4096 (absent" in a for a in spec.assumptions)
    assert spec.architecture == "Gemma2ForCausalLM"
    f = footprint(spec, Options(seq_len=8192))
    per_layer = 2 * 2 * 32  # K and V, 2 KV heads x 32
    # sliding: pad(min(8192, 4096 x 1 + 512), 256) = 4608 cells; full: 8192
    assert f.total_bytes == kv_bytes(6, 4608, per_layer) + kv_bytes(6, 8192, per_layer)


def test_gemma3_five_sliding_then_one_full(tmp_path):
    spec = spec_from_gguf(write(tmp_path, "gemma3", {**GEMMA, "attention.sliding_window": 1024}))
    assert spec.layer_pattern == ("sliding",) * 5 + ("full",) and spec.sliding_window == 1024
    f = footprint(spec, Options(seq_len=4000))
    per_layer = 2 * 2 * 32
    assert f.total_bytes == kv_bytes(10, pad(1024 + 512), per_layer) + kv_bytes(2, pad(4000), per_layer)


@pytest.mark.parametrize(("pattern", "expected"), [
    (4, ("sliding", "sliding", "sliding", "full")),
    (0, ("sliding",)),  # set_swa_pattern(0): every layer slides
    ([i % 6 < 5 for i in range(12)], ("sliding",) * 5 + ("full",)),  # a list that says what llama.cpp does
])
def test_gemma3_sliding_window_pattern(tmp_path, pattern, expected):
    keys = {**GEMMA, "attention.sliding_window": 1024, "attention.sliding_window_pattern": pattern}
    assert spec_from_gguf(write(tmp_path, "gemma3", keys)).layer_pattern == expected


def test_gemma2_pattern_1_leaves_every_layer_full(tmp_path):
    spec = spec_from_gguf(write(tmp_path, "gemma2", {**GEMMA, "attention.sliding_window_pattern": 1}))
    assert spec.layer_kinds == ("full",) * 12 and spec.sliding_window is None


def test_gemma3_without_a_window_is_all_full(tmp_path):
    spec = spec_from_gguf(write(tmp_path, "gemma3", GEMMA))
    assert spec.layer_kinds == ("full",) * 12 and spec.sliding_window is None
    assert any("every layer full: no gemma3.attention.sliding_window" in a for a in spec.assumptions)


def test_gpt_oss_even_layers_slide(tmp_path):
    keys = {**LLAMA, "attention.head_count": 8, "attention.head_count_kv": 2, "attention.key_length": 8,
            "attention.value_length": 8, "attention.sliding_window": 128, "expert_count": 4,
            "expert_used_count": 2, "expert_feed_forward_length": 32, "rope.scaling.type": "yarn"}
    spec = spec_from_gguf(write(tmp_path, "gpt-oss", keys))
    assert spec.layer_kinds == ("sliding", "full") * 2 and spec.sliding_window == 128
    assert spec.architecture == "GptOssForCausalLM"
    f = footprint(spec, Options(seq_len=10_000))
    per_layer = 2 * 2 * 8
    assert f.total_bytes == kv_bytes(2, pad(128 + 512), per_layer) + kv_bytes(2, pad(10_000), per_layer)


DEEPSEEK_MLA = {
    "general.name": "Tiny DeepSeek", "block_count": 3, "nextn_predict_layers": 1, "context_length": 16384,
    "embedding_length": 64, "attention.head_count": 4, "attention.head_count_kv": 1,
    "attention.q_lora_rank": 24, "attention.kv_lora_rank": 32, "rope.dimension_count": 8,
    "attention.key_length": 40, "attention.value_length": 32,  # latent + rope, latent
    "attention.key_length_mla": 24, "attention.value_length_mla": 16,  # nope 16 + rope 8, v 16
    "leading_dense_block_count": 1, "expert_count": 4, "expert_used_count": 2, "expert_shared_count": 1,
    "expert_feed_forward_length": 32, "expert_weights_scale": 2.5, "expert_gating_func": 2,
    "rope.scaling.yarn_log_multiplier": 0.1,
}


def test_deepseek2_mla_layout_caches_the_latent(tmp_path):
    spec = spec_from_gguf(write(tmp_path, "deepseek2", DEEPSEEK_MLA))
    attn = spec.attention
    assert (spec.num_layers, spec.mtp_layers) == (2, 1)  # block_count counts the MTP layer
    assert (attn.variant, attn.num_heads, attn.q_lora_rank, attn.kv_lora_rank) == ("MLA", 4, 24, 32)
    assert (attn.qk_nope_head_dim, attn.qk_rope_head_dim, attn.v_head_dim) == (16, 8, 16)
    f = footprint(spec, Options(seq_len=1000))
    assert (f.engine.name, f.layout) == ("llama.cpp@2026", "latent")
    assert f.total_bytes == kv_bytes(2, 1024, 32 + 8)  # K = latent + rope only (has_v = !is_mla)
    f2025 = footprint(spec, Options(seq_len=1000, engine="llama.cpp@2025"))
    assert f2025.total_bytes == kv_bytes(2, 1024, 32 + 8 + 32)  # and V = the latent again
    assert footprint(spec, Options(seq_len=1000, mtp=True)).total_bytes == kv_bytes(3, 1024, 40)


def test_deepseek2_lite_has_a_plain_query_projection(tmp_path):
    keys = {k: v for k, v in DEEPSEEK_MLA.items() if k not in ("attention.q_lora_rank", "nextn_predict_layers")}
    spec = spec_from_gguf(write(tmp_path, "deepseek2", keys))
    assert (spec.attention.q_lora_rank, spec.num_layers, spec.mtp_layers) == (None, 3, 0)


def test_deepseek2_before_the_mla_layout_is_cached_decompressed(tmp_path):
    keys = {k: v for k, v in DEEPSEEK_MLA.items() if not k.endswith("_mla") and k != "nextn_predict_layers"}
    keys.update({"attention.head_count_kv": 4, "attention.key_length": 24, "attention.value_length": 16})
    spec = spec_from_gguf(write(tmp_path, "deepseek2", keys))
    attn = spec.attention
    assert (attn.kind, attn.num_heads, attn.num_kv_heads, attn.head_dim, attn.v_head_dim) == (
        "standard", 4, 4, 24, 16)
    assert any("before llama.cpp's MLA layout" in a for a in spec.assumptions)
    f = footprint(spec, Options(seq_len=1000))
    assert f.total_bytes == kv_bytes(3, 1024, 4 * (24 + 16))  # per-head K 24 and V 16


# -- per-layer head counts ----------------------------------------------------------------------


def test_per_layer_head_counts_that_agree_are_one_value(tmp_path):
    keys = {**LLAMA, "attention.head_count": [8] * 4, "attention.head_count_kv": [2] * 4}
    assert spec_from_gguf(write(tmp_path, "llama", keys)).attention.num_kv_heads == 2


def test_per_layer_kv_heads_that_differ_by_kind_are_layer_attention(tmp_path):
    kv = [2 if i % 6 < 5 else 1 for i in range(12)]
    keys = {**GEMMA, "attention.sliding_window": 1024, "attention.head_count_kv": kv}
    spec = spec_from_gguf(write(tmp_path, "gemma3", keys))
    assert spec.attention.num_kv_heads == 1  # the full layers'
    assert spec.attention_for("sliding").num_kv_heads == 2
    with pytest.raises(OptionError, match="llama.cpp"):  # llama.cpp@2026 does not take shapes per kind
        footprint(spec, Options(seq_len=100))


def test_sliding_layers_take_the_swa_head_sizes(tmp_path):
    keys = {**GEMMA, "attention.sliding_window": 1024, "attention.key_length_swa": 16,
            "attention.value_length_swa": 16}
    spec = spec_from_gguf(write(tmp_path, "gemma3", keys))
    assert (spec.attention.head_dim, spec.attention_for("sliding").head_dim) == (32, 16)


# -- refusals: one line naming the file, the key and the value ----------------------------------


def refused(path, match: str) -> str:
    with pytest.raises(SpecError, match=match) as info:
        spec_from_gguf(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(path))
    return message


@pytest.mark.parametrize(("arch", "keys", "match"), [
    ("mamba", {}, r"general.architecture: 'mamba': kvcalc does not read"),
    ("gptoss", {}, r"general.architecture: 'gptoss'"),  # ollama's name; llama.cpp's is gpt-oss
    ("llama", {"ssm.conv_kernel": 4}, r"llama.ssm.conv_kernel: 4: a recurrent state"),
    ("llama", {"wkv.head_size": 64}, r"llama.wkv.head_size: 64: a recurrent state"),
    ("llama", {"attention.sliding_window": 4096}, r"llama.attention.sliding_window: 4096: a window, which "
     r"llama.cpp's llama does not read"),
    ("qwen2", {"attention.kv_lora_rank": 512}, r"qwen2.attention.kv_lora_rank: 512: latent attention"),
    ("llama", {"nextn_predict_layers": 1}, r"llama.nextn_predict_layers: 1: MTP layers"),
    ("gemma3", {"attention.shared_kv_layers": 2}, r"gemma3.attention.shared_kv_layers: 2: layers sharing"),
    ("deepseek2", {"attention.indexer.key_length": 128}, r"deepseek2.attention.indexer.key_length: 128: a DSA"),
    ("gemma3", {"mm.tokens_per_image": 256}, r"gemma3.mm.tokens_per_image: 256: a vision tower packed"),
    ("llama", {"frobnicate_layers": 3}, r"llama.frobnicate_layers: 3: kvcalc does not know what it does"),
    ("llama", {"attention.causal": False}, r"llama.attention.causal: False: a non-causal"),
    ("llama", {"general.type": "adapter"}, r"general.type: 'adapter': not a model"),
    ("llama", {"split.count": 2}, r"split.count: 2: the weights span several files"),
])
def test_refused_keys(tmp_path, arch, keys, match):
    base = DEEPSEEK_MLA if arch == "deepseek2" else GEMMA if arch == "gemma3" else LLAMA
    refused(write(tmp_path, arch, {**base, **keys}), match)


@pytest.mark.parametrize(("arch", "change", "match"), [
    ("llama", {"block_count": None}, r"llama.block_count: required key is missing"),
    ("llama", {"context_length": None}, r"llama.context_length: required key is missing"),
    ("llama", {"attention.head_count": "eight"}, r"llama.attention.head_count: 'eight': expected an integer"),
    ("llama", {"attention.head_count_kv": 3}, r"head_count_kv: 3: does not divide 8 heads"),
    ("llama", {"attention.head_count_kv": [2, 2, 2]}, r"head_count_kv: \[2, 2, 2\]: lists 3 values but "
     r"llama.block_count is 4"),
    ("llama", {"attention.head_count_kv": [2, 0, 2, 2]}, r"head_count_kv: \[2, 0, 2, 2\]: layer 1 has no "
     r"attention heads"),
    ("llama", {"attention.head_count": [8, 8, 4, 8]}, r"llama.attention.head_count: \[8, 8, 4, 8\]: differs "
     r"between the full layers; kvcalc models one attention shape per kind of layer"),
    ("llama", {"attention.head_count_kv": [2, 1, 2, 2]}, r"head_count_kv: \[2, 1, 2, 2\]: differs between "
     r"the full layers"),
    ("llama", {"rope.dimension_count": 8}, r"llama.rope.dimension_count: 8: llama.cpp's llama requires it "
     r"to equal key_length 16"),
    ("llama", {"attention.key_length_swa": 8}, r"llama.attention.key_length_swa: 8: differs from key_length "
     r"16, but no layer"),
    ("gpt-oss", {}, r"gpt-oss.attention.sliding_window: required key is missing"),
    ("gemma2", {"attention.sliding_window": 0}, r"gemma2.attention.sliding_window: 0: must be positive"),
    ("gemma3", {"attention.sliding_window_pattern": 4}, r"sliding_window_pattern: 4: given without a window"),
    ("gemma3", {"attention.sliding_window": 1024, "attention.sliding_window_pattern": [True, False] * 6},
     r"sliding_window_pattern: \[True, False, .*\]: llama.cpp's gemma3 ignores a per-layer list"),
    ("gemma3", {"attention.sliding_window": 9000}, r"gemma3.attention.sliding_window: 9000: exceeds "
     r"gemma3.context_length 8192"),
    ("deepseek2", {"attention.head_count_kv": 4}, r"deepseek2.attention.head_count_kv: 4: llama.cpp's MLA "
     r"layout caches one latent KV head"),
    ("deepseek2", {"attention.key_length": 24}, r"deepseek2.attention.key_length: 24: llama.cpp's MLA layout "
     r"caches 40 here \(kv_lora_rank 32 \+ rope 8\)"),
    ("deepseek2", {"attention.value_length_mla": None}, r"deepseek2.attention.value_length_mla: required key "
     r"is missing"),
    ("deepseek2", {"rope.dimension_count": None}, r"deepseek2.rope.dimension_count: required key is missing"),
    ("deepseek2", {"nextn_predict_layers": 3}, r"deepseek2.nextn_predict_layers: 3: leaves no layer"),
])
def test_refused_values(tmp_path, arch, change, match):
    base = {"deepseek2": DEEPSEEK_MLA, "llama": LLAMA}.get(arch, GEMMA)
    keys = {k: v for k, v in {**base, **change}.items() if v is not None}
    refused(write(tmp_path, arch, keys), match)


def test_not_gguf_truncated_empty_or_missing(tmp_path):
    text = tmp_path / "config.gguf"
    text.write_text('{"model_type": "llama"}')
    refused(text, r"config.gguf: not a GGUF file \(it does not start with the GGUF magic\)")
    whole = write(tmp_path, "llama", LLAMA).read_bytes()
    for size in (6, 200, len(whole) - 40):  # in the header, in the metadata, in the last tensor
        cut = tmp_path / f"cut{size}.gguf"
        cut.write_bytes(whole[:size])
        refused(cut, rf"cut{size}.gguf: a truncated or corrupt GGUF file \({size:,} bytes; the gguf reader: ")
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    refused(empty, r"empty.gguf: not a GGUF file")
    refused(tmp_path / "absent.gguf", r"absent.gguf: cannot read the file: No such file or directory")
    refused(write(tmp_path, "llama", LLAMA, name="bare.gguf", tensors={}), r"the tensor table is empty")


# -- the package stays out of the analytic commands' start ------------------------------------


def test_importing_kvcalc_gguf_imports_neither_gguf_nor_numpy():
    code = "import sys, kvcalc.gguf, kvcalc.cli; print(sorted({'gguf', 'numpy'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_key_names_are_llama_cpps():
    """Every key kvcalc reads or lets pass is one gguf-py (llama.cpp's constants) names."""
    templates = {value for group in (gguf.Keys.LLM, gguf.Keys.Attention, gguf.Keys.Rope)
                 for value in vars(group).values() if isinstance(value, str)}
    suffixes = {t.removeprefix("{arch}.") for t in templates if t.startswith("{arch}.")}
    assert (_GENERIC_READS | _WINDOW_READS | _MLA_READS | _NEUTRAL) - suffixes == set()


# -- through the commands ---------------------------------------------------------------------------


def test_a_gguf_file_is_a_model_argument(tmp_path, cli):
    """show, compare and fit read a .gguf path; its figures are llama.cpp's unless --engine says
    otherwise, its MHA equivalent engine-neutral, and fit counts the tensor table's bytes."""
    import json

    path = write(tmp_path, "deepseek2", DEEPSEEK_MLA)
    status, out, err = cli("show", str(path), "--seq", "1000", "--format", "json")
    doc = json.loads(out)
    assert status == 0, err
    assert (doc["engine"], doc["total_bytes"]) == ("llama.cpp@2026", kv_bytes(2, 1024, 40))
    status, out, _ = cli("show", str(path), "--seq", "1000", "--engine", "vllm", "--format", "json")
    assert status == 0 and json.loads(out)["engine"].startswith("vllm")
    status, out, _ = cli("compare", str(path), "llama-3.1-8b", "--seq", "1k")
    assert status == 0 and "engines llama.cpp@2026 and engine-neutral (by model)" in out.splitlines()[0]
    status, out, _ = cli("fit", str(path), "--gpu-mem", "2GiB", "--seq", "1k", "--format", "json")
    (row,) = json.loads(out)["rows"]
    assert status == 0 and row["weights_bytes_per_gpu"] == TENSOR_BYTES
