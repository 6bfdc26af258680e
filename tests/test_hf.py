"""Hugging Face and DeepSeek reference configs -> specs, with published values written for the test."""

import json

import pytest

from kvcalc.analytic import Layout, Options, footprint
from kvcalc.catalog import load_bundled, resolve
from kvcalc.errors import SpecError

LLAMA_31_8B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
    "intermediate_size": 14336, "num_attention_heads": 32, "num_hidden_layers": 32,
    "num_key_value_heads": 8, "vocab_size": 128256, "tie_word_embeddings": False,
    "max_position_embeddings": 131072,
}
DEEPSEEK_V3 = {
    "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "hidden_size": 7168,
    "intermediate_size": 18432, "moe_intermediate_size": 2048, "num_hidden_layers": 61,
    "num_nextn_predict_layers": 1, "num_attention_heads": 128, "num_key_value_heads": 128,
    "n_shared_experts": 1, "n_routed_experts": 256, "first_k_dense_replace": 3,
    "topk_method": "noaux_tc", "q_lora_rank": 1536, "kv_lora_rank": 512, "qk_nope_head_dim": 128,
    "qk_rope_head_dim": 64, "v_head_dim": 128, "head_dim": 64, "vocab_size": 129280,
    "tie_word_embeddings": False, "max_position_embeddings": 163840,
}
MIXTRAL = {
    "model_type": "mixtral", "hidden_size": 4096, "intermediate_size": 14336, "num_attention_heads": 32,
    "num_hidden_layers": 32, "num_key_value_heads": 8, "num_local_experts": 8, "vocab_size": 32000,
    "sliding_window": None, "tie_word_embeddings": False,
}
QWEN25_7B = {
    "model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944, "num_attention_heads": 28,
    "num_hidden_layers": 28, "num_key_value_heads": 4, "vocab_size": 152064, "sliding_window": 131072,
    "use_sliding_window": False, "max_window_layers": 28, "tie_word_embeddings": False,
}

# Published shapes of each family: (config, bundled model with the same cache).
FAMILIES = {
    "llama": (LLAMA_31_8B, "llama-3.1-8b"),
    "mistral": ({"model_type": "mistral", "hidden_size": 4096, "num_attention_heads": 32,
                 "num_hidden_layers": 32, "num_key_value_heads": 8, "sliding_window": 4096},
                "mistral-7b-v0.1"),
    "mixtral": (MIXTRAL, "mixtral-8x7b"),
    "qwen2": (QWEN25_7B, "qwen2.5-7b"),
    "qwen3": ({"model_type": "qwen3", "hidden_size": 4096, "head_dim": 128, "num_attention_heads": 32,
               "num_hidden_layers": 36, "num_key_value_heads": 8, "sliding_window": None,
               "use_sliding_window": False}, "qwen3-8b"),
    "qwen3_moe": ({"model_type": "qwen3_moe", "hidden_size": 4096, "head_dim": 128,
                   "num_attention_heads": 64, "num_hidden_layers": 94, "num_key_value_heads": 4,
                   "num_experts": 128, "moe_intermediate_size": 1536}, "qwen3-235b-a22b"),
    "gemma2": ({"model_type": "gemma2", "hidden_size": 3584, "head_dim": 256, "num_attention_heads": 16,
                "num_hidden_layers": 42, "num_key_value_heads": 8, "sliding_window": 4096},
               "gemma-2-9b"),
    "gemma3": ({"model_type": "gemma3", "text_config": {
                   "model_type": "gemma3_text", "head_dim": 128, "hidden_size": 5376,
                   "num_attention_heads": 32, "num_hidden_layers": 62, "num_key_value_heads": 16,
                   "sliding_window": 1024}, "vision_config": {"num_hidden_layers": 27}},
               "gemma-3-27b"),
    "phi3": ({"model_type": "phi3", "hidden_size": 3072, "num_attention_heads": 32,
              "num_hidden_layers": 32, "num_key_value_heads": 32, "sliding_window": 2047},
             "phi-3-mini-4k"),
    "falcon": ({"model_type": "falcon", "hidden_size": 4544, "n_head": 71, "n_layer": 32,
                "multi_query": True, "parallel_attn": True}, "falcon-7b"),
    "gpt_oss": ({"model_type": "gpt_oss", "hidden_size": 2880, "head_dim": 64, "num_attention_heads": 64,
                 "num_hidden_layers": 36, "num_key_value_heads": 8, "sliding_window": 128,
                 "layer_types": ["sliding_attention", "full_attention"] * 18}, "gpt-oss-120b"),
    "deepseek_v2": ({"model_type": "deepseek_v2", "hidden_size": 2048, "num_attention_heads": 16,
                     "num_key_value_heads": 16, "num_hidden_layers": 27, "q_lora_rank": None,
                     "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
                     "v_head_dim": 128}, "deepseek-v2-lite"),
    "deepseek_v3": (DEEPSEEK_V3, "deepseek-v3"),
    "kimi_k2": ({**DEEPSEEK_V3, "model_type": "kimi_k2", "num_attention_heads": 64,
                 "num_key_value_heads": 64, "num_nextn_predict_layers": 0}, "kimi-k2"),
    "minicpm3": ({"model_type": "minicpm3", "hidden_size": 2560, "num_attention_heads": 40,
                  "num_key_value_heads": 40, "num_hidden_layers": 62, "q_lora_rank": 768,
                  "kv_lora_rank": 256, "qk_nope_head_dim": 64, "qk_rope_head_dim": 32},
                 "minicpm3-4b"),
}


def load(tmp_path, config: dict, folder: str = "model"):
    path = tmp_path / folder / "config.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(config))
    return resolve(str(path))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("seq_len", [1000, 4096, 131072])
@pytest.mark.parametrize(
    "options",
    [{}, {"kv_dtype": "fp8"}, {"kv_dtype": "q4_0"}, {"layout": Layout.DECOMPRESSED},
     {"engine": "vllm"}, {"engine": "llama.cpp", "kv_dtype": "q8_0"}],
)
def test_config_gives_the_catalog_bytes(tmp_path, family, seq_len, options):
    config, bundled = FAMILIES[family]
    imported, published = load(tmp_path, config), load_bundled(bundled)
    assert imported.mtp_layers == published.mtp_layers
    for mtp in (False, True):
        opts = Options(seq_len, mtp=mtp, **options)
        assert footprint(imported, opts).total_bytes == footprint(published, opts).total_bytes


def test_name_comes_from_the_folder(tmp_path):
    assert load(tmp_path, LLAMA_31_8B, "Llama-3.1-8B").name == "llama-3.1-8b"


def test_mla_ignores_the_misleading_head_fields(tmp_path):
    spec = load(tmp_path, DEEPSEEK_V3)
    assert spec.attention.kind == "mla" and spec.mtp_layers == 1


@pytest.mark.parametrize(
    ("config", "params"),
    [(LLAMA_31_8B, 8_030_261_248), (DEEPSEEK_V3, 671_026_419_200), (MIXTRAL, 46_702_792_704),
     (QWEN25_7B, 7_615_616_512)],
)
def test_parameter_count_is_derived(tmp_path, config, params):
    assert load(tmp_path, config).params == params


def test_assumptions_are_recorded(tmp_path):
    gemma3 = load(tmp_path, FAMILIES["gemma3"][0])
    assert "sliding_window_pattern 6 (class default; absent from the config)" in gemma3.assumptions
    falcon = load(tmp_path, FAMILIES["falcon"][0], "falcon")
    assert "head_dim 64 = hidden_size / num_attention_heads (absent from the config)" in falcon.assumptions


def test_qwen_sliding_window_when_switched_on(tmp_path):
    config = {**QWEN25_7B, "use_sliding_window": True, "sliding_window": 4096, "max_window_layers": 21}
    spec = load(tmp_path, config)
    assert [k for k in spec.layer_kinds].count("sliding") == 7  # layers 21..27


def test_falcon_new_decoder_architecture(tmp_path):
    config = {"model_type": "falcon", "hidden_size": 8192, "n_head": 128, "n_layer": 60,
              "num_kv_heads": 8, "new_decoder_architecture": True}
    assert footprint(load(tmp_path, config), Options(1)).bytes_per_token == 2 * 8 * 64 * 2 * 60


def test_deepseek_reference_config(tmp_path):
    config = {"vocab_size": 129280, "dim": 7168, "inter_dim": 18432, "moe_inter_dim": 2048,
              "n_layers": 61, "n_dense_layers": 3, "n_heads": 128, "q_lora_rank": 1536,
              "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
              "v_head_dim": 128, "dtype": "fp8"}
    path = tmp_path / "config_671B.json"
    path.write_text(json.dumps(config))
    spec = resolve(str(path))
    assert spec.name == "config_671b"
    assert footprint(spec, Options(1)).bytes_per_token == 70_272
    no_q_lora = tmp_path / "lite.json"
    no_q_lora.write_text(json.dumps({**config, "q_lora_rank": 0}))
    assert resolve(str(no_q_lora)).attention.q_lora_rank is None


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"model_type": "llama", "hidden_size": 64}, "num_hidden_layers: required field is missing"),
        ({**LLAMA_31_8B, "num_hidden_layers": "32"}, "num_hidden_layers: '32': expected an integer"),
        ({**LLAMA_31_8B, "head_dim": None, "hidden_size": 100, "num_attention_heads": 3},
         "head_dim: missing, and hidden_size 100 is not a multiple of 3 heads"),
        ({**LLAMA_31_8B, "num_key_value_heads": 5}, "num_kv_heads 5 does not divide num_heads 32"),
        ({**LLAMA_31_8B, "layer_types": ["chunked_attention"] * 32},
         "layer_types: 'chunked_attention' is not supported"),
        ({**LLAMA_31_8B, "layer_types": ["sliding_attention"] * 32}, "sliding_window: required field"),
        ({**LLAMA_31_8B, "layer_types": ["full_attention"] * 3}, "lists 3 layers but num_hidden_layers"),
        ({**DEEPSEEK_V3, "qk_rope_head_dim": None}, "qk_rope_head_dim: required field is missing"),
    ],
)
def test_configs_kvcalc_cannot_interpret(tmp_path, config, message):
    with pytest.raises(SpecError, match=message):
        load(tmp_path, config)


def test_import_round_trip(cli, tmp_path):
    config = tmp_path / "DeepSeek-V3" / "config.json"
    config.parent.mkdir()
    config.write_text(json.dumps(DEEPSEEK_V3))
    target = tmp_path / "v3.yaml"
    status, _, err = cli("import", str(config), "--name", "my-v3", "-o", str(target))
    assert (status, err) == (0, f"kvcalc: wrote {target}\n")
    text = target.read_text()
    assert text.startswith(f"# kvcalc spec imported from {config}\n")
    spec = resolve(str(target))
    assert (spec.name, spec.params, spec.mtp_layers) == ("my-v3", 671_026_419_200, 1)
    status, out, _ = cli("show", str(target), "--explain")
    assert "params derived from the config" in out


def test_import_json_reads_back(cli, tmp_path):
    config = tmp_path / "falcon" / "config.json"
    config.parent.mkdir()
    config.write_text(json.dumps(FAMILIES["falcon"][0]))
    status, out, _ = cli("import", str(config), "-f", "json")
    assert status == 0
    target = tmp_path / "falcon.json"
    target.write_text(out)
    assert footprint(resolve(str(target)), Options(1)).bytes_per_token == 8192


@pytest.mark.parametrize(
    ("config", "bytes_per_token"),
    [
        # Gemma-7B: MHA, head_dim 256 (explicit; hidden_size / heads = 192)
        ({"model_type": "gemma", "hidden_size": 3072, "head_dim": 256, "num_attention_heads": 16,
          "num_key_value_heads": 16, "num_hidden_layers": 28}, 2 * 16 * 256 * 2 * 28),
        # Qwen1.5-MoE-A2.7B: sliding window present but switched off
        ({"model_type": "qwen2_moe", "hidden_size": 2048, "num_attention_heads": 16,
          "num_key_value_heads": 16, "num_hidden_layers": 24, "sliding_window": 32768,
          "use_sliding_window": False, "num_experts": 60, "moe_intermediate_size": 1408,
          "shared_expert_intermediate_size": 5632}, 2 * 16 * 128 * 2 * 24),
    ],
)
def test_more_families(tmp_path, config, bytes_per_token):
    spec = load(tmp_path, config)
    assert spec.sliding_window is None
    assert footprint(spec, Options(1)).bytes_per_token == bytes_per_token


def test_architecture_is_the_first_class_the_config_names(tmp_path):
    assert load(tmp_path, LLAMA_31_8B).architecture == "LlamaForCausalLM"
    assert load(tmp_path, MIXTRAL).architecture is None


@pytest.mark.parametrize("value", ["LlamaForCausalLM", [], [3], ["not a class"]])
def test_architectures_of_the_wrong_shape_are_refused(tmp_path, value):
    with pytest.raises(SpecError, match=r"config.json: architectures: .*(expected a list|not a model class)"):
        load(tmp_path, {**LLAMA_31_8B, "architectures": value})


@pytest.mark.parametrize(("fields", "weights"), [
    ({"quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 128]}}, "fp8-block"),
    ({"quantization_config": {"quant_method": "fp8"}}, "fp8"),
    ({"torch_dtype": "float16"}, "fp16"),
    ({"dtype": "bfloat16"}, "bf16"),
    ({}, None),
])
def test_weights_are_read_from_the_config(tmp_path, fields, weights):
    assert load(tmp_path, {**LLAMA_31_8B, **fields}).weights_dtype == weights


@pytest.mark.parametrize("quant", [{"quant_method": "fp8", "weight_block_size": [128, 128], "expert_dtype": "fp4"},
                                   {"quant_method": "mxfp4"}, {"quant_method": "awq", "bits": 4}])
def test_weights_of_mixed_or_unread_quantisation_are_left_unsaid(tmp_path, quant):
    spec = load(tmp_path, {**LLAMA_31_8B, "quantization_config": quant, "torch_dtype": "bfloat16"})
    assert spec.weights_dtype is None
    assert any(a.startswith("weights: quantization_config") and "fit assumes bf16" in a for a in spec.assumptions)


LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 8192}
GEMMA3_TEXT = {"model_type": "gemma3_text", "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
               "head_dim": 16, "num_hidden_layers": 6, "sliding_window": 512}


@pytest.mark.parametrize(
    ("config", "rope"),
    [
        (LLAMA_31_8B | {"rope_theta": 500000.0, "rope_scaling": LLAMA3_SCALING},
         {"rope_theta": 500000.0, **LLAMA3_SCALING}),
        (LLAMA_31_8B | {"rope_theta": 500000.0, "rope_scaling": {"type": "linear", "factor": 2.0}},
         {"rope_type": "linear", "rope_theta": 500000.0, "factor": 2.0}),
        (LLAMA_31_8B | {"rope_parameters": {"rope_type": "default", "rope_theta": 1e6}},
         {"rope_type": "default", "rope_theta": 1e6}),
        # Gemma-3: its sliding layers turn at their own base, unscaled
        (GEMMA3_TEXT | {"rope_theta": 1e6, "rope_local_base_freq": 1e4, "rope_scaling": {"rope_type": "linear",
                                                                                         "factor": 8.0}},
         {"sliding": {"rope_type": "default", "rope_theta": 1e4},
          "full": {"rope_type": "linear", "rope_theta": 1e6, "factor": 8.0}}),
        (GEMMA3_TEXT | {"rope_parameters": {"sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
                                            "full_attention": {"rope_type": "default", "rope_theta": 1e6}}},
         {"sliding": {"rope_type": "default", "rope_theta": 1e4}, "full": {"rope_type": "default", "rope_theta": 1e6}}),
        # what kvcalc's layers do not compute, or a config that does not say, is left out
        (LLAMA_31_8B, None),
        (LLAMA_31_8B | {"rope_scaling": LLAMA3_SCALING}, None),
        (LLAMA_31_8B | {"rope_theta": 1e4, "rope_scaling": {"rope_type": "longrope", "short_factor": [1.0]}}, None),
        (LLAMA_31_8B | {"rope_theta": 1e4, "no_rope_layers": [1] * 32}, None),
    ],
    ids=["llama3", "old-type-key", "rope_parameters", "gemma3-local-base", "gemma3-per-type", "unsaid",
         "no-theta", "longrope", "unknown-field"],
)
def test_rope_is_read_from_the_config(tmp_path, config, rope):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    assert resolve(str(path)).rope == rope


def test_attention_bias_is_read_from_the_config(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(LLAMA_31_8B | {"attention_bias": True}))
    assert resolve(str(path)).attention_bias is True
    path.write_text(json.dumps(LLAMA_31_8B))
    assert resolve(str(path)).attention_bias is False
