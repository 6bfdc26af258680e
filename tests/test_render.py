"""The renderer at a fixed width: golden table text, wrapping rules, CSV values, terminal width."""

import csv
import io
import json
import os
import sys

import pytest

from kvcalc import render as render_module
from kvcalc.render import (
    Column,
    Kind,
    OutputFormat,
    records,
    render,
    render_data,
    render_lines,
    terminal_width,
)

COLUMNS = (
    Column("name", "Model", lambda r: r[0]),
    Column("cache_shape", "Cached per layer", lambda r: r[1]),
    Column("bytes_per_token", "Decode B/token", lambda r: r[2], Kind.COUNT),
    Column("total_bytes", "KV cache", lambda r: r[3], Kind.BYTES),
)
ROWS = [
    ("deepseek-v3", "latent 512 + rope key 64", 70_272, 9_210_691_584),
    ("llama-3.1-70b", "K 8 × 128 + V 8 × 128", 327_680, 42_949_672_960),
]

NATURAL = """\
  Model           Cached per layer           Decode B/token   KV cache
──────────────────────────────────────────────────────────────────────
  deepseek-v3     latent 512 + rope key 64           70,272   8.58 GiB
  llama-3.1-70b   K 8 × 128 + V 8 × 128             327,680   40.0 GiB
"""

# Too wide for 60 even two spaces apart: the widest text column wraps.
AT_60 = """\
  Model          Cached per layer   Decode B/token  KV cache
────────────────────────────────────────────────────────────
  deepseek-v3    latent 512 + rope          70,272  8.58 GiB
                 key 64
  llama-3.1-70b  K 8 × 128 + V 8 ×         327,680  40.0 GiB
                 128
"""

# The minimum widths (13 + 6 + 7 + 8 and the gaps) make 42 columns: no wrapping can fit 40, so the
# table keeps its natural widths, two spaces apart, rather than squeezing.
AT_40 = """\
  Model          Cached per layer          Decode B/token  KV cache
───────────────────────────────────────────────────────────────────
  deepseek-v3    latent 512 + rope key 64          70,272  8.58 GiB
  llama-3.1-70b  K 8 × 128 + V 8 × 128            327,680  40.0 GiB
"""


WIDEST_FIRST = """\
  Short    Long
─────────────────────────────────
  one two  alpha beta gamma delta
           epsilon zeta
"""

HEADER_WRAPPED = """\
         Decode
  Model  ms/tok
───────────────
  tiny       12
"""

LINES_AT_40 = """\
Bytes per token:
  full layers: 2 × 16 × 128 × 2 B × 10
    layers = 81,920 B/token
"""


def table(width: int | None, **kwargs) -> str:
    return render(COLUMNS, ROWS, OutputFormat.TABLE, width=width, **kwargs)


def test_table_without_width_is_natural():
    assert table(None) == NATURAL


def test_table_that_fits_is_unchanged():
    assert table(70) == NATURAL


def test_table_wraps_text_cells_within_width():
    assert table(60) == AT_60


def test_table_below_minimum_widths_overflows_unwrapped():
    assert table(40) == AT_40


def test_numbers_are_never_broken():
    lines = table(10).splitlines()
    for whole in ("70,272", "327,680", "8.58 GiB", "40.0 GiB"):
        assert any(whole in line for line in lines)


def test_widest_column_shrinks_first():
    columns = (Column("a", "Short", lambda r: r[0]), Column("b", "Long", lambda r: r[1]))
    rows = [("one two", "alpha beta gamma delta epsilon zeta")]
    assert render(columns, rows, OutputFormat.TABLE, width=36) == WIDEST_FIRST


def test_numeric_header_wraps_bottom_aligned():
    columns = (
        Column("model", "Model", lambda r: r[0]),
        Column("decode_ms_per_token", "Decode ms/tok", lambda r: r[1], Kind.COUNT),
    )
    rows = [("tiny", 12)]
    assert render(columns, rows, OutputFormat.TABLE, width=16) == HEADER_WRAPPED


def test_title_wraps():
    title = "KV cache, bf16, engine-neutral, MLA latent layout, batch 1"
    assert table(60, title=title).splitlines()[:3] == [
        "KV cache, bf16, engine-neutral, MLA latent layout, batch 1",
        "",
        "  Model          Cached per layer   Decode B/token  KV cache",
    ]
    assert table(40, title=title).splitlines()[:3] == [
        "KV cache, bf16, engine-neutral, MLA",
        "latent layout, batch 1",
        "",
    ]


def test_notes_wrap_with_hanging_indent():
    note = "deepseek-v3: the indexer cache of the sparse attention layers is not counted"
    assert table(60, notes=[note]).endswith(
        "\n\ndeepseek-v3: the indexer cache of the sparse attention\n  layers is not counted\n"
    )


def test_markdown_ignores_width():
    extras = {"title": "A title that is long", "notes": ["a long note here"]}
    assert render(COLUMNS, ROWS, OutputFormat.MARKDOWN, width=10, **extras) == render(
        COLUMNS, ROWS, OutputFormat.MARKDOWN, **extras)


@pytest.mark.parametrize("fmt", [OutputFormat.CSV, OutputFormat.JSON])
def test_data_formats_print_a_document_not_a_table(fmt):
    with pytest.raises(ValueError, match="render_data"):
        render(COLUMNS, ROWS, fmt)


def test_csv_booleans_match_json_and_none_is_empty():
    columns = (
        Column("mtp", "MTP", lambda r: r[0]),
        Column("sliding_window", "Window", lambda r: r[1], Kind.COUNT),
        Column("shown", "Shown", lambda r: "-", data=False),
    )
    document = {"command": "x", "rows": records(columns, [(True, None), (False, 4096)])}
    keys = ["mtp", "sliding_window"]
    assert render_data(document, keys, OutputFormat.CSV) == "mtp,sliding_window\ntrue,\nfalse,4096\n"
    assert json.loads(render_data(document, keys, OutputFormat.JSON)) == document
    parsed = list(csv.DictReader(io.StringIO(render_data(document, keys, OutputFormat.CSV))))
    assert [json.dumps(r["mtp"]) for r in document["rows"]] == [r["mtp"] for r in parsed]


def test_csv_of_no_rows_is_the_header():
    assert render_data({"rows": []}, ["a", "b_bytes"], OutputFormat.CSV) == "a,b_bytes\n"


def test_render_lines_wrap_with_hanging_indent():
    lines = ["Bytes per token:", "  full layers: 2 × 16 × 128 × 2 B × 10 layers = 81,920 B/token"]
    assert render_lines(lines, OutputFormat.TABLE, width=40) == LINES_AT_40


def test_render_lines_without_width_are_unchanged():
    lines = ["Bytes per token:", "  full layers: 2 × 16 × 128 × 2 B × 10 layers = 81,920 B/token"]
    assert render_lines(lines, OutputFormat.TABLE) == "\n".join(lines) + "\n"


def test_render_lines_markdown_ignores_width():
    lines = ["  full layers: 2 × 16 × 128 × 2 B × 10 layers = 81,920 B/token"]
    assert render_lines(lines, OutputFormat.MARKDOWN, width=20) == f"```\n{lines[0]}\n```\n"


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_terminal_width_from_columns(monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    assert terminal_width() == 100


def test_terminal_width_none_for_a_pipe(monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    assert terminal_width() is None


@pytest.mark.parametrize("value", ["abc", "0", "-5", ""])
def test_terminal_width_ignores_invalid_columns(monkeypatch, value):
    monkeypatch.setenv("COLUMNS", value)
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    assert terminal_width() is None


def test_terminal_width_from_the_terminal(monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.setattr(sys, "stdout", _Terminal())
    monkeypatch.setattr(render_module.shutil, "get_terminal_size", lambda: os.terminal_size((123, 40)))
    assert terminal_width() == 123
