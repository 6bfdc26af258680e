"""Linear-attention and Mamba hybrids: the recurrent state per sequence beside K/V per token, read
as transformers 5.23 reads each family and held as its real cache holds it."""

import json

import pytest
from transformers import AutoConfig  # the test extra pins transformers==5.23.0

from kvcalc.analytic import Options, footprint
from kvcalc.catalog import load_spec_file
from kvcalc.errors import OptionError, SpecError
from kvcalc.spec import ModelSpec, RecurrentState

TINY = {"vocab_size": 97, "hidden_size": 64, "intermediate_size": 64, "num_attention_heads": 4,
        "num_key_value_heads": 2, "max_position_embeddings": 256, "pad_token_id": 0}
MOE = {"num_experts": 4, "num_local_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
       "shared_expert_intermediate_size": 32, "n_routed_experts": 4, "moe_shared_expert_intermediate_size": 32}
GDN = {"head_dim": 16, "linear_conv_kernel_dim": 4, "linear_key_head_dim": 8, "linear_value_head_dim": 12,
       "linear_num_key_heads": 2, "linear_num_value_heads": 4, **MOE}
MIX = ["linear_attention", "full_attention", "linear_attention", "full_attention"]
KIMI = {"num_key_value_heads": 4, "kv_lora_rank": 16, "q_lora_rank": None, "qk_rope_head_dim": 8,
        "qk_nope_head_dim": 16, "v_head_dim": 12, "linear_head_dim": 8, "linear_num_heads": 4,
        "linear_conv_kernel_dim": 4, "n_group": 1, "topk_group": 1, "bos_token_id": 1, "eos_token_id": 2, **MOE}
MAMBA2 = {"mamba_n_heads": 8, "mamba_d_head": 16, "mamba_n_groups": 2, "mamba_d_state": 16, "mamba_d_conv": 4,
          "mamba_chunk_size": 16}
MODELS = [
    ("qwen3_next", {**GDN, "num_hidden_layers": 8}),  # full_attention_interval 4: layers 3 and 7
    ("qwen3_next", {**GDN, "num_hidden_layers": 4, "layer_types": MIX}),
    ("qwen3_5_text", {**GDN, "num_hidden_layers": 4}),
    ("qwen3_5_moe_text", {**GDN, "num_hidden_layers": 4, "layer_types": MIX}),
    ("kimi_linear", {**KIMI, "num_hidden_layers": 5}),  # layer 4 full (MLA), 0-3 KDA
    ("kimi_linear", {**KIMI, "num_hidden_layers": 4, "layer_types": MIX}),
    ("kimi_linear", {**KIMI, "num_hidden_layers": 4,
                     "linear_attn_config": {"full_attn_layers": [2, 4], "kda_layers": [1, 3], "num_heads": 2,
                                            "head_dim": 8, "short_conv_kernel_size": 3}}),
    ("minimax", {"num_hidden_layers": 4, "head_dim": 16, "block_size": 4, **MOE,
                 "layer_types": ["full_attention", "linear_attention", "linear_attention", "full_attention"]}),
    ("minimax", {"num_hidden_layers": 4, "head_dim": 16, "block_size": 4, **MOE}),
    ("jamba", {"num_hidden_layers": 4, "attn_layer_period": 2, "attn_layer_offset": 1, "expert_layer_period": 2,
               "expert_layer_offset": 1, "mamba_d_state": 8, "mamba_d_conv": 4, "mamba_expand": 2, **MOE}),
    ("nemotron_h", {"head_dim": 16, "ssm_state_size": 16, "mamba_num_heads": 8, "mamba_head_dim": 16, "n_groups": 2,
                    "conv_kernel": 4, "chunk_size": 16, **MOE}),  # transformers' default layout M E * -
    ("nemotron_h", {"head_dim": 16, "ssm_state_size": 16, "mamba_num_heads": 8, "mamba_head_dim": 16, "n_groups": 2,
                    "conv_kernel": 4, "chunk_size": 16, "hybrid_override_pattern": "M*M-E*", **MOE}),
    ("nemotron_h", {"head_dim": 16, "ssm_state_size": 16, "mamba_num_heads": 8, "mamba_head_dim": 16, "n_groups": 2,
                    "conv_kernel": 4, "chunk_size": 16, "layers_block_type": ["mamba", "attention", "moe", "mamba"],
                    **MOE}),
    ("falcon_h1", {"num_hidden_layers": 3, "mamba_d_ssm": 128, **MAMBA2}),
    ("falcon_h1", {"num_hidden_layers": 2, "mamba_d_ssm": None, "mamba_expand": 2, **MAMBA2,
                   "mamba_n_heads": 4, "mamba_d_head": "auto"}),
    ("granitemoehybrid", {"num_hidden_layers": 4, "mamba_expand": 2, **MAMBA2, "layer_types": MIX,
                          "shared_intermediate_size": 32}),
]


def read(config: dict, tmp_path) -> ModelSpec:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return load_spec_file(path)


def held_bytes(cache) -> int:
    """Every tensor the cache holds -- K/V, conv and recurrent state, MiniMax's linear_cache --
    counted once each."""
    import torch

    seen, total = set(), 0

    def add(value) -> None:
        nonlocal total
        if isinstance(value, torch.Tensor):
            if value.numel() and value.data_ptr() not in seen:
                seen.add(value.data_ptr())
                total += value.numel() * value.element_size()
        elif isinstance(value, dict):
            for v in value.values():
                add(v)
        elif isinstance(value, list | tuple):
            for v in value:
                add(v)

    for layer in cache.layers:
        for name, value in vars(layer).items():
            if name in ("keys", "values", "conv_states", "recurrent_states"):
                add(value)
            elif isinstance(value, torch.Tensor):
                assert value.numel() <= 1, name  # bookkeeping, never per-token data
    add(getattr(cache, "linear_cache", ()))
    return total


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize(("model_type", "fields"), MODELS, ids=[f"{t}-{i}" for i, (t, _) in enumerate(MODELS)])
def test_cache_bytes_match_transformers(tmp_path, model_type, fields, dtype):
    """A tiny model of the family, built by transformers from the config kvcalc reads: a 7-token
    prefill and 3 decode steps, then every tensor its cache holds, summed, equals kvcalc's --engine
    transformers figure for 10 tokens: K/V per token on the attention layers, and per sequence the
    conv state (conv_kernel inputs wide) and the recurrent state (fp32 but for lightning)."""
    import torch
    from transformers import AutoModelForCausalLM

    config = {"model_type": model_type, **TINY, **fields}
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config)).eval()
    model.to(torch.float32 if dtype == "fp32" else torch.bfloat16)
    with torch.no_grad():
        out = model(torch.randint(3, 97, (1, 7)), use_cache=True, position_ids=torch.arange(7)[None])
        cache = out.past_key_values
        for step in range(7, 10):
            model(torch.randint(3, 97, (1, 1)), past_key_values=cache, use_cache=True,
                  position_ids=torch.tensor([[step]]))
    spec = read({k: v for k, v in config.items() if v is not None or k == "mamba_d_ssm"}, tmp_path)
    assert footprint(spec, Options(10, kv_dtype=dtype, engine="transformers")).total_bytes == held_bytes(cache)


QWEN3_NEXT = {"model_type": "qwen3_next", "num_hidden_layers": 48, "hidden_size": 2048, "num_attention_heads": 16,
              "num_key_value_heads": 2, "head_dim": 256, "linear_num_key_heads": 16, "linear_num_value_heads": 32,
              "linear_key_head_dim": 128, "linear_value_head_dim": 128, "linear_conv_kernel_dim": 4,
              "max_position_embeddings": 262144}


def test_qwen3_next_state_is_exact_and_split_from_the_cache(tmp_path):
    """Qwen3-Next-80B's shape: 12 full layers (K/V 2 x 256 each), 36 gated DeltaNet layers holding a
    conv state of (2 x 16 x 128 + 32 x 128) x 4 inputs and a 32 x 128 x 128 fp32 state."""
    spec = read(QWEN3_NEXT, tmp_path)
    assert spec.layer_counts["full"] == 12 and spec.layer_counts["recurrent"] == 36
    fp = footprint(spec, Options(32_768, batch=2))
    state = 36 * ((2 * 16 * 128 + 32 * 128) * 4 * 2 + 32 * 128 * 128 * 4)
    assert fp.state_bytes_per_sequence == state == 77_856_768
    assert fp.bytes_per_token == 12 * 2 * 2 * 256 * 2
    assert fp.total_bytes == 2 * (32_768 * fp.bytes_per_token + state)
    assert fp.attention == "GQA+GDN"


def test_state_has_its_column_and_its_explanation(cli, tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(QWEN3_NEXT))
    status, out, _ = cli("compare", str(path), "llama-3.1-8b", "--seq", "32k", "--format", "json")
    rows = json.loads(out)
    assert status == 0 and [r["state_bytes_per_sequence"] for r in rows] == [77_856_768, 0]
    status, out, _ = cli("compare", str(path), "--seq", "32k")
    assert "State/seq" in out and "74.2 MiB" in out
    status, out, _ = cli("show", str(path), "--seq", "32k", "--explain")
    assert ("conv state (recurrent layers) = 8192 (2 × key heads × head_k_dim + value heads × head_v_dim) × 4 "
            "(conv_kernel) = 32,768 values") in out
    assert "recurrent state: 524,288 fp32 values × 4 B = 2,097,152 B (fp32 whatever the cache dtype)" in out
    assert "recurrent layers: 77,856,768 B/sequence × 1 sequence = 77,856,768 B" in out


def test_fit_counts_the_state_of_every_sequence(tmp_path):
    """With a budget of exactly n sequences (K/V + state), n fit and n + 1 do not."""
    from kvcalc.fit import fit

    spec = read(QWEN3_NEXT, tmp_path).replace(params=80_000_000_000)
    per_sequence = 32_768 * 24_576 + 77_856_768
    budget = 7 * per_sequence + 100
    f = fit(spec, Options(32_768), gpu_name="exact", gpu_mem_bytes=80_000_000_000 * 2 + budget, mem_util="1")
    assert f.kv_budget_bytes_per_gpu == budget and f.max_concurrency == 7
    assert any("each sequence also holds 77,856,768 B of recurrent state" in n for n in f.notes)


def test_mamba_state_by_hand(tmp_path):
    """Jamba (Mamba): inner channels 2 x hidden, conv state channels x d_conv in the cache dtype, SSM
    state channels x d_state in fp32; Nemotron-H's MoE and MLP blocks hold nothing."""
    jamba = read({"model_type": "jamba", "num_hidden_layers": 32, "hidden_size": 4096, "num_attention_heads": 32},
                 tmp_path)
    assert (jamba.layer_counts["full"], jamba.layer_counts["recurrent"]) == (4, 28)
    assert footprint(jamba, Options(1)).state_bytes_per_sequence == 28 * (8192 * 4 * 2 + 8192 * 16 * 4)
    nemotron = read({"model_type": "nemotron_h", "hidden_size": 4096, "num_attention_heads": 32,
                     "hybrid_override_pattern": "M-M-M*-M-"}, tmp_path)
    assert (nemotron.num_layers, nemotron.layer_counts["mlp"], nemotron.layer_counts["recurrent"]) == (9, 4, 4)
    conv, ssm = (128 * 64 + 2 * 8 * 128) * 4 * 2, 128 * 64 * 128 * 4
    assert footprint(nemotron, Options(1)).state_bytes_per_sequence == 4 * (conv + ssm)


@pytest.mark.parametrize(("engine", "message"), [
    ("sglang", "sglang@default: how it holds the recurrent state"),
    ("llama.cpp", "llama.cpp@2026: how it holds the recurrent state"),
    ("transformers@5.14", "transformers@5.14: how it holds the recurrent state"),
])
def test_engines_without_a_state_rule_refuse(tmp_path, engine, message):
    with pytest.raises(OptionError, match=message):
        footprint(read(QWEN3_NEXT, tmp_path), Options(1000, engine=engine))


@pytest.mark.parametrize(("fields", "message"), [
    ({"model_type": "granitemoehybrid", "num_hidden_layers": 4, "hidden_size": 64, "num_attention_heads": 4},
     "transformers cannot cache a model without an attention layer"),
])
def test_transformers_refuses_what_it_cannot_run(tmp_path, fields, message):
    spec = read(fields, tmp_path)
    assert footprint(spec, Options(10)).state_bytes_per_sequence > 0  # the ideal holds its state
    with pytest.raises(OptionError, match=message):
        footprint(spec, Options(10, engine="transformers"))


def test_tp_and_measure_refuse_state(cli, tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(QWEN3_NEXT))
    status, _, err = cli("compare", str(path), "--tp", "2")
    assert status == 2 and "recurrent state splits across tensor-parallel ranks is not modelled yet" in err
    kimi = tmp_path / "kimi.json"
    kimi.write_text(json.dumps({"model_type": "kimi_linear", **TINY, **KIMI, "num_hidden_layers": 5}))
    status, _, err = cli("measure", str(kimi), "--seq", "16")
    assert status == 2 and "kvcalc has no kda layer to measure yet (it builds gated_deltanet and mamba2)" in err
    falcon = tmp_path / "falcon.json"
    falcon.write_text(json.dumps({"model_type": "falcon_h1", **TINY, "num_hidden_layers": 2, **MAMBA2,
                                  "mamba_d_ssm": 128}))
    status, _, err = cli("measure", str(falcon), "--seq", "16")
    assert status == 2 and "attention and a mixer side by side (hybrid)" in err


@pytest.mark.parametrize(("config", "message"), [
    ({"model_type": "jamba", "layer_types": ["full_attention"] * 4}, r"layer_types: .* takes no layer list"),
    ({"model_type": "falcon_h1", "layers_block_type": ["hybrid"] * 4}, r"layers_block_type: .* takes no layer list"),
    ({"model_type": "minimax", "attn_type_list": [0, 1, 0, 1]}, r"attn_type_list: transformers 5.23 ignores it"),
    ({"model_type": "minimax", "sliding_window": 64, "layer_types": MIX}, r"sliding_window: 64"),
    ({"model_type": "qwen3_next", "layer_types": ["mamba"] * 4}, r"layer_types: 'mamba' is not supported"),
    ({"model_type": "nemotron_h", "hybrid_override_pattern": "MX"}, r"hybrid_override_pattern: 'MX'"),
    ({"model_type": "kimi_linear", "linear_attn_config": {"full_attn_layers": [1], "kda_layers": [1]}},
     r"linear_attn_config: full_attn_layers \[1\] and kda_layers \[1\] must list the layers 1 to 4 once"),
])
def test_configs_kvcalc_cannot_read_as_transformers_does_are_refused(tmp_path, config, message):
    with pytest.raises(SpecError, match=message):
        read({"num_hidden_layers": 4, "hidden_size": 64, "num_attention_heads": 4, **config}, tmp_path)


@pytest.mark.parametrize(("fields", "message"), [
    ({"recurrent": {"kind": "mamba2", "num_heads": 8, "head_dim": 16, "d_state": 16, "conv_kernel": 4}},
     "recurrent: n_groups: required for a mamba2 mixer"),
    ({"recurrent": {"kind": "lightning", "num_heads": 8, "head_dim": 16, "conv_kernel": 4}},
     "recurrent: conv_kernel: a lightning mixer has no conv_kernel"),
    ({"recurrent": {"kind": "gated_deltanet", "num_k_heads": 3, "num_v_heads": 4, "head_k_dim": 8, "head_v_dim": 8,
                    "conv_kernel": 4}}, "num_k_heads 3 does not divide num_v_heads 4"),
    ({"layer_pattern": ["full"], "recurrent": {"kind": "lightning", "num_heads": 8, "head_dim": 16}},
     "recurrent is set but no layer is recurrent or hybrid"),
    ({"layer_pattern": ["recurrent", "full"]}, "4 layers are recurrent but recurrent \\(their mixer\\) is not set"),
])
def test_spec_validation(fields, message):
    base = {"name": "m", "display_name": "M", "num_layers": 8, "hidden_size": 64,
            "attention": {"kind": "standard", "num_heads": 4, "num_kv_heads": 2, "head_dim": 16},
            "layer_pattern": ["recurrent", "full"]}
    with pytest.raises(ValueError, match=message):
        ModelSpec.from_dict({**base, **fields})


def test_spec_files_round_trip_and_schema_matches_the_mixers():
    from kvcalc.schema import RecurrentFile, validate_spec
    from kvcalc.spec import _RECURRENT_FIELDS

    for model in RecurrentFile.__origin__.__args__:
        kind = model.model_fields["kind"].annotation.__args__[0]
        assert set(model.model_fields) - {"kind"} == set(_RECURRENT_FIELDS[kind])
    mixer = RecurrentState(kind="mamba", intermediate_size=256, d_state=16, conv_kernel=4)
    spec = ModelSpec(name="m", display_name="M", num_layers=4, hidden_size=64, recurrent=mixer,
                     attention=footprint.__globals__["StandardAttention"](num_heads=4, num_kv_heads=2, head_dim=16),
                     layer_pattern=("recurrent", "full"))
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    assert validate_spec(spec.to_dict(), "again") == spec
    with pytest.raises(SpecError, match=r"again: recurrent.kind: 'rwkv' is not one of"):
        validate_spec({**spec.to_dict(), "recurrent": {"kind": "rwkv"}}, "again")


def test_qwen3_5_wrappers_read_their_text_config(tmp_path):
    text = {"model_type": "qwen3_5_text", **TINY, **GDN, "num_hidden_layers": 8}
    wrapped = read({"model_type": "qwen3_5", "architectures": ["Qwen3_5ForConditionalGeneration"],
                    "text_config": text}, tmp_path)
    alone = read(text, tmp_path)
    assert wrapped.recurrent == alone.recurrent and wrapped.layer_kinds == alone.layer_kinds
    assert wrapped.architecture == "Qwen3_5ForConditionalGeneration"


@pytest.mark.parametrize(("model_type", "fields"), [
    ("qwen3_next", {**QWEN3_NEXT, "num_experts": 512, "num_experts_per_tok": 10, "moe_intermediate_size": 512,
                    "shared_expert_intermediate_size": 512, "intermediate_size": 5120, "vocab_size": 151936,
                    "tie_word_embeddings": False}),
    ("qwen3_5_text", {**TINY, **GDN, "num_hidden_layers": 8, "tie_word_embeddings": True}),
    ("qwen3_5_moe_text", {**TINY, **GDN, "num_hidden_layers": 8}),
])
def test_gated_deltanet_models_count_their_weights_as_transformers_builds_them(tmp_path, model_type, fields):
    """Every parameter of transformers' own model, built on the meta device (Qwen3-Next-80B-A3B's
    shape: 79,674,391,296, the model card's "80B" without its MTP layer)."""
    import torch
    from transformers import AutoModelForCausalLM

    config = {**fields, "model_type": model_type}
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config))
    assert read(config, tmp_path).params == sum(p.numel() for p in model.parameters())


def test_fit_answers_for_qwen3_next_from_its_config(tmp_path, cli):
    """How many 32k sequences of Qwen3-Next fit on one H200, with every sequence's state counted."""
    config = {**QWEN3_NEXT, "num_experts": 512, "num_experts_per_tok": 10, "moe_intermediate_size": 512,
              "shared_expert_intermediate_size": 512, "intermediate_size": 5120, "vocab_size": 151936,
              "tie_word_embeddings": False}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    status, out, _ = cli("fit", str(path), "--gpu", "h200", "--seq", "32k", "--weights-dtype", "fp8", "--format",
                         "json")
    (row,) = json.loads(out)
    budget = row["kv_budget_bytes_per_gpu"]
    assert status == 0 and row["max_concurrency"] == budget // (32_768 * 24_576 + 77_856_768)


QWEN3_NEXT_80B = {**QWEN3_NEXT, "architectures": ["Qwen3NextForCausalLM"], "num_experts": 512,
                  "num_experts_per_tok": 10, "moe_intermediate_size": 512, "shared_expert_intermediate_size": 512,
                  "intermediate_size": 5120, "vocab_size": 151936, "tie_word_embeddings": False}


def test_vllm_pages_qwen3_next_state_as_it_aligns_it(tmp_path):
    """docs/facts/vllm-sglang-recurrent-state.md section A.3: the GDN state page (conv 3 x 8,192 +
    32 x 128 x 128, bf16) is 1,097,728 B; the attention block rises to 64 x cdiv(1,097,728, 64 x 2,048)
    = 576 tokens, the state page is padded to 576 x 2,048 B; 12 full and 36 GDN layers make 4 groups
    of 12, a block of 14,155,776 B; a request holds cdiv(L, 576) + 3 blocks and reserves
    cdiv(M, 576) + 3 x (2 + 1)."""
    from kvcalc.analytic import curve
    from kvcalc.fit import fit

    spec = read(QWEN3_NEXT_80B, tmp_path)
    options = Options(32_768, engine="vllm")
    c = curve(spec, options)
    assert c.engine.page_tokens == 576 and c.block_bytes == (14_155_776,)
    fp = footprint(spec, options)
    assert fp.state_bytes_per_sequence == 36 * 576 * 2048
    assert fp.total_bytes == (57 + 3) * 14_155_776  # cdiv(32,768, 576) attention blocks + one per GDN group
    assert c.request_blocks(32_768, 16_384) == 57 + 9
    assert curve(spec, Options(1, engine="vllm", kv_dtype="fp8")).engine.page_tokens == 64 * 17  # 1,024 B a token
    f = fit(spec, options, gpu_name="h200", gpu_mem_bytes=150_754_820_096, weights_dtype="fp8")
    blocks = f.kv_budget_bytes_per_gpu // 14_155_776
    assert f.max_concurrency == (blocks - 1) // 66
    assert f.engine_log.endswith(f"Maximum concurrency for 32,768 tokens per request: {blocks / 66:.2f}x")


def test_vllm_pages_jamba_state_in_blocks_of_80(tmp_path):
    """Mamba1: conv 3 x 8,192 + state 8,192 x 16 in bf16 = 311,296 B; attention 4,096 B a token,
    alignment 16: blocks of 16 x cdiv(311,296, 65,536) = 80 tokens; 4 full and 28 Mamba layers in 8
    groups of 4; no prefill checkpoint, so 2 reserved pages per Mamba group."""
    from kvcalc.analytic import curve

    spec = read({"model_type": "jamba", "architectures": ["JambaForCausalLM"], "num_hidden_layers": 32,
                 "hidden_size": 4096, "num_attention_heads": 32}, tmp_path)
    c = curve(spec, Options(1, engine="vllm"))
    assert c.engine.page_tokens == 80 and c.block_bytes == (4 * 80 * 4096,)
    assert c.request_blocks(8_000, 16_384) == 100 + 7 * 2


@pytest.mark.parametrize(("config", "message"), [
    ({"model_type": "nemotron_h", "architectures": ["NemotronHForCausalLM"], "hidden_size": 4096,
      "num_attention_heads": 32, "num_hidden_layers": 4}, "mamba_ssm_cache_dtype"),
    ({"model_type": "falcon_h1", "architectures": ["FalconH1ForCausalLM"], "hidden_size": 1024,
      "num_attention_heads": 8, "num_hidden_layers": 4}, "attention and Mamba2 side by side"),
    ({**QWEN3_NEXT, "architectures": None}, "how it pages the state of this architecture is not modelled"),
])
def test_vllm_refuses_state_it_does_not_page(tmp_path, config, message):
    with pytest.raises(OptionError, match=message):
        footprint(read({k: v for k, v in config.items() if v is not None}, tmp_path), Options(10, engine="vllm"))
    with pytest.raises(OptionError, match="vLLM sets a hybrid model's attention block size itself"):
        footprint(read(QWEN3_NEXT_80B, tmp_path), Options(10, engine="vllm", block_size=64))
