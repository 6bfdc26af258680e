"""kvcalc check: an engine's start-up log against kvcalc's arithmetic (fixtures: tests/data/logs)."""

import json
from pathlib import Path

import pytest

from kvcalc.check import LogError, check_log

LOGS = Path(__file__).parent / "data" / "logs"


def figures(check) -> dict[str, tuple[str, str, str]]:
    return {f.name: (f.logged, f.computed, str(f.verdict)) for f in check.figures}


def test_vllm_uniform_log_agrees():
    check = check_log(LOGS / "vllm-llama-3.1-8b.log")
    assert check.engine == "vllm" and check.version == "0.33.0" and check.model == "llama-3.1-8b"
    assert figures(check) == {
        "GPU KV cache size (tokens)": ("888,032", "887,968 .. 888,048", "agree"),
        "Maximum concurrency": ("6.78x", "6.77x .. 6.78x", "agree"),
    }
    assert dict(check.settings)["max_num_batched_tokens"] == "8,192 (logged); in flight 16,384"


def test_vllm_sliding_log_agrees_on_the_admission_reservation():
    check = check_log(LOGS / "vllm-gemma-3-27b.log", model="gemma-3-27b")
    assert check.agrees
    assert figures(check)["Maximum concurrency"] == ("6.90x", "6.90x .. 6.90x", "agree")


def test_a_log_whose_figures_are_off_disagrees(cli):
    check = check_log(LOGS / "vllm-gemma-3-27b-wrong.log", model="gemma-3-27b")
    assert not check.agrees
    assert figures(check)["Maximum concurrency"] == ("24.30x", "6.90x .. 6.90x", "disagree")
    status, out, _ = cli("check", str(LOGS / "vllm-gemma-3-27b-wrong.log"), "--model", "gemma-3-27b")
    assert status == 1 and "some figures disagree with the logged memory" in out


def test_sglang_logs_agree():
    plain = check_log(LOGS / "sglang-llama-3.1-8b.log")
    assert plain.engine == "sglang" and plain.agrees
    assert figures(plain)["max_running_requests"] == ("3,468", "3,468", "agree")
    hybrid = check_log(LOGS / "sglang-gpt-oss-120b.log")
    assert hybrid.agrees
    assert figures(hybrid)["SWA pool #tokens = 0.8 x full, in pages"] == ("886,418", "886,418", "agree")
    assert figures(hybrid)["Full pool #tokens (from its 19.02 + 19.02 GB)"][2] == "agree"


def test_a_wrong_bytes_per_token_disagrees(tmp_path):
    """The same SGLang log read as if the model were Llama-3.1-70B: its pool bytes do not match."""
    check = check_log(LOGS / "sglang-llama-3.1-8b.log", model="llama-3.1-70b")
    assert not check.agrees
    assert figures(check)["KV pool #tokens (from its 54.20 + 54.20 GB)"][2] == "disagree"


def test_check_exit_codes_and_json(cli, tmp_path):
    status, out, _ = cli("check", str(LOGS / "vllm-llama-3.1-8b.log"), "--format", "json")
    doc = json.loads(out)
    assert status == 0 and doc["agrees"] is True and doc["engine"] == "vllm"
    assert doc["rows"][0] == {"figure": "GPU KV cache size (tokens)", "logged": "888,032",
                                 "computed": "887,968 .. 888,048", "verdict": "agree",
                                 "source": "v1/core/kv_cache_utils.py update_kv_cache_capacity"}
    status, _, err = cli("check", str(LOGS / "vllm-gemma-3-27b.log"))
    assert status == 2
    assert err.startswith(f"kvcalc: error: {LOGS / 'vllm-gemma-3-27b.log'}: the log's model "
                          "'google/gemma-3-27b-it' is not a bundled model, and reading it failed "
                          "(google/gemma-3-27b-it: config.json is not in the Hugging Face cache")
    assert err.endswith("name one with --model\n") and err.count("\n") == 1
    cut = tmp_path / "cut.log"
    cut.write_text("".join(line for line in (LOGS / "vllm-llama-3.1-8b.log").read_text().splitlines(True)
                           if "Available KV cache memory" not in line))
    status, _, err = cli("check", str(cut))
    assert (status, err) == (2, f"kvcalc: error: {cut}: no \"Available KV cache memory: X GiB\" line\n")
    other = tmp_path / "other.log"
    other.write_text("hello\n")
    status, _, err = cli("check", str(other))
    assert status == 2 and "neither a vLLM log" in err
    status, _, err = cli("check", str(tmp_path))
    assert (status, err) == (2, f"kvcalc: error: {tmp_path}: is a folder, not a log file (give the start-up "
                                "part of it)\n")


def test_the_logged_max_num_batched_tokens_decides_the_reservation(tmp_path):
    """Without the "Chunked prefill is enabled" line kvcalc takes vllm serve's H200 default (8,192);
    a log served with 2,048 reserves less, so its figures disagree with 8,192 and agree with 2,048."""
    text = (LOGS / "vllm-gemma-3-27b.log").read_text()
    bare = tmp_path / "bare.log"
    bare.write_text("".join(line for line in text.splitlines(True) if "Chunked prefill" not in line))
    assert check_log(bare, model="gemma-3-27b").agrees
    assert "assumed" in dict(check_log(bare, model="gemma-3-27b").settings)["max_num_batched_tokens"]
    assert not check_log(bare, model="gemma-3-27b", max_num_batched_tokens=2048).agrees
    with pytest.raises(LogError, match="a vLLM setting; this is an SGLang log"):
        check_log(LOGS / "sglang-llama-3.1-8b.log", max_num_batched_tokens=2048)


def test_sglang_mla_pool_is_the_latent_on_every_tp_rank():
    """DeepSeek-V3 on 8 GPUs: SGLang's MLATokenToKVPool keeps the 576-wide latent whole on every rank
    (61 x 576 B in fp8 per token); a latent split 8 ways would put 8x the tokens in the logged GB."""
    check = check_log(LOGS / "sglang-deepseek-v3-tp8.log")
    assert check.model == "deepseek-v3" and check.agrees
    assert figures(check)["KV pool #tokens (from its 45.23 GB)"] == ("1,382,133", "1,382,056 .. 1,382,362", "agree")
    assert dict(check.settings)["tp x pp"] == "8 x 1"


def test_vllm_mla_log_pages_of_64_and_the_latent_on_every_rank():
    """DeepSeek-V3 on 8 GPUs with an fp8 cache: FlashMLA's pages of 64 tokens, 61 x 576 B per token
    on every rank (v1/kv_cache_interface.py MLAAttentionSpec)."""
    check = check_log(LOGS / "vllm-deepseek-v3-tp8.log")
    assert check.model == "deepseek-v3" and check.agrees
    settings = dict(check.settings)
    assert settings["page"] == "64 tokens (vllm@flashmla)" and settings["kv-cache dtype"] == "fp8"
    assert figures(check)["Maximum concurrency"] == ("8.44x", "8.44x .. 8.44x", "agree")


def test_vllm_pool_follows_the_worker_with_least_memory(tmp_path):
    """Each TP worker logs its own "Available KV cache memory"; vLLM sizes every pool from the least."""
    text = (LOGS / "vllm-deepseek-v3-tp8.log").read_text()
    line = next(line for line in text.splitlines() if "Available KV cache memory" in line)
    more = line.replace("45.23 GiB", "47.50 GiB").replace("EngineCore_DP0", "Worker_TP1")
    log = tmp_path / "workers.log"
    log.write_text(text.replace(line, f"{more}\n{line}\n{more}"))
    check = check_log(log)
    assert check.agrees and dict(check.settings)["KV cache memory"] == "45.23 GiB (the least any worker logs)"


def test_check_reads_a_pipe(cli, monkeypatch):
    """``engine ... 2>&1 | kvcalc check /dev/stdin``: read to end of file, never waiting on a missing writer."""
    import os

    read, write = os.pipe()
    os.write(write, (LOGS / "vllm-llama-3.1-8b.log").read_bytes())
    os.close(write)
    status, out, _ = cli("check", f"/dev/fd/{read}")
    os.close(read)
    assert status == 0 and "every figure agrees" in out


def qwen3_next_config(tmp_path) -> str:
    from tests.test_recurrent import QWEN3_NEXT_80B

    path = tmp_path / "qwen3-next.json"
    path.write_text(json.dumps(QWEN3_NEXT_80B))
    return str(path)


def test_vllm_hybrid_log_agrees_on_the_aligned_block_and_state_pages(tmp_path):
    """40.0 GiB in blocks of 14,155,776 B (576 tokens x 12 layers' pages): 3,034; a 262,144-token
    request reserves 456 + 9: 6.52x (docs/facts/vllm-sglang-recurrent-state.md A.3)."""
    check = check_log(LOGS / "vllm-qwen3-next-80b.log", model=qwen3_next_config(tmp_path))
    assert check.agrees
    assert figures(check)["attention block size (hybrid)"] == ("576", "576", "agree")
    assert figures(check)["Maximum concurrency"] == ("6.52x", "6.52x .. 6.52x", "agree")


def test_sglang_hybrid_log_agrees_on_state_slots_and_their_cap(tmp_path):
    """262 slots + 1 of 77,266,944 B hold 0.43 + 18.49 GB; max_running_requests 52 = 262 // 5, not
    the 2,048 floor a model without state would get."""
    model = qwen3_next_config(tmp_path)
    check = check_log(LOGS / "sglang-qwen3-next-80b.log", model=model)
    assert check.agrees
    assert figures(check)["max_running_requests"] == ("52", "52", "agree")
    uncapped = tmp_path / "uncapped.log"
    uncapped.write_text((LOGS / "sglang-qwen3-next-80b.log").read_text().replace("max_running_requests=52",
                                                                                 "max_running_requests=2048"))
    assert figures(check_log(uncapped, model=model))["max_running_requests"] == ("2,048", "52", "disagree")
    stateless = tmp_path / "stateless.log"
    stateless.write_text("\n".join(line for line in (LOGS / "sglang-qwen3-next-80b.log").read_text().splitlines()
                                   if "Mamba Cache" not in line))
    with pytest.raises(LogError, match="keeps recurrent state, but there is no \"Mamba Cache is allocated"):
        check_log(stateless, model=model)
