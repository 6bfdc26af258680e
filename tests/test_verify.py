"""``kvcalc verify``: transformers' own cache of a short model, scaled per layer kind, beside kvcalc's
--engine transformers figure, tensor by tensor (tiny configs and every bundled model, on the CPU)."""

import json
from pathlib import Path

import pytest

from kvcalc.catalog import bundled_names

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
    "llama": [("K (keys)", "full", 4, 4 * 32 * 2 * 16 * 2), ("V (values)", "full", 4, 4 * 32 * 2 * 16 * 2)],
    "gemma3": [("K (keys)", "sliding", 7, 7 * 15 * 2 * 16 * 2), ("V (values)", "sliding", 7, 7 * 15 * 2 * 16 * 2),
               ("K (keys)", "full", 1, 32 * 2 * 16 * 2), ("V (values)", "full", 1, 32 * 2 * 16 * 2)],
    "deepseek_v3": [("latent (keys)", "full", 3, 3 * 32 * 16 * 2), ("rope key (values)", "full", 3, 3 * 32 * 8 * 2)],
    "qwen3_next": [("conv state (conv_states)", "recurrent", 6, None),
                   ("recurrent state (recurrent_states)", "recurrent", 6, None),
                   ("K (keys)", "full", 2, 2 * 32 * 2 * 16 * 2), ("V (values)", "full", 2, 2 * 32 * 2 * 16 * 2)],
}
CANNOT_BUILD = {
    "minimax-m1": "minimax-m1: transformers maps no model_type kvcalc reads to MiniMaxM1ForCausalLM; verify "
                  "cannot write its config",
}
"""Bundled models transformers 5.23 cannot build, and why: MiniMax-M1's class (MiniMaxM1ForCausalLM) is
remote code; transformers' minimax is MiniMax-Text-01's class, and taking it for M1's would be a guess."""


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
    assert [r[3] for r in rows if "state" not in r[0]] == [e[3] for e in EXPECTED[name] if "state" not in e[0]]
    assert all(r["transformers_bytes"] == r["kvcalc_bytes"] and r["verdict"] == "agree" for r in doc["rows"])


def test_the_short_model_holds_one_layer_of_each_kind_up_to_the_last_first(cli, tmp_path):
    """Gemma-3's pattern is five sliding layers, then a full one: six layers are built, not eight."""
    status, out, _ = cli("verify", config_file(tmp_path, "gemma3"), "--seq", "32", "--format", "json")
    assert status == 0 and json.loads(out)["built_layers"] == 6


def test_a_config_that_lists_its_layers_is_cut_to_one_layer_of_each_kind(cli, tmp_path):
    """Gemma-3 with layer_types: its first sliding layer and its first full one, not six layers."""
    text = {**CONFIGS["gemma3"]["text_config"],
            "layer_types": ["sliding_attention"] * 5 + ["full_attention"] + ["sliding_attention"] * 2}
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "gemma3", "text_config": text}))
    status, out, _ = cli("verify", str(path), "--seq", "32", "--format", "json")
    doc = json.loads(out)
    assert status == 0 and doc["built_layers"] == 2 and doc["agrees"]


def test_the_published_gemma_4_e4b_config_is_shortened_around_its_shared_layers(cli):
    published = Path(__file__).parent / "data" / "published" / "gemma-4-e4b-it.json"
    status, out, err = cli("verify", str(published), "--seq", "32", "--format", "json")
    doc = json.loads(out)
    assert status == 0, err
    assert doc["built_layers"] == 4 and doc["agrees"]
    assert [r["layers"] for r in doc["rows"] if r["layer_kind"] == "shared"] == [18]


def test_the_table_sets_the_figures_side_by_side(cli, tmp_path):
    status, out, _ = cli("verify", config_file(tmp_path, "llama"), "--seq", "32")
    assert status == 0
    assert "transformers B" in out and "kvcalc B" in out and "8,192" in out and "agree" in out
    assert "every part agrees" in out


def _one_part_off(monkeypatch, name: str) -> None:
    """kvcalc's part ``name`` one row (token) more than it computes."""
    import kvcalc.verify

    real = kvcalc.verify.footprint

    def wrong(spec, options):
        fp = real(spec, options)
        parts = tuple(p.__class__(**{**p.__dict__, "cells": p.cells + (p.name == name)}) for p in fp.parts)
        return fp.__class__(**{**fp.__dict__, "parts": parts})

    monkeypatch.setattr(kvcalc.verify, "footprint", wrong)


def test_a_wrong_kvcalc_figure_is_a_difference(cli, tmp_path, monkeypatch):
    _one_part_off(monkeypatch, "K")
    status, out, _ = cli("verify", config_file(tmp_path, "llama"), "--seq", "32")
    assert status == 1
    assert "disagree" in out and "some parts disagree: K (keys) on full layers" in out


@pytest.mark.parametrize(("model", "part", "row"), [
    ("llama-3.1-8b", "V", "V (values)"),
    ("deepseek-v3", "rope key", "rope key (values)"),
    ("deepseek-v3.2", "indexer key", "indexer key (indexer_keys)"),
    ("nemotron-3-nano-30b-a3b", "SSM state", "SSM state (recurrent_states)"),
    ("deepseek-v4-flash", "compressor gate, last window", "compressor gate, last window (overlap_gate.compressor)"),
])
def test_a_difference_names_the_part_and_the_tensor(cli, monkeypatch, model, part, row):
    """The kvcalc side of one part off by one token: that part's row, and only it, disagrees."""
    _one_part_off(monkeypatch, part)
    status, out, _ = cli("verify", model, "--seq", "32", "--format", "json")
    doc = json.loads(out)
    assert status == 1 and not doc["agrees"]
    differ = [r for r in doc["rows"] if r["verdict"] == "disagree"]
    assert [r["part"] for r in differ] == [row]
    assert differ[0]["kvcalc_bytes"] > differ[0]["transformers_bytes"]
    assert f"{row} on {differ[0]['layer_kind']} layers" in doc["notes"][-1]


def test_a_tensor_kvcalc_has_no_part_for_is_a_row_of_its_own(cli, monkeypatch):
    import kvcalc.verify

    monkeypatch.setitem(kvcalc.verify.TENSOR_PARTS, "values", ("W",))
    status, out, _ = cli("verify", "llama-3.1-8b", "--seq", "32", "--format", "json")
    rows = {r["part"]: r for r in json.loads(out)["rows"]}
    assert status == 1
    assert rows["V (no tensor)"]["transformers_bytes"] == 0 and rows["V (no tensor)"]["verdict"] == "disagree"
    assert rows["values: no kvcalc part"]["kvcalc_bytes"] == 0


@pytest.mark.parametrize("name", bundled_names())
def test_every_bundled_model_agrees_tensor_by_tensor(cli, name):
    status, out, err = cli("verify", name, "--seq", "32", "--format", "json")
    if name in CANNOT_BUILD:
        assert status == 2 and out == ""
        assert err == f"kvcalc: error: {CANNOT_BUILD[name]}\n"
        return
    doc = json.loads(out)
    assert status == 0, err
    assert doc["agrees"] and doc["model"] == name and doc["rows"]
    assert all(r["verdict"] == "agree" for r in doc["rows"])
    assert all(r["part"] == "nothing" or "(" in r["part"] for r in doc["rows"])  # every part names its tensor


@pytest.mark.parametrize("name", ["gpt-oss-20b", "mimo-v2-flash", "deepseek-v4-flash"])
def test_windows_and_compressors_agree_past_the_window(cli, name):
    """301 tokens: past the 128-token windows and a 128-token compress window, with a compressor's
    open window part-filled (301 = 75 x 4 + 1)."""
    status, out, _ = cli("verify", name, "--seq", "301", "--format", "json")
    rows = json.loads(out)["rows"]
    assert status == 0 and all(r["verdict"] == "agree" for r in rows)
    per_layer = {(r["part"], r["layer_kind"]): r["kvcalc_bytes"] // r["layers"] for r in rows}
    if ("K (keys)", "full") in per_layer:
        assert per_layer["K (keys)", "sliding"] < per_layer["K (keys)", "full"]
    assert name != "deepseek-v4-flash" or all(b for (part, _), b in per_layer.items() if "open window" in part)


@pytest.mark.parametrize("name", ["gemma-3n-e4b", "gemma-4-e4b"])
def test_kv_shared_layers_are_kept_one_of_each_kind_then_shared(name):
    """The short model has one unshared layer of each kind, then one shared layer of each kind (the
    last num_kv_shared_layers), which reuses the cache of the unshared one."""
    built, own = 4, 2
    from kvcalc.catalog import resolve
    from kvcalc.spec import LayerKind
    from kvcalc.verify import config_from_spec, shortened

    spec = resolve(name)
    short, kinds = shortened(config_from_spec(spec), spec)
    assert short["num_hidden_layers"] == built and short["num_kv_shared_layers"] == built - own
    assert short["layer_types"][:own] == short["layer_types"][own:]
    assert set(short["layer_types"][own:]) == {"sliding_attention", "full_attention"}
    assert kinds[own:] == (LayerKind.SHARED,) * own and LayerKind.SHARED not in kinds[:own]


def test_shared_layers_hold_nothing_on_either_side(cli):
    status, out, _ = cli("verify", "gemma-3n-e4b", "--seq", "32", "--format", "json")
    rows = [r for r in json.loads(out)["rows"] if r["layer_kind"] == "shared"]
    assert status == 0 and json.loads(out)["built_layers"] == 4
    assert rows == [{"part": "nothing", "layer_kind": "shared", "layers": 15, "transformers_bytes": 0,
                     "kvcalc_bytes": 0, "verdict": "agree"}]


@pytest.mark.parametrize(("name", "fields"), [
    ("deepseek-v3", {"model_type": "deepseek_v3", "num_hidden_layers": 61, "kv_lora_rank": 512,
                     "qk_rope_head_dim": 64, "q_lora_rank": 1536, "num_key_value_heads": 128}),
    ("gemma-3-27b", {"model_type": "gemma3_text", "sliding_window": 1024, "head_dim": 128}),
    ("gemma-4-26b-a4b", {"model_type": "gemma4_text", "global_head_dim": 512, "attention_k_eq_v": True,
                         "num_global_key_value_heads": 2}),
    ("llama-4-scout", {"model_type": "llama4_text", "attention_chunk_size": 8192}),
    ("longcat-flash", {"model_type": "longcat_flash", "num_layers": 28}),
    ("falcon-7b", {"model_type": "falcon", "multi_query": True}),
])
def test_a_bundled_spec_is_written_as_its_family_config(name, fields):
    from kvcalc.catalog import resolve
    from kvcalc.verify import config_from_spec

    written = config_from_spec(resolve(name))
    assert {k: written[k] for k in fields} == fields


def test_a_config_kvcalc_reads_back_otherwise_is_refused(cli, monkeypatch):
    """Never verify something other than the bundled spec: a written config that kvcalc reads to
    another spec is refused, naming the first field that differs."""
    import kvcalc.verify

    real = kvcalc.verify.config_from_spec
    monkeypatch.setattr(kvcalc.verify, "config_from_spec", lambda spec: {**real(spec), "head_dim": 64})
    status, out, err = cli("verify", "llama-3.1-8b", "--seq", "32")
    assert status == 2 and out == ""
    assert err.startswith("kvcalc: error: cannot write a config for llama-3.1-8b that kvcalc reads back as "
                          "the bundled spec: attention reads ") and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(("model", "message"), [
    ("minimax-m1", CANNOT_BUILD["minimax-m1"]),
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


@pytest.mark.parametrize("model", ["{llama}", "llama-3.1-8b"])
def test_without_transformers_it_says_what_to_install(cli, tmp_path, monkeypatch, model):
    import sys

    monkeypatch.setitem(sys.modules, "transformers", None)
    status, _, err = cli("verify", model.format(llama=config_file(tmp_path, "llama")))
    assert status == 2 and 'pip install "kvcalc[verify]"' in err


def test_seq_needs_a_prefill_and_a_decode_token(cli, tmp_path):
    status, _, err = cli("verify", config_file(tmp_path, "llama"), "--seq", "1")
    assert status == 2 and "at least 2 tokens" in err


def test_verify_checks_the_transformers_engine_only(cli):
    status, out, err = cli("verify", "llama-3.1-8b", "--engine", "vllm")
    assert status == 2 and out == ""
    assert err.startswith("kvcalc: error: --engine vllm: verify runs transformers' own model")
    status, out, _ = cli("verify", "llama-3.1-8b", "--engine", "transformers", "--seq", "16", "-f", "json")
    assert status == 0 and json.loads(out)["agrees"]
