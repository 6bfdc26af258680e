"""The command line through its real entry point: output text, exit codes, one-line errors."""

import csv
import io
import json
import subprocess
import sys

COMPARE_TABLE = """\
KV cache, bf16, engine-neutral, MLA latent layout, batch 1

  Model           Attn   Layout   Tokens   B/token   KV cache   MHA-equiv   vs MHA
──────────────────────────────────────────────────────────────────────────────────────
  DeepSeek-V3     MLA    latent       4k    70,272    274 MiB    19.1 GiB   71.1× less
  DeepSeek-V3     MLA    latent     128k    70,272   8.58 GiB     610 GiB   71.1× less
  Llama-3.1-70B   GQA    kv           4k   327,680   1.25 GiB    10.0 GiB   8.0× less
  Llama-3.1-70B   GQA    kv         128k   327,680   40.0 GiB     320 GiB   8.0× less
"""


def test_compare_table(cli):
    status, out, err = cli("compare", "deepseek-v3", "llama-3.1-70b", "--seq", "4k,128k")
    assert (status, err) == (0, "")
    assert out == COMPARE_TABLE


def test_compare_json_rows(cli):
    status, out, _ = cli("compare", "deepseek-v3", "--seq", "128k", "--mtp", "-f", "json")
    assert status == 0
    (row,) = json.loads(out)["rows"]
    assert row == {
        "model": "deepseek-v3",
        "display_name": "DeepSeek-V3",
        "attention": "MLA",
        "layout": "latent",
        "kv_dtype": "bf16",
        "engine": "ideal",
        "seq_len": 131072,
        "batch": 1,
        "mtp_layers": 1,
        "bytes_per_token": 71_424,
        "total_bytes": 9_361_686_528,
        "per_gpu_bytes": 9_361_686_528,
        "request_bytes": 9_361_686_528,  # the ideal reserves what it holds
        "state_bytes_per_sequence": 0,
        "gpus": 1,
        "mha_equivalent_bytes": 128 * (192 + 128) * 2 * 62 * 131072,  # decompressed, with MTP
    }


def test_compare_csv_carries_raw_integers(cli, spec_file):
    status, out, _ = cli(
        "compare", str(spec_file()), "llama-3.1-8b", "--seq", "8192", "--batch", "16",
        "--kv-dtype", "fp8", "--format", "csv",
    )
    assert status == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [r["model"] for r in rows] == ["tiny", "llama-3.1-8b"]
    assert rows[1]["total_bytes"] == str(65_536 * 8192 * 16)
    assert rows[0]["bytes_per_token"] == str(2 * 2 * 8 * 1 * 4)  # K+V, 2 KV heads x 8, fp8, 4 layers


def test_compare_markdown_to_file(cli, tmp_path):
    target = tmp_path / "kv.md"
    status, out, err = cli(
        "compare", "deepseek-v3", "--seq", "128k", "--layout", "decompressed",
        "--format", "markdown", "--output", str(target),
    )
    assert (status, out) == (0, "")
    assert err == f"kvcalc: wrote {target}\n"
    assert target.read_text().splitlines()[2:5] == [
        "| Model | Attn | Layout | Tokens | B/token | KV cache | MHA-equiv | vs MHA |",
        "|---|---|---|---:|---:|---:|---:|---|",
        "| DeepSeek-V3 | MLA | decompressed | 128k | 4,997,120 | 610 GiB | 610 GiB | same |",
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["kv.md"]  # no temporary file left behind


def test_failed_compare_leaves_no_output_file(cli, tmp_path):
    target = tmp_path / "kv.csv"
    status, out, err = cli("compare", "llama-3.1-8b", "nosuch-model", "-f", "csv", "-o", str(target))
    assert status == 2
    assert err.startswith("kvcalc: error: unknown model 'nosuch-model'")
    assert list(tmp_path.iterdir()) == []


def test_output_to_a_folder(cli, tmp_path):
    status, _, err = cli("compare", "llama-3.1-8b", "-o", str(tmp_path))
    assert (status, err) == (2, f"kvcalc: error: --output: {tmp_path}: Is a directory\n")


def test_show_explain(cli):
    status, out, _ = cli("show", "deepseek-v3", "--explain")
    assert status == 0
    assert "  (512 + 64) × 2 B × 61 layers = 70,272 B/token\n" in out


def test_show_parts_table(cli):
    status, out, _ = cli("show", "mistral-7b-v0.1", "--seq", "32k")
    assert status == 0
    assert "536,870,912 B at 32k tokens × batch 1" in out
    assert "  K      sliding      32    1,024           2,048    65,536         4,096   256 MiB" in out, out


def test_show_json(cli):
    status, out, _ = cli("show", "gemma-3-27b", "--seq", "32k", "-f", "json")
    assert status == 0
    doc = json.loads(out)
    assert doc["total_bytes"] == 81_920 * 32768 + 425_984 * 1024
    assert [(p["part"], p["layer_kind"], p["cells"]) for p in doc["rows"]] == [
        ("K", "full", 32768), ("V", "full", 32768), ("K", "sliding", 1024), ("V", "sliding", 1024),
    ]
    assert doc["spec"]["sliding_window"] == 1024


def test_list(cli):
    status, out, _ = cli("list", "-f", "json")
    assert status == 0
    rows = {r["name"]: r for r in json.loads(out)["rows"]}
    assert len(rows) == 38
    assert rows["llama-4-scout"]["chunked_layers"] == 36
    assert rows["gemma-4-e4b"]["shared_layers"] == 18
    assert rows["deepseek-v3"]["bytes_per_token"] == 70_272
    assert rows["gpt-oss-120b"]["sliding_layers"] == 18


def test_bad_spec_is_one_line_exit_2(cli, spec_file):
    path = spec_file("name: x\n  bad: [\n")
    status, out, err = cli("show", str(path))
    assert (status, out) == (2, "")
    assert err.startswith(f"kvcalc: error: {path}: line 2, column 6: malformed YAML (mapping values")
    assert err.count("\n") == 1


def test_usage_errors_are_one_line(cli):
    status, _, err = cli("compare", "llama-3.1-8b", "--layout", "sideways")
    assert status == 2
    assert err.count("\n") == 1 and "sideways" in err


def test_bad_token_count(cli):
    status, _, err = cli("compare", "llama-3.1-8b", "--seq", "4k,lots")
    assert (status, err) == (2, "kvcalc: error: --seq: 'lots' is not a token count (examples: 4096, 4k, 128k, 1M)\n")


def test_debug_shows_the_traceback(cli):
    import pytest

    from kvcalc.errors import UnknownModelError

    with pytest.raises(UnknownModelError):
        from kvcalc.cli import main

        main(["--debug", "show", "nosuch"])


def test_python_m_kvcalc_without_torch():
    code = (
        "import sys, runpy; sys.argv = ['kvcalc', '--version'];\n"
        "try: runpy.run_module('kvcalc', run_name='__main__')\n"
        "except SystemExit as e: assert e.code == 0, e.code\n"
        "import kvcalc.cli, kvcalc.analytic, kvcalc.explain\n"
        "assert 'torch' not in sys.modules, 'the analytic path imported torch'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "kvcalc 0.1.0\n"


def test_the_engines_own_flag_names_are_accepted(cli):
    """vLLM's and SGLang's names for the same options (--kv-cache-dtype, -tp, --max-model-len ...)."""
    ours = cli("fit", "llama-3.1-70b", "--gpu", "h200", "--tp", "4", "--pp", "2", "--kv-dtype", "fp8",
               "--mem-util", "0.85", "--seq", "32k", "--engine", "vllm", "--block-size", "32", "-f", "json")
    theirs = cli("fit", "llama-3.1-70b", "--gpu", "h200", "-tp", "4", "--pipeline-parallel-size", "2",
                 "--kv-cache-dtype", "fp8", "--gpu-memory-utilization", "0.85", "--max-model-len", "32k",
                 "--engine", "vllm", "--page-size", "32", "-f", "json")
    assert ours == theirs and ours[0] == 0
    sglang = cli("fit", "llama-3.1-70b", "--gpu", "h200", "--tensor-parallel-size", "4", "-pp", "2",
                 "--mem-fraction-static", "0.85", "--seq", "32k", "--engine", "sglang", "-f", "json")
    assert sglang[0] == 0 and json.loads(sglang[1])["rows"][0]["mem_util"] == 0.85
