"""Configs read as transformers 5.23 reads them, checked against the real library: its config
classes (class defaults, the layout each derives) and its cache's own rule for which layer slides
(``cache_utils.get_layer_types_and_kwargs``). Families kvcalc does not model are refused by name."""

import json

import pytest
from transformers import AutoConfig  # the test extra pins transformers==5.23.0
from transformers.cache_utils import get_layer_types_and_kwargs

from kvcalc.analytic import Options, footprint
from kvcalc.catalog import parse_spec
from kvcalc.errors import SpecError
from kvcalc.families import FAMILIES, NOT_MODELLED
from kvcalc.spec import MlaAttention
from tests.test_hf import FAMILIES as HF_FIXTURES

BASE = {"hidden_size": 512, "num_attention_heads": 8, "num_key_value_heads": 2, "num_hidden_layers": 12,
        "head_dim": 64, "vocab_size": 1000, "intermediate_size": 1024}

# (model_type, fields beyond BASE): published configs often leave layer_types out and let the class
# derive it; each case is read by kvcalc and by transformers from the same dict.
CASES = [
    ("llama", {}),
    ("gemma", {}),
    ("glm4", {}),
    ("glm4_moe", {}),
    ("minimax_m2", {}),
    ("seed_oss", {}),
    ("granite", {}),
    ("mistral", {}),  # the class default window, 4096, on every layer
    ("mistral", {"sliding_window": None}),
    ("mixtral", {"sliding_window": 4096}),
    ("mixtral", {}),
    ("phi3", {"sliding_window": 2047}),
    ("ministral", {}),
    ("qwen2", {"use_sliding_window": True, "sliding_window": 4096, "max_window_layers": 4}),
    ("qwen2", {"use_sliding_window": True, "sliding_window": 4096}),  # max_window_layers 28: none
    ("qwen2", {"use_sliding_window": False, "sliding_window": 131072}),
    ("qwen3", {"use_sliding_window": True, "sliding_window": 4096, "max_window_layers": 0}),
    ("qwen2_moe", {"use_sliding_window": True, "sliding_window": 4096, "max_window_layers": 7}),
    ("qwen3_moe", {"use_sliding_window": True, "sliding_window": 4096, "max_window_layers": 4}),
    ("qwen3_moe", {"sliding_window": 4096}),
    ("gemma2", {}),
    ("gemma3_text", {}),
    ("gemma3_text", {"sliding_window_pattern": 4, "sliding_window": 512}),
    ("gpt_oss", {}),
    ("cohere2", {}),
    ("cohere2", {"sliding_window_pattern": 3}),
    ("olmo3", {}),
    ("exaone4", {}),
    ("exaone4", {"sliding_window_pattern": 2, "sliding_window": 2048}),
    ("smollm3", {"use_sliding_window": True, "sliding_window": 4096}),
    ("smollm3", {"use_sliding_window": True, "sliding_window": 4096, "no_rope_layer_interval": 3}),
    ("smollm3", {}),
    ("gpt_oss", {"layer_types": ["full_attention", "sliding_attention"] * 6}),
    ("gemma3n_text", {"num_kv_shared_layers": 4}),  # the last 4 reuse earlier layers' caches
    ("gemma3n_text", {"num_kv_shared_layers": 0}),
    ("gemma3n_text", {"num_kv_shared_layers": 2, "layer_types": ["sliding_attention"] * 4 + ["full_attention"]
                      + ["sliding_attention"] * 4 + ["full_attention"] + ["sliding_attention"] * 2}),
    ("llama4_text", {}),  # every 4th layer full (NoPE), the others chunked by 8192
    ("llama4_text", {"attention_chunk_size": 1024, "no_rope_layer_interval": 3}),
    ("llama4_text", {"no_rope_layers": [1, 0] * 6}),
    ("llama4_text", {"layer_types": ["chunked_attention", "full_attention"] * 6}),
    ("gemma4_text", {}),
    ("gemma4_text", {"num_kv_shared_layers": 4, "sliding_window": 1024}),
    ("gemma4_text", {"layer_types": ["sliding_attention"] * 12}),  # the last forced full
    ("gemma4_text", {"use_bidirectional_attention": "vision"}),
    ("mimo_v2_flash", {}),
    ("mimo_v2_flash", {"sliding_window_size": 128}),
    ("glm_moe_dsa", {}),
    ("glm_moe_dsa", {"index_topk_freq": 1, "index_skip_topk_offset": 0}),
]


def read(config: dict, tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return parse_spec(path.read_text(), str(path))


def reference_layers(config: dict) -> list[tuple[str, int | None]]:
    """Every layer's (kind, window) in the cache transformers builds for ``config``."""
    text = AutoConfig.for_model(**config).get_text_config()
    types, kwargs = get_layer_types_and_kwargs(text)
    kinds = {"full_attention": "full", "sliding_attention": "sliding", "chunked_attention": "chunked",
             "dummy": "shared", "indexed_attention": "full"}
    return [(kinds[t], k.get("sliding_window")) for t, k in zip(types, kwargs, strict=True)]


def our_layers(spec) -> list[tuple[str, int | None]]:
    return [(str(k), spec.span(k)) for k in spec.layer_kinds]


@pytest.mark.parametrize(("model_type", "fields"), CASES, ids=[f"{t}-{i}" for i, (t, _) in enumerate(CASES)])
def test_layers_match_transformers(tmp_path, model_type, fields):
    config = {"model_type": model_type, **BASE, **fields}
    spec = read(config, tmp_path)
    assert our_layers(spec) == reference_layers(config)


MLA_TYPES = {"deepseek_v2", "deepseek_v3", "deepseek_v32", "minicpm3", "glm_moe_dsa", "longcat_flash"}
PER_LAYER = {"gemma4_text", "mimo_v2_flash"}


@pytest.mark.parametrize("model_type", sorted({t for t, _ in CASES} - MLA_TYPES - PER_LAYER))
def test_heads_match_transformers(tmp_path, model_type):
    config = {"model_type": model_type, **{k: v for k, v in BASE.items() if k != "head_dim"}}
    if model_type == "gemma3n_text":
        config["num_kv_shared_layers"] = 4  # its default, 15, is more than BASE's 12 layers
    spec = read(config, tmp_path)
    text = AutoConfig.for_model(**config).get_text_config()
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    assert (spec.attention.num_kv_heads, spec.attention.head_dim) == (text.num_key_value_heads, head_dim)


@pytest.mark.parametrize("fields", [
    {}, {"attention_k_eq_v": True, "num_global_key_value_heads": 1},
    {"attention_k_eq_v": False, "num_global_key_value_heads": 1, "global_head_dim": 384},
    {"attention_k_eq_v": True, "num_global_key_value_heads": 1, "num_kv_shared_layers": 4},
])
def test_gemma4_per_layer_shapes_match_transformers(tmp_path, fields):
    """Full layers take global_head_dim, and num_global_key_value_heads only with attention_k_eq_v
    (transformers' per_layer_config)."""
    config = {"model_type": "gemma4_text", **BASE, **fields}
    spec = read(config, tmp_path)
    text = AutoConfig.for_model(**config)
    want = [(text.per_layer_config[i].head_dim, text.per_layer_config[i].num_key_value_heads)
            for i in range(text.num_hidden_layers)]
    ours = [(spec.attention_for(k).head_dim, spec.attention_for(k).num_kv_heads) for k in spec.layer_kinds]
    shared = sum(k == "shared" for k in spec.layer_kinds)
    assert ours[:len(ours) - shared] == want[:len(want) - shared]


def test_gemma4_per_layer_config_in_the_file_is_read(tmp_path):
    text = AutoConfig.for_model(model_type="gemma4_text", **BASE, global_head_dim=128)
    config = {"model_type": "gemma4_text", **BASE, "per_layer_config": {"5": {"head_dim": 128}, "11": {"head_dim": 128}}}
    spec = read(config, tmp_path)
    assert spec.attention_for("full").head_dim == text.per_layer_config[5].head_dim == 128


def test_mimo_sliding_layers_have_twice_the_kv_heads(tmp_path):
    spec = read({"model_type": "mimo_v2_flash", **BASE}, tmp_path)
    assert (spec.attention.num_kv_heads, spec.attention.head_dim, spec.attention.value_dim) == (2, 64, 128)
    assert spec.attention_for("sliding").num_kv_heads == 4
    with pytest.raises(SpecError, match=r"swa_num_key_value_heads: 8: transformers' sliding layers use 2 x num_key_value_heads 2"):
        read({"model_type": "mimo_v2_flash", **BASE, "swa_num_key_value_heads": 8}, tmp_path)


def test_longcat_has_two_attention_layers_per_decoder_layer(tmp_path):
    config = {"model_type": "longcat_flash", **{k: v for k, v in BASE.items() if k != "num_hidden_layers"},
              "num_layers": 6}
    spec = read(config, tmp_path)
    assert (spec.num_layers, spec.sublayers) == (AutoConfig.for_model(**config).num_hidden_layers, 2) == (12, 2)


@pytest.mark.parametrize("fields", [{"index_topk_freq": 4}, {"index_topk_pattern": "FFSFSSFSSFSS"},
                                    {"indexer_types": ["full", "shared"] * 6}])
def test_glm5_layers_that_reuse_an_indexer_are_refused(tmp_path, fields):
    """transformers derives the same indexer_types; its "shared" layers hold no indexer keys."""
    shared = AutoConfig.for_model(model_type="glm_moe_dsa", **BASE, **fields).indexer_types.count("shared")
    assert shared
    with pytest.raises(SpecError, match=rf"indexer_types: {shared} of 12 layers reuse another layer's indexer"):
        read({"model_type": "glm_moe_dsa", **BASE, **fields}, tmp_path)


@pytest.mark.parametrize("model_type", ["deepseek_v2", "deepseek_v3", "deepseek_v32", "minicpm3", "glm_moe_dsa"])
def test_mla_families_take_the_class_defaults(tmp_path, model_type):
    config = {"model_type": model_type, **BASE}
    spec = read(config, tmp_path)
    text = AutoConfig.for_model(**config)
    attn = spec.attention
    assert isinstance(attn, MlaAttention)
    keys = ("kv_lora_rank", "q_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim")
    assert [getattr(attn, k) for k in keys] == [getattr(text, k) for k in keys]
    assert any("kv_lora_rank 512" in a or "kv_lora_rank 256" in a for a in spec.assumptions)


def test_an_explicit_null_is_not_replaced_by_the_default(tmp_path):
    spec = read({"model_type": "deepseek_v2", **BASE, "q_lora_rank": None, "kv_lora_rank": 512}, tmp_path)
    assert spec.attention.q_lora_rank is None  # DeepSeek-V2-Lite: a plain query projection


def test_falcon_heads_follow_its_architecture_flags(tmp_path):
    base = {"model_type": "falcon", "hidden_size": 512, "num_attention_heads": 8, "num_hidden_layers": 4}
    assert read(base, tmp_path).attention.num_kv_heads == 1  # multi_query, true by default
    new = {**base, "new_decoder_architecture": True, "num_kv_heads": 2}
    assert read(new, tmp_path).attention.num_kv_heads == 2
    assert read({**base, "multi_query": False}, tmp_path).attention.num_kv_heads == 8


@pytest.mark.parametrize("model_type", sorted(NOT_MODELLED))
def test_families_kvcalc_does_not_model_are_refused(tmp_path, model_type):
    with pytest.raises(SpecError, match=rf"model_type: '{model_type}': kvcalc does not model .* yet"):
        read({"model_type": model_type, **BASE}, tmp_path)


def test_a_chunked_layer_type_outside_llama4_is_refused(tmp_path):
    config = {"model_type": "llama", **BASE, "layer_types": ["chunked_attention"] * 12}
    with pytest.raises(SpecError, match=r"layer_types: 'chunked_attention' is not supported"):
        read(config, tmp_path)


def test_an_unknown_family_with_classic_fields_is_read_and_said(tmp_path):
    spec = read({"model_type": "acme_lm", **BASE}, tmp_path)
    assert spec.layer_counts["full"] == 12
    assert spec.assumptions[0].startswith("model_type 'acme_lm' is not a family kvcalc knows")


def test_an_unknown_family_with_other_fields_is_refused(tmp_path):
    config = {"model_type": "acme_lm", **BASE, "sliding_window": 512, "shared_kv_layers": 4}
    with pytest.raises(SpecError, match=r"'acme_lm' is not a family kvcalc knows, and its config holds "
                                        r"fields kvcalc does not understand: shared_kv_layers, sliding_window"):
        read(config, tmp_path)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"model_type": "llama", "kv_lora_rank": 512}, r"kv_lora_rank: llama has no latent attention"),
        ({"model_type": "llama", "sliding_window": 4096}, r"sliding_window: llama layers do not slide"),
        ({"model_type": "gemma3_text", "use_bidirectional_attention": True},
         r"use_bidirectional_attention: True: kvcalc does not model this gemma3_text variant"),
        ({"model_type": "exaone4", "sliding_window_pattern": "LLLG"}, r"sliding_window_pattern: 'LLLG'"),
    ],
)
def test_fields_a_family_does_not_use_are_refused(tmp_path, fields, message):
    with pytest.raises(SpecError, match=message):
        read({**BASE, **fields}, tmp_path)


def test_every_family_is_covered_here():
    from tests.test_recurrent import MODELS as RECURRENT

    tested = {t for t, _ in CASES} | MLA_TYPES | {"falcon"} | {t for t, _ in RECURRENT}
    # not transformers types, or wrappers whose text_config is read
    # deepseek_v4: tests/test_deepseek_v4.py
    assert set(FAMILIES) - tested == {"kimi_k2", "gemma3", "gemma3n", "llama4", "gemma4", "deepseek_v4",
                                      "qwen3_5", "qwen3_5_moe"}


@pytest.mark.parametrize("family", [f for f in HF_FIXTURES if f != "kimi_k2"])
def test_published_shapes_match_transformers(tmp_path, family):
    config, _ = HF_FIXTURES[family]
    spec = read(config, tmp_path)
    assert our_layers(spec) == reference_layers(config)


TINY = {"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
        "num_hidden_layers": 6, "intermediate_size": 64, "vocab_size": 128, "max_position_embeddings": 256,
        "pad_token_id": 0}
TINY_MOE = {"num_experts": 4, "num_local_experts": 4, "n_routed_experts": 4, "num_experts_per_tok": 2,
            "moe_intermediate_size": 32, "n_shared_experts": 1, "first_k_dense_replace": 1, "n_group": 1,
            "topk_group": 1}
# MLA: no head_dim (transformers sets it to the rope width), one KV head per query head.
TINY_MLA = {"head_dim": None, "num_key_value_heads": 4, "kv_lora_rank": 32, "q_lora_rank": 48,
            "qk_rope_head_dim": 8, "qk_nope_head_dim": 16, "v_head_dim": 16}
WINDOW = {"sliding_window": 8}
MODELS = [
    ("llama", {}), ("gemma", {}), ("qwen3", {}), ("mistral", WINDOW), ("phi3", WINDOW), ("ministral", WINDOW),
    ("mixtral", TINY_MOE), ("glm4_moe", TINY_MOE), ("gemma2", WINDOW), ("gemma3_text", WINDOW),
    ("cohere2", WINDOW), ("olmo3", WINDOW), ("exaone4", WINDOW), ("gpt_oss", {**WINDOW, **TINY_MOE}),
    ("qwen2", {**WINDOW, "use_sliding_window": True, "max_window_layers": 2}),
    ("qwen3_moe", {**WINDOW, **TINY_MOE, "use_sliding_window": True}),
    ("smollm3", {**WINDOW, "use_sliding_window": True}),
    ("falcon", {"head_dim": None}),
    ("deepseek_v3", {**TINY_MOE, **TINY_MLA}), ("deepseek_v2", {**TINY_MOE, **TINY_MLA, "q_lora_rank": None}),
    ("deepseek_v32", {**TINY_MOE, **TINY_MLA, "index_head_dim": 32, "index_n_heads": 4, "index_topk": 8}),
    ("minicpm3", TINY_MLA),
    ("gemma3n_text", {**WINDOW, "num_hidden_layers": 10, "num_kv_shared_layers": 4, "laurel_rank": 4,
                      "vocab_size_per_layer_input": 128, "hidden_size_per_layer_input": 8,
                      "activation_sparsity_pattern": [0.0] * 10}),
    ("llama4_text", {"attention_chunk_size": 8, "intermediate_size_mlp": 128, "num_local_experts": 2,
                     "num_experts_per_tok": 1, "interleave_moe_layer_step": 2}),
    ("gemma4_text", {**WINDOW, "num_hidden_layers": 8, "global_head_dim": 32, "vocab_size_per_layer_input": 128,
                     "hidden_size_per_layer_input": 8}),
    ("gemma4_text", {**WINDOW, "num_hidden_layers": 8, "global_head_dim": 32, "vocab_size_per_layer_input": 128,
                     "hidden_size_per_layer_input": 8, "attention_k_eq_v": True, "num_global_key_value_heads": 1,
                     "num_kv_shared_layers": 2}),
    ("mimo_v2_flash", {**WINDOW, "num_hidden_layers": 8, "head_dim": 24, "v_head_dim": 16, "n_routed_experts": 4,
                       "num_experts_per_tok": 2, "moe_intermediate_size": 32}),
    ("longcat_flash", {**TINY_MLA, "head_dim": 8, "num_hidden_layers": None, "num_layers": 2, "ffn_hidden_size": 64,
                       "expert_ffn_hidden_size": 32, "n_routed_experts": 4, "moe_topk": 2, "zero_expert_num": 2}),
    ("glm_moe_dsa", {**TINY_MOE, **TINY_MLA, "index_head_dim": 32, "index_n_heads": 4, "index_topk": 8}),
]


@pytest.mark.parametrize(("model_type", "fields"), MODELS, ids=[f"{t}-{i}" for i, (t, _) in enumerate(MODELS)])
def test_cache_bytes_match_transformers(tmp_path, model_type, fields):
    """A tiny model of the family, built by transformers from the config kvcalc reads: a 20-token
    prefill and one decode step, then every tensor its DynamicCache holds, summed, equals kvcalc's
    --engine transformers figure for 21 tokens (fp32, the model's dtype). Sliding layers hold the
    last window - 1 tokens; MLA layers the latent and the rope key; DSA layers the indexer keys too."""
    import torch
    from transformers import AutoModelForCausalLM

    config = {k: v for k, v in {"model_type": model_type, **TINY, **fields}.items() if v is not None}
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config)).eval()
    with torch.no_grad():
        cache = model(torch.randint(0, 128, (1, 20)), use_cache=True).past_key_values
        model(torch.randint(0, 128, (1, 1)), past_key_values=cache, use_cache=True)
    held = 0
    for layer in cache.layers:
        for name, t in vars(layer).items():
            if not isinstance(t, torch.Tensor):
                continue
            if name in ("keys", "values", "indexer_keys"):
                held += t.numel() * t.element_size()
            else:  # bookkeeping (a sliding layer's window size), never per-token data
                assert t.numel() <= 1, name
    spec = read(config, tmp_path)
    assert footprint(spec, Options(21, kv_dtype="fp32", engine="transformers")).total_bytes == held
