"""Linear-attention and Mamba hybrids: the recurrent state per sequence beside K/V per token, read
as transformers 5.23 reads each family and held as its real cache holds it."""

import json

import pytest
from transformers import AutoConfig  # the test extra pins transformers==5.23.0

from kvcalc.analytic import Options, footprint
from kvcalc.catalog import load_spec_file
from kvcalc.errors import OptionError, SpecError
from kvcalc.parallel import Parallel
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
    rows = json.loads(out)["rows"]
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
    from kvcalc.capacity import fit

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
    ("sglang", "sglang@default: how it holds the state of this architecture is not modelled"),
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


def test_tp_splits_the_state_by_heads(tmp_path):
    """Qwen3-Next-80B at tp 4, 32k tokens, bf16: 12 full layers keep one KV head each of 2 (replicated:
    1,024 B a token); each of 36 GDN layers keeps conv 4 x 8,192 / 4 bf16 and state 32 / 4 x 128 x 128
    fp32 on a rank."""
    spec = read(QWEN3_NEXT_80B, tmp_path)
    fp = footprint(spec, Options(32_768, parallel=Parallel(tp=4)))
    assert fp.state_bytes_per_sequence == 36 * (4 * 8192 * 2 + 32 * 128 * 128 * 4)  # the whole model's
    assert fp.per_gpu_bytes == 32_768 * 12 * 1024 + 36 * (4 * 2048 * 2 + 8 * 128 * 128 * 4)


def test_tp_splits_mamba2_groups_or_replicates_them(tmp_path):
    """Mamba2 with one group at tp 2: the group is replicated (vLLM's extra_groups_for_head_shards),
    so a rank's conv holds 8 x 16 / 2 + 2 x 2 x 16 / 2 channels, not half of 8 x 16 + 2 x 16."""
    config = {"model_type": "falcon_h1", **TINY, "num_hidden_layers": 2, **MAMBA2, "mamba_n_groups": 1,
              "mamba_d_ssm": 128}
    spec = read(config, tmp_path)
    conv = next(p for p in footprint(spec, Options(1, parallel=Parallel(tp=2))).gpu_parts if p.name == "conv state")
    assert conv.factors[0].size == (8 * 16 + 2 * 2 * 16) // 2
    with pytest.raises(OptionError, match="attention tp 2 and .*'s 3 Mamba2 groups"):
        footprint(read({**config, "mamba_n_heads": 6, "mamba_d_head": 16, "mamba_d_ssm": 96, "mamba_n_groups": 3},
                       tmp_path), Options(1, parallel=Parallel(tp=2)))
    with pytest.raises(OptionError, match="attention tp 4 does not divide .*'s 2 gated_deltanet key heads"):
        footprint(read({"model_type": "qwen3_next", **TINY, **GDN, "num_hidden_layers": 4}, tmp_path),
                  Options(1, parallel=Parallel(tp=4)))


def test_vllm_pages_the_state_of_a_rank_under_tp(tmp_path):
    """docs/facts/vllm-sglang-recurrent-state.md A.3, Qwen3-Next at tp 4: a rank's state page is
    274,432 B, its attention 1,024 B a token: 64 x cdiv(274,432, 65,536) = 320-token blocks of 12 x
    327,680 B; a request of 262,144 tokens reserves 820 + 9 of them."""
    from kvcalc.analytic import curve

    options = Options(262_144, engine="vllm", parallel=Parallel(tp=4))
    c = curve(read(QWEN3_NEXT_80B, tmp_path), options)
    assert (c.engine.page_tokens, c.block_bytes) == (320, (3_932_160,))
    assert c.request_blocks(262_144, 16_384) == 829


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
        dtypes = {"ssm_dtype", "ssm_cache_dtype"}
        assert set(model.model_fields) - {"kind"} == {*_RECURRENT_FIELDS[kind], *dtypes}
    mixer = RecurrentState(kind="mamba", intermediate_size=256, d_state=16, conv_kernel=4, ssm_dtype="float32")
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
    (row,) = json.loads(out)["rows"]
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
    from kvcalc.capacity import fit

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


# (config, attention block, block bytes, blocks reserved for 8,000 tokens), worked by hand from
# docs/facts/vllm-sglang-recurrent-state.md sections A.1 and A.3:
VLLM_PAGED = [
    # Nemotron-H's defaults: Mamba2 conv 3 x (128 x 64 + 2 x 8 x 128) bf16 = 61,440 B, state 128 x 64 x 128
    # in float32 (vLLM's default for Nemotron-H) = 4,194,304 B; attention 8 x 256 x 2 = 4,096 B a token:
    # 16 x cdiv(4,255,744, 16 x 4,096) = 1,040 tokens; [M, MLP, *, MLP]: one layer a group (the MLP
    # blocks cache nothing); cdiv(8,000, 1,040) + (2 + 1).
    ({"model_type": "nemotron_h", "architectures": ["NemotronHForCausalLM"], "hidden_size": 4096,
      "num_attention_heads": 32, "num_hidden_layers": 4}, 1040, 1040 * 4096, 8 + 3),
    # the config's mamba_ssm_cache_dtype bfloat16 halves the state: 2,158,592 B -> 33 x 16 tokens
    ({"model_type": "nemotron_h", "architectures": ["NemotronHForCausalLM"], "hidden_size": 4096,
      "num_attention_heads": 32, "num_hidden_layers": 4, "mamba_ssm_cache_dtype": "bfloat16"}, 528, 528 * 4096,
     16 + 3),
    # Falcon-H1: each layer an attention layer and a Mamba2 one to vLLM; conv 3 x (1,024 + 2 x 256) bf16 =
    # 9,216 B, state 128 x 8 x 256 bf16 = 524,288 B; 16 x cdiv(533,504, 65,536) = 144 tokens; 4 attention
    # and 4 Mamba layers: 2 groups of 4.
    ({"model_type": "falcon_h1", "architectures": ["FalconH1ForCausalLM"], "hidden_size": 1024,
      "num_attention_heads": 8, "num_hidden_layers": 4}, 144, 4 * 144 * 4096, 56 + 3),
    # Qwen3.5 with the config's mamba_ssm_dtype float32: conv 49,152 B + state 32 x 128 x 128 x 4 B;
    # attention 4 x 512 x 2 = 4,096 B a token: 64 x cdiv(2,146,304, 64 x 4,096) = 576; 2 full and 6 GDN
    # layers: 4 groups of 2; cdiv(8,000, 576) + 3 x (2 + 1).
    ({"model_type": "qwen3_5_text", "architectures": ["Qwen3_5ForCausalLM"], "num_hidden_layers": 8,
      "hidden_size": 2048, "num_attention_heads": 16, "mamba_ssm_dtype": "float32"}, 576, 2 * 576 * 4096,
     14 + 9),
    # Kimi-Linear: KDA conv 3 x 3 x 32 x 128 bf16 = 73,728 B, state 32 x 128 x 128 float32 (its layer's
    # own) = 2,097,152 B; MLA (512 + 64) x 2 = 1,152 B a token, aligned to 128: 128 x cdiv(2,170,880,
    # 147,456) = 1,920 tokens; 2 MLA and 6 KDA layers in 4 groups of 2; no checkpoint: 2 pages a group.
    ({"model_type": "kimi_linear", "architectures": ["KimiLinearForCausalLM"], "num_hidden_layers": 8,
      "hidden_size": 2304, "num_attention_heads": 32, "kv_lora_rank": 512, "qk_rope_head_dim": 64,
      "linear_attn_config": {"num_heads": 32, "head_dim": 128, "short_conv_kernel_size": 4,
                             "full_attn_layers": [4, 8], "kda_layers": [1, 2, 3, 5, 6, 7]}},
     1920, 2 * 1920 * 1152, 5 + 6),
]


@pytest.mark.parametrize(("config", "block", "block_bytes", "reserved"), VLLM_PAGED)
def test_vllm_pages_each_hybrid_state_as_it_aligns_it(tmp_path, config, block, block_bytes, reserved):
    from kvcalc.analytic import curve

    spec = read(config, tmp_path)
    c = curve(spec, Options(1, engine="vllm"))
    assert (c.engine.page_tokens, c.block_bytes) == (block, (block_bytes,))
    assert c.request_blocks(8_000, 16_384) == reserved


@pytest.mark.parametrize(("config", "message"), [
    ({"model_type": "minimax", "architectures": ["MiniMaxText01ForCausalLM"], "hidden_size": 1024,
      "num_attention_heads": 8, "num_hidden_layers": 4, "head_dim": 128}, "vLLM dropped MiniMax-Text-01"),
    ({**QWEN3_NEXT, "architectures": None}, "how it pages the state of this architecture is not modelled"),
])
def test_vllm_refuses_state_it_does_not_page(tmp_path, config, message):
    with pytest.raises(OptionError, match=message):
        footprint(read({k: v for k, v in config.items() if v is not None}, tmp_path), Options(10, engine="vllm"))
    with pytest.raises(OptionError, match="vLLM sets a hybrid model's attention block size itself"):
        footprint(read(QWEN3_NEXT_80B, tmp_path), Options(10, engine="vllm", block_size=64))


def test_sglang_keeps_each_request_state_in_a_slot(tmp_path):
    """docs/facts/vllm-sglang-recurrent-state.md B.1 and B.4: Qwen3-Next's slot in SGLang holds, per
    GDN layer, conv 8,192 / tp x 3 in bf16 and state 32 / tp x 128 x 128 in float32 -- 77,266,944 B
    at tp 1, 19,316,736 B at tp 4 -- beside 12 full layers' K and V per token."""
    from kvcalc.analytic import curve
    from kvcalc.capacity import sglang_pools

    spec = read(QWEN3_NEXT_80B, tmp_path)
    assert footprint(spec, Options(1, engine="sglang")).state_bytes_per_sequence == 77_266_944
    quarter = footprint(spec, Options(32_768, engine="sglang", parallel=Parallel(tp=4)))
    assert quarter.per_gpu_bytes == 32_768 * 12 * 1024 + 19_316_736
    # B.4's illustration, a rest_memory of 40 GiB: 0.9 / 1.9 of it to state slots, the rest to KV
    for tp, slots, tokens, running in ((1, 262, 920_754, 52), (4, 1_052, 1_839_937, 210)):
        c = curve(spec, Options(262_144, engine="sglang", parallel=Parallel(tp=tp)))
        pools = sglang_pools(c, 40 << 30, 262_144)
        assert (pools.state_slots, pools.full_tokens, pools.max_running) == (slots, tokens, running)
        assert pools.line == (f"max_mamba_cache_size: {slots}, max_total_num_tokens={tokens}, "
                              f"max_running_requests={running}")


@pytest.mark.parametrize(("config", "state"), [
    # Nemotron-H: SGLang reads the config's mamba_ssm_dtype (not vLLM's mamba_ssm_cache_dtype)
    ({"model_type": "nemotron_h", "architectures": ["NemotronHForCausalLM"], "hidden_size": 4096,
      "num_attention_heads": 32, "num_hidden_layers": 4, "mamba_ssm_dtype": "bfloat16",
      "mamba_ssm_cache_dtype": "float32"}, (128 * 64 + 2 * 8 * 128) * 3 * 2 + 128 * 64 * 128 * 2),
    # Granite-4.0-H: SGLang passes no config, so float32 whatever it says
    ({"model_type": "granitemoehybrid", "architectures": ["GraniteMoeHybridForCausalLM"], "hidden_size": 1024,
      "num_attention_heads": 8, "num_hidden_layers": 2, "layer_types": ["mamba", "attention"],
      "mamba_ssm_dtype": "bfloat16", "mamba_n_heads": 32, "mamba_d_head": 64, "mamba_n_groups": 1,
      "mamba_d_state": 128, "mamba_d_conv": 4, "mamba_expand": 2}, (2048 + 2 * 128) * 3 * 2 + 32 * 64 * 128 * 4),
])
def test_sglang_state_dtype_follows_the_config_where_it_reads_it(tmp_path, config, state):
    assert footprint(read(config, tmp_path), Options(1, engine="sglang")).state_bytes_per_sequence == state


def test_sglang_fit_sizes_state_slots_before_the_kv_pool(tmp_path, cli):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(QWEN3_NEXT_80B))
    status, out, _ = cli("fit", str(path), "--gpu", "h200", "--seq", "32k", "--weights-dtype", "fp8", "--engine",
                         "sglang", "--mem-fraction-static", "0.903", "--format", "json")
    (row,) = json.loads(out)["rows"]
    budget = row["kv_budget_bytes_per_gpu"]
    slots = int((budget / 2**30 * 0.9 / 1.9 * 2**30 - 77_266_944) // 77_266_944)
    tokens = int((budget / 2**30 - (slots + 1) * 77_266_944 / 2**30) * 2**30) // 24_576
    assert status == 0 and row["max_tokens"] == tokens
    assert row["max_concurrency"] == min(tokens // 32_768, slots // 5)
    assert row["engine_log"].startswith(f"max_mamba_cache_size: {slots}, max_total_num_tokens={tokens}")


@pytest.mark.parametrize(("config", "message"), [
    ({"model_type": "jamba", "architectures": ["JambaForCausalLM"], "num_hidden_layers": 8, "hidden_size": 256,
      "num_attention_heads": 8}, "SGLang 0.5.23 has no Jamba model"),
])
def test_sglang_refuses_hybrids_it_does_not_serve(tmp_path, config, message):
    with pytest.raises(OptionError, match=message):
        footprint(read(config, tmp_path), Options(1, engine="sglang"))


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
def test_serving_engines_refuse_mtp_drafts_beside_state(tmp_path, engine):
    spec = read({**QWEN3_NEXT_80B, "num_nextn_predict_layers": 1}, tmp_path)
    assert footprint(spec, Options(10, engine=engine)).mtp_layers == 0
    with pytest.raises(OptionError, match="--mtp: .* decodes MTP drafts with extra state per recurrent layer"):
        footprint(spec, Options(10, engine=engine, mtp=True))


def test_kimi_linear_reads_a_layer_list_of_more_than_nine_layers(tmp_path):
    """Kimi-Linear-48B-A3B's 27 layers: full attention at 4, 8, ..., 24 and 27 (1-indexed), KDA elsewhere."""
    full = [4, 8, 12, 16, 20, 24, 27]
    config = {"model_type": "kimi_linear", **TINY, **KIMI, "num_hidden_layers": 27,
              "linear_attn_config": {"full_attn_layers": full, "kda_layers": [i for i in range(1, 28) if i not in full],
                                     "num_heads": 4, "head_dim": 8, "short_conv_kernel_size": 4}}
    spec = read(config, tmp_path)
    assert [i + 1 for i, kind in enumerate(spec.layer_kinds) if kind == "full"] == full
    with pytest.raises(SpecError, match="must list the layers 1 to 27 once"):
        read({**config, "linear_attn_config": {"full_attn_layers": full, "kda_layers": ["1"]}}, tmp_path)


def test_explain_says_how_tp_splits_the_state(tmp_path, cli):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(QWEN3_NEXT_80B))
    status, out, _ = cli("show", str(path), "--tp", "4", "--seq", "32k", "--explain")
    assert status == 0
    assert ("one GPU keeps, per sequence, the state of its share of the mixer's heads: conv state 2048 "
            "((2 × key heads × head_k_dim + value heads × head_v_dim) / 4) × 4 (conv_kernel), recurrent state "
            "8 (value heads) × 128 (head_k_dim) × 128 (head_v_dim)") in out
    assert "one GPU: 422,117,376 B" in out


def test_state_dtype_is_the_serving_engines_flag(tmp_path, cli):
    """--state-dtype is vLLM's --mamba-ssm-cache-dtype (Qwen3-Next in float32: a 2,146,304-B state
    page, blocks of 64 x cdiv(2,146,304, 131,072) = 1,088 tokens; 576 at tp 4, facts A.3) and SGLang's
    --mamba-ssm-dtype (bfloat16 halves the state slot); Kimi-Linear's KDA layers keep float32 in vLLM
    whatever it says."""
    from kvcalc.analytic import curve

    spec = read(QWEN3_NEXT_80B, tmp_path)
    assert curve(spec, Options(1, engine="vllm", state_dtype="float32")).engine.page_tokens == 1088
    four = Options(1, engine="vllm", state_dtype="float32", parallel=Parallel(tp=4))
    assert curve(spec, four).engine.page_tokens == 576
    sglang = footprint(spec, Options(1, engine="sglang", state_dtype="bfloat16"))
    assert sglang.state_bytes_per_sequence == 36 * (8192 * 3 * 2 + 32 * 128 * 128 * 2)
    kimi = read(VLLM_PAGED[-1][0], tmp_path)
    assert curve(kimi, Options(1, engine="vllm", state_dtype="bfloat16")).engine.page_tokens == 1920
    path = tmp_path / "config.json"
    path.write_text(json.dumps(QWEN3_NEXT_80B))
    for args, message in ((["--state-dtype", "float32"], "the state dtype is a serving engine's setting"),
                          (["--state-dtype", "fp8", "--engine", "vllm"], "expected one of float32, bfloat16"),
                          (["llama-3.1-8b", "--state-dtype", "float32", "--engine", "sglang"],
                           "llama-3.1-8b has no recurrent layers")):
        model = [] if args[0] == "llama-3.1-8b" else [str(path)]
        status, _, err = cli("show", *model, *args)
        assert status == 2 and message in err


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
def test_serving_engines_refuse_a_model_without_attention(tmp_path, engine):
    """Granite-4.0-H's all-Mamba default: neither engine's hybrid arithmetic applies."""
    spec = read({"model_type": "granitemoehybrid", "architectures": ["GraniteMoeHybridForCausalLM"],
                 "num_hidden_layers": 4, "hidden_size": 1024, "num_attention_heads": 8}, tmp_path)
    with pytest.raises(OptionError, match="how it serves a model without attention layers .* is not modelled"):
        footprint(spec, Options(10, engine=engine))


def test_sglang_state_share_follows_mamba_full_memory_ratio(tmp_path, cli):
    """A smaller state pool leaves the KV pool more tokens, until slots // 5 caps the requests."""
    path = tmp_path / "config.json"
    path.write_text(json.dumps(QWEN3_NEXT_80B))
    args = ("fit", str(path), "--gpu", "h200", "--seq", "32k", "--weights-dtype", "fp8", "--engine", "sglang",
            "--mem-fraction-static", "0.903", "--format", "json")
    status, out, _ = cli(*args, "--mamba-full-memory-ratio", "0.2")
    (row,) = json.loads(out)["rows"]
    budget = row["kv_budget_bytes_per_gpu"]
    slots = int((budget / 2**30 * 0.2 / 1.2 * 2**30 - 77_266_944) // 77_266_944)
    tokens = int((budget / 2**30 - (slots + 1) * 77_266_944 / 2**30) * 2**30) // 24_576
    assert status == 0 and (row["max_tokens"], row["max_concurrency"]) == (tokens, slots // 5)
    assert slots // 5 < tokens // 32_768  # the slots cap it, not the tokens
    status, _, err = cli("fit", str(path), "--gpu", "h200", "--seq", "32k", "--mamba-full-memory-ratio", "0.2")
    assert status == 2 and "it needs --engine sglang and a model with recurrent layers" in err


def test_serving_engines_refuse_dcp_beside_state(tmp_path):
    spec = read(QWEN3_NEXT_80B, tmp_path)
    with pytest.raises(OptionError, match="--dcp 2: vLLM does not run recurrent layers with decode context"):
        footprint(spec, Options(10, engine="vllm", parallel=Parallel(tp=2, dcp=2)))
    with pytest.raises(OptionError, match="--dcp 2: how SGLang splits a hybrid's state pool under decode"):
        footprint(spec, Options(10, engine="sglang", parallel=Parallel(tp=2, dcp=2)))
