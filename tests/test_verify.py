"""``kvcalc verify``: transformers' own cache of a short model, scaled per layer kind, beside kvcalc's
--engine transformers figure (tiny configs, on the CPU, in seconds)."""

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

TINY = {"vocab_size": 97, "hidden_size": 64, "intermediate_size": 64, "num_attention_heads": 4,
        "num_key_value_heads": 2, "max_position_embeddings": 256, "pad_token_id": 0}
CONFIGS = {
    "llama": {"model_type": "llama", **TINY, "num_hidden_layers": 4},
    "gemma3": {"model_type": "gemma3", "text_config": {**TINY, "head_dim": 16, "num_hidden_layers": 8,
                                                       "sliding_window": 16}},
    "deepseek_v3": {"model_type": "deepseek_v3", **TINY, "num_hidden_layers": 3, "num_key_value_heads": 4,
                    "kv_lora_rank": 16, "q_lora_rank": None, "qk_rope_head_dim": 8, "qk_nope_head_dim": 16,
                    "v_head_dim": 12, "n_routed_experts": 8, "num_experts_per_tok": 2, "n_group": 2,
                    "topk_group": 1, "moe_intermediate_size": 32, "first_k_dense_replace": 1},
    "qwen3_next": {"model_type": "qwen3_next", **TINY, "num_hidden_layers": 8, "head_dim": 16,
                   "linear_conv_kernel_dim": 4, "linear_key_head_dim": 8, "linear_value_head_dim": 12,
                   "linear_num_key_heads": 2, "linear_num_value_heads": 4, "num_experts": 8,
                   "num_experts_per_tok": 2, "moe_intermediate_size": 32, "shared_expert_intermediate_size": 32},
}
# (part, layer kind, layers, bytes) at 32 tokens, bf16: K and V of 2 heads x 16 wide per token and layer.
EXPECTED = {
    "llama": [("cache", "full", 4, 4 * 32 * 2 * 2 * 16 * 2)],
    "gemma3": [("cache", "sliding", 7, 7 * 15 * 2 * 2 * 16 * 2), ("cache", "full", 1, 32 * 2 * 2 * 16 * 2)],
    "deepseek_v3": [("cache", "full", 3, 3 * 32 * (16 + 8) * 2)],
    "qwen3_next": [("state", "recurrent", 6, None), ("cache", "full", 2, 2 * 32 * 2 * 2 * 16 * 2)],
}


def config_file(tmp_path, name: str) -> str:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(CONFIGS[name]))
    return str(path)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_transformers_holds_what_kvcalc_says(cli, tmp_path, name):
    status, out, err = cli("verify", config_file(tmp_path, name), "--seq", "32", "--format", "json")
    doc = json.loads(out)
    assert status == 0, err
    assert doc["agrees"] and doc["seq_len"] == 32
    rows = [(r["part"], r["layer_kind"], r["layers"], r["kvcalc_bytes"]) for r in doc["rows"]]
    assert [r[:3] for r in rows] == [e[:3] for e in EXPECTED[name]]
    assert [r[3] for r in rows if r[0] == "cache"] == [e[3] for e in EXPECTED[name] if e[0] == "cache"]
    assert all(r["transformers_bytes"] == r["kvcalc_bytes"] and r["verdict"] == "agree" for r in doc["rows"])


def test_the_short_model_holds_one_layer_of_each_kind_up_to_the_last_first(cli, tmp_path):
    """Gemma-3's pattern is five sliding layers, then a full one: six layers are built, not eight."""
    status, out, _ = cli("verify", config_file(tmp_path, "gemma3"), "--seq", "32", "--format", "json")
    assert status == 0 and json.loads(out)["built_layers"] == 6


def test_the_table_sets_the_figures_side_by_side(cli, tmp_path):
    status, out, _ = cli("verify", config_file(tmp_path, "llama"), "--seq", "32")
    assert status == 0
    assert "transformers B" in out and "kvcalc B" in out and "16,384" in out and "agree" in out
    assert "every part agrees" in out


def test_a_wrong_kvcalc_figure_is_a_difference(cli, tmp_path, monkeypatch):
    import kvcalc.verify

    real = kvcalc.verify.footprint

    def wrong(spec, options):
        fp = real(spec, options)
        part = fp.parts[0]
        return fp.__class__(**{**fp.__dict__, "parts": (part.__class__(**{**part.__dict__, "cells": part.cells + 1}),
                                                        *fp.parts[1:])})

    monkeypatch.setattr(kvcalc.verify, "footprint", wrong)
    status, out, _ = cli("verify", config_file(tmp_path, "llama"), "--seq", "32")
    assert status == 1
    assert "disagree" in out and "some parts disagree" in out


@pytest.mark.parametrize(("model", "message"), [
    ("llama-3.1-8b", "a bundled spec holds no config transformers can build; pass the model's config.json"),
    ("{reference}", "not a Hugging Face config.json"),
])
def test_what_transformers_cannot_build_exits_2(cli, tmp_path, model, message):
    reference = tmp_path / "params.json"  # DeepSeek's reference config: kvcalc reads it, transformers cannot
    reference.write_text(json.dumps({"vocab_size": 129280, "dim": 7168, "inter_dim": 18432, "n_layers": 61,
                                     "n_heads": 128, "q_lora_rank": 1536, "kv_lora_rank": 512,
                                     "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128}))
    status, out, err = cli("verify", model.format(reference=reference))
    assert status == 2 and out == ""
    assert message in err and len(err.strip().splitlines()) == 1


def test_a_build_failure_exits_2_in_one_line(cli, tmp_path, monkeypatch):
    import transformers

    def fail(*args, **kwargs):
        raise ValueError("no such architecture\nsecond line")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_config", fail)
    status, _, err = cli("verify", config_file(tmp_path, "llama"))
    assert status == 2
    assert err == "kvcalc: error: transformers cannot build or run model_type 'llama': ValueError: no such architecture\n"


def test_without_transformers_it_says_what_to_install(cli, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "transformers", None)
    status, _, err = cli("verify", config_file(tmp_path, "llama"))
    assert status == 2 and 'pip install "kvcalc[verify]"' in err


def test_seq_needs_a_prefill_and_a_decode_token(cli, tmp_path):
    status, _, err = cli("verify", config_file(tmp_path, "llama"), "--seq", "1")
    assert status == 2 and "at least 2 tokens" in err
