"""Reading a user's file: size and stream limits, and the strict YAML / JSON reader."""

import os
import threading

import pytest
import yaml

from kvcalc import files
from kvcalc.catalog import _specs_dir, bundled_names
from kvcalc.errors import SpecError, UnknownModelError
from kvcalc.files import StrictLoader, parse_data, read_text


@pytest.mark.parametrize("name", bundled_names())
def test_the_strict_reader_reads_every_bundled_spec_as_the_fast_loader_does(name):
    text = (_specs_dir() / f"{name}.yaml").read_text()
    assert yaml.load(text, Loader=StrictLoader) == yaml.load(text, Loader=yaml.CSafeLoader)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("32", 32), ("+5", 5), ("1" + "0" * 30, 10**30), ("-0", 0), ("061", "061"), ("1:01", "1:01"), ("0x10", "0x10"),
        ("0o17", "0o17"), ("1_000", "1_000"), ("1e9", 1e9), ("1.5", 1.5), ("-.inf", float("-inf")),
        ("yes", "yes"), ("on", "on"), ("True", True), ("false", False), ("~", None), ("", None),
        ("null", None), ("2024-01-01", "2024-01-01"), ("'32'", "32"),
    ],
)
def test_scalars_follow_the_yaml_1_2_core_schema(text, value):
    assert parse_data(f"x: {text}\n", "f.yaml") == {"x": value}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: &x 1\nb: *x\n", r"^f.yaml: line 2, column 4: alias \*x is not accepted"),
        ("a: !!binary aGk=\n", r"^f.yaml: line 1, column 4: tag !!binary is not accepted"),
        ("a: !!set {x}\n", r"tag !!set is not accepted"),
        ("a: !custom 1\n", r"tag !custom is not accepted"),
        ("a: 1\nb: 2\na: 3\n", r"^f.yaml: line 3, column 1: a: duplicate key"),
        ("? [a]\n: 1\n", r"key \['a'\] is not a plain value"),
        (f"a: {'9' * 5000}\n", r"^f.yaml: line 1, column 4: a: an integer of 5000 digits is out of range"),
        (f"a: [{'9' * 5000}]\n", r"^f.yaml: line 1, column 5: 999999999999...: an integer of 5000 digits"),
        ("a: " + "[" * 5000 + "]" * 5000 + "\n", r"^f.yaml: nested too deeply"),
    ],
)
def test_yaml_beyond_plain_data_is_refused(text, message):
    with pytest.raises(SpecError, match=message):
        parse_data(text, "f.yaml")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"a": 1, "a": 2}', r"^c.json: a: duplicate key"),
        ('{"a": ' + "9" * 5000 + "}", r"^c.json: a: 999999999999...: an integer of 5000 digits is out of range"),
        ('{"a": 1,}', r"^c.json: line 1, column 9: malformed JSON"),
    ],
)
def test_json_beyond_plain_data_is_refused(text, message):
    with pytest.raises(SpecError, match=message):
        parse_data(text, "c.json")


def test_a_file_over_the_cap_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "MAX_FILE_BYTES", 1024)
    path = tmp_path / "big.yaml"
    path.write_text("# padding\n" * 200)
    with pytest.raises(SpecError, match=r"big.yaml: larger than 0 MiB"):
        read_text(path)


def test_a_fifo_without_a_writer_is_empty_not_a_hang(tmp_path):
    path = tmp_path / "pipe.yaml"
    os.mkfifo(path)
    assert read_text(path) == ""


def test_a_fifo_with_a_writer_is_read_to_its_end(tmp_path):
    path = tmp_path / "pipe.yaml"
    os.mkfifo(path)
    opened = threading.Event()

    def write():
        fd = os.open(path, os.O_RDWR)  # holds the FIFO open, as a shell's <(...) does
        opened.set()
        os.write(fd, b"num_layers: 4\n")
        threading.Timer(0.2, os.close, [fd]).start()

    threading.Thread(target=write).start()
    opened.wait(5)
    assert read_text(path) == "num_layers: 4\n"


def test_a_stream_that_never_ends_times_out(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "READ_TIMEOUT_S", 0.3)
    path = tmp_path / "pipe.yaml"
    os.mkfifo(path)
    fd = os.open(path, os.O_RDWR)  # a writer that never writes nor closes
    try:
        with pytest.raises(SpecError, match=r"pipe.yaml: no end of file within 0.3 s"):
            read_text(path)
    finally:
        os.close(fd)


def test_a_device_without_end_stops_at_the_cap(monkeypatch):
    monkeypatch.setattr(files, "MAX_FILE_BYTES", 4096)
    with pytest.raises(SpecError, match=r"/dev/zero: larger than"):
        read_text(__import__("pathlib").Path("/dev/zero"))


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(UnknownModelError, match=r"nope.yaml: no such file"):
        read_text(tmp_path / "nope.yaml")
    with pytest.raises(SpecError, match=r"is a folder, not a spec file"):
        read_text(tmp_path)


def test_nan_and_infinity_read_where_kvcalc_never_looks_and_are_refused_where_it_does(tmp_path):
    """NVIDIA's Nemotron-H configs hold "time_step_limit": [0.0, Infinity], as Python's json writes
    it and transformers reads it; a field kvcalc reads refuses a non-finite value by name."""
    import json
    import math

    from kvcalc.catalog import parse_spec

    assert math.isinf(parse_data('{"a": [0.0, Infinity]}', "c.json")["a"][1])
    config = {"model_type": "llama", "hidden_size": 4096, "num_attention_heads": 32, "num_hidden_layers": 32,
              "num_key_value_heads": 8}
    text = json.dumps({**config, "time_step_limit": [0.0, math.inf], "initializer_range": math.nan})
    assert parse_spec(text, "config.json").attention.num_kv_heads == 8
    with pytest.raises(SpecError, match=r"config.json: num_key_value_heads: nan"):
        parse_spec(json.dumps({**config, "num_key_value_heads": math.nan}), "config.json")
