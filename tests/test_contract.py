"""The output contract: every command's ``--format json`` is one document that the shipped JSON
Schema accepts, and its ``--format csv`` the same rows; the shipped schema is what the models generate."""

import csv
import io
import json
from importlib.resources import files

import pytest
import typer

from kvcalc import __version__, contract
from kvcalc.cli import app

jsonschema = pytest.importorskip("jsonschema")

LOGS = "tests/data/logs"
# Tiny models measured on the CPU in well under a second: the conftest spec (GQA) and a Jamba-style
# hybrid (one GQA layer, one Mamba layer).
TINY_HYBRID = {"model_type": "jamba", "vocab_size": 97, "hidden_size": 64, "intermediate_size": 64,
               "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256,
               "num_hidden_layers": 2, "attn_layer_period": 2, "attn_layer_offset": 1, "mamba_d_state": 8,
               "mamba_d_conv": 4, "mamba_expand": 2}
MEASURE = ("--seq", "16", "--decode-steps", "1", "--device", "cpu")
CASES = {
    "list": (("list",), 0),
    "show-mla": (("show", "deepseek-v3", "--mtp"), 0),
    "show-sliding-vllm": (("show", "gemma-3-27b", "--seq", "32k", "--engine", "vllm"), 0),
    "show-gqa-tp-pp": (("show", "llama-3.1-70b", "--seq", "8k", "--batch", "4", "--tp", "4", "--pp", "2"), 0),
    "show-hybrid-sglang": (("show", "nemotron-3-nano-30b-a3b", "--seq", "32k", "--engine", "sglang"), 0),
    "show-compressed": (("show", "deepseek-v4-flash", "--seq", "64k"), 0),
    "compare": (("compare", "deepseek-v3", "minimax-m1", "gemma-3-27b", "--seq", "4k,128k"), 0),
    "compare-hybrids-vllm": (("compare", "nemotron-3-nano-30b-a3b", "llama-3.1-8b", "--seq", "32k",
                              "--engine", "vllm", "--tp", "2"), 0),
    "compare-sglang-fp8": (("compare", "deepseek-v3", "--seq", "32k", "--engine", "sglang", "--kv-dtype", "fp8",
                            "--tp", "8"), 0),
    "fit": (("fit", "llama-3.1-8b", "--gpu", "h200"), 0),
    "fit-vllm-sliding": (("fit", "gemma-3-27b", "--gpu", "h100-sxm", "--engine", "vllm", "--seq", "32k"), 0),
    "fit-sglang-hybrid": (("fit", "nemotron-3-nano-30b-a3b", "--gpu", "h200", "--engine", "sglang",
                           "--mem-fraction-static", "0.903", "--seq", "32k"), 0),
    "fit-nothing-fits": (("fit", "llama-3.1-405b", "--gpu-mem", "80GiB"), 1),
    "check-vllm": (("check", f"{LOGS}/vllm-llama-3.1-8b.log", "--model", "llama-3.1-8b"), 0),
    "check-vllm-disagrees": (("check", f"{LOGS}/vllm-gemma-3-27b-wrong.log", "--model", "gemma-3-27b"), 1),
    "check-sglang": (("check", f"{LOGS}/sglang-llama-3.1-8b.log", "--model", "llama-3.1-8b"), 0),
    "check-sglang-mla-tp8": (("check", f"{LOGS}/sglang-deepseek-v3-tp8.log", "--model", "deepseek-v3"), 0),
    "measure-gqa": (("measure", "{tiny}", *MEASURE), 0),
    "measure-mla-layouts": (("measure", "deepseek-v2-lite", "--layout", "latent,decompressed", *MEASURE), 0),
    "measure-hybrid": (("measure", "{hybrid}", *MEASURE), 0),
    "verify-hybrid": (("verify", "{hybrid}", "--seq", "16"), 0),
}
NO_DOCUMENT = {"plot", "import", "schema"}  # a picture, a spec file, the schema itself


@pytest.fixture(scope="module")
def shipped() -> dict:
    return json.loads(files("kvcalc").joinpath(contract.SCHEMA_FILE).read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def validator(shipped):
    """The shipped schema, with ``integer`` meaning a JSON integer (``7``, never ``7.0``)."""
    base = jsonschema.Draft202012Validator
    base.check_schema(shipped)
    checker = base.TYPE_CHECKER.redefine("integer", lambda _, value: type(value) is int)
    return jsonschema.validators.extend(base, type_checker=checker)(shipped)


@pytest.fixture
def args(spec_file, tmp_path, monkeypatch):
    """A case's arguments, run from the repository root (the log paths), tiny models written out."""
    from pathlib import Path

    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    hybrid = tmp_path / "hybrid.json"
    hybrid.write_text(json.dumps(TINY_HYBRID))
    paths = {"tiny": str(spec_file()), "hybrid": str(hybrid)}

    def fill(case: str) -> list[str]:
        command, _ = CASES[case]
        if command[0] == "measure":
            pytest.importorskip("torch")
        return [a.format(**paths) for a in command]

    return fill


def test_the_shipped_schema_is_what_the_models_generate():
    text = files("kvcalc").joinpath(contract.SCHEMA_FILE).read_text(encoding="utf-8")
    assert text == contract.schema_text(), (
        "kvcalc/output.schema.json is stale: python -m kvcalc.contract > kvcalc/output.schema.json")


def test_schema_command_prints_the_shipped_file(cli):
    status, out, _ = cli("schema")
    assert status == 0
    assert out == files("kvcalc").joinpath(contract.SCHEMA_FILE).read_text(encoding="utf-8")


def test_every_command_either_prints_a_document_or_none(shipped):
    commands = {c.name for c in typer.main.get_command(app).commands.values()}
    documents = set(shipped["discriminator"]["mapping"])
    assert documents == {c[0] for c, _ in CASES.values()}  # each document run below
    assert commands == documents | NO_DOCUMENT


@pytest.mark.parametrize("case", CASES)
def test_json_output_follows_the_schema(cli, args, validator, case):
    status, out, err = cli(*args(case), "--format", "json")
    assert status == CASES[case][1], err
    doc = json.loads(out)
    errors = sorted(validator.iter_errors(doc), key=str)
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors[:5])
    assert (doc["kvcalc"], doc["command"]) == (__version__, CASES[case][0][0])
    assert doc["rows"]


@pytest.mark.parametrize("case", [c for c in CASES if not c.startswith("measure")])
def test_csv_output_is_the_json_rows(cli, args, case):
    """The same rows, keys as the header: booleans ``true``/``false``, null empty."""
    _, out, _ = cli(*args(case), "--format", "json")
    doc = json.loads(out)
    _, out, _ = cli(*args(case), "--format", "csv")
    table = list(csv.reader(io.StringIO(out)))
    model = contract.document(doc).Row
    assert table[0] == list(model.model_fields)
    assert table[1:] == [[_csv_field(row[key]) for key in table[0]] for row in doc["rows"]]


def test_measure_csv_has_the_json_keys_and_rows(cli, args):
    _, out, _ = cli(*args("measure-mla-layouts"), "--format", "csv")
    header, *rows = list(csv.reader(io.StringIO(out)))
    assert header == list(contract.MeasureRow.model_fields)
    assert [(r[header.index("layout")], r[header.index("match")]) for r in rows] == [
        ("latent", "true"), ("decompressed", "true")]
    assert {r[header.index("cuda_allocated_bytes")] for r in rows} == {""}  # on the CPU: null


def test_a_row_not_measured_is_null_where_nothing_was_measured(cli, args, validator, monkeypatch):
    pytest.importorskip("torch")
    import kvcalc.measure as m

    monkeypatch.setattr(m, "_available_host_bytes", lambda: 1 << 20)
    status, out, _ = cli("measure", "llama-3.1-8b", "--seq", "4k", "--device", "cpu", "-f", "json")
    doc = json.loads(out)
    assert status == 1 and not list(validator.iter_errors(doc))
    (row,) = doc["rows"]
    assert (row["measured_bytes"], row["match"], row["prefill_s"]) == (None, None, None)
    assert row["error"].startswith("needs about") and doc["notes"][0].endswith(row["error"])


def test_numbers_are_numbers_and_totals_null_without_seq(cli, args):
    status, out, _ = cli(*args("fit-sglang-hybrid"), "-f", "json")
    (row,) = json.loads(out)["rows"]
    assert row["mem_util"] == 0.903 and row["weights_fit"] is True
    _, out, _ = cli("show", "llama-3.1-8b", "-f", "json")
    doc = json.loads(out)
    assert (doc["seq_len"], doc["total_bytes"], doc["rows"][0]["cells"]) == (None, None, None)
    assert doc["bytes_per_token"] == 131_072


def _csv_field(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)
