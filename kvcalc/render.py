"""Rows -> text: an aligned table, CSV, GitHub Markdown or JSON.

Every command describes its output as columns over rows; this module is the only place that turns
values into text. Human formats (table, Markdown) humanise the values (``render``); the data formats
print a command's document (``render_data``, the models in ``contract.py``): JSON whole, CSV its rows,
raw integers with units in the key (``total_bytes``).
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import sys
import textwrap
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from kvcalc.units import humanize_bytes, humanize_tokens


class OutputFormat(StrEnum):
    TABLE = "table"
    CSV = "csv"
    MARKDOWN = "markdown"
    JSON = "json"


DATA_FORMATS = (OutputFormat.CSV, OutputFormat.JSON)
"""Formats that print a command's document (``contract.py``) instead of a table."""


class Kind(StrEnum):
    """How a human format shows a column's value."""

    TEXT = "text"
    COUNT = "count"  # exact integer with thousands separators
    BYTES = "bytes"  # humanised, powers of two
    TOKENS = "tokens"  # 131072 -> 128k
    COUNT_TEXT = "count-text"  # already text, aligned right like a number


@dataclass(frozen=True)
class Column:
    key: str
    """Key in JSON and header in CSV; carries the unit (``total_bytes``)."""
    title: str
    """Header in the table and Markdown."""
    value: Callable[[Any], Any]
    kind: Kind = Kind.TEXT
    human: bool = True
    """Shown in the table and Markdown."""
    data: bool = True
    """Carried in CSV and JSON."""


def render(
    columns: Sequence[Column],
    rows: Iterable[Any],
    fmt: OutputFormat,
    *,
    title: str | None = None,
    notes: Sequence[str] = (),
    width: int | None = None,
) -> str:
    """Text of ``rows`` in a human format (table or Markdown), with ``title`` and ``notes``.

    ``width`` (terminal columns) limits the table format only: text cells and headers wrap onto
    more lines, numbers never do. ``None`` means no limit. CSV and JSON go through ``render_data``.
    """
    if fmt in DATA_FORMATS:
        raise ValueError(f"{fmt}: a data format prints the command's document (render_data)")
    rows = list(rows)
    shown = [c for c in columns if c.human]
    cells = [[_human(c, r) for c in shown] for r in rows]
    if fmt is OutputFormat.MARKDOWN:
        return _markdown(shown, cells, title, notes)
    return _table(shown, cells, title, notes, width)


def render_lines(lines: Sequence[str], fmt: OutputFormat, width: int | None = None) -> str:
    """Free text (an explanation) in a human format: plain, or fenced for Markdown.

    In plain text, a line longer than ``width`` wraps; its continuation lines are indented two
    spaces past the line's own indent. Markdown ignores ``width``.
    """
    if fmt is OutputFormat.MARKDOWN:
        return "```\n" + "\n".join(lines) + "\n```\n"
    return "".join(line + "\n" for text in lines for line in _wrap(text, width, hanging=True))


def terminal_width() -> int | None:
    """Columns to render for, or ``None`` for no limit.

    The ``COLUMNS`` environment variable when it is a positive integer (anything else counts as
    unset); else the terminal's width when stdout is a terminal; else ``None``: output to a pipe
    or a file is never wrapped.
    """
    try:
        columns = int(os.environ.get("COLUMNS", ""))
    except ValueError:
        columns = 0
    if columns > 0:
        return columns
    if sys.stdout is not None and sys.stdout.isatty():
        return shutil.get_terminal_size().columns
    return None


def records(columns: Sequence[Column], rows: Iterable[Any]) -> list[dict[str, Any]]:
    """Each row as ``{key: value}`` over the data columns: what a document's ``rows`` hold."""
    return [{c.key: c.value(row) for c in columns if c.data} for row in rows]


def render_data(document: dict[str, Any], keys: Sequence[str], fmt: OutputFormat) -> str:
    """A command's document (plain JSON data) in a data format: JSON whole, indented; CSV its
    ``rows``, one line per row under the header ``keys``."""
    if fmt is OutputFormat.JSON:
        return json.dumps(document, indent=2) + "\n"
    if fmt is not OutputFormat.CSV:
        raise ValueError(f"{fmt}: not a data format")
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(keys)
    for row in document["rows"]:
        writer.writerow(_plain(row[key]) for key in keys)
    return out.getvalue()


def _plain(value: Any) -> Any:
    """A CSV field: booleans as JSON writes them, None as empty."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else value


def _human(column: Column, row: Any) -> str:
    value = column.value(row)
    if value is None:
        return "-"
    if column.kind is Kind.COUNT:
        return f"{value:,}"
    if column.kind is Kind.BYTES:
        return humanize_bytes(value)
    if column.kind is Kind.TOKENS:
        return humanize_tokens(value)
    return str(value)


def _right_aligned(column: Column) -> bool:
    return column.kind is not Kind.TEXT


def _markdown(columns: list[Column], cells: list[list[str]], title: str | None, notes) -> str:
    lines = [f"**{title}**", ""] if title else []
    lines.append("| " + " | ".join(c.title for c in columns) + " |")
    lines.append("|" + "|".join("---:" if _right_aligned(c) else "---" for c in columns) + "|")
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in cells]
    if notes:
        lines += [""] + [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def _table(columns: list[Column], cells: list[list[str]], title: str | None, notes, width: int | None) -> str:
    """An aligned plain-text table: a header, a rule, the rows, then the notes.

    Within ``width``, columns are two spaces apart instead of three, then headers wrap
    bottom-aligned and text cells top-aligned; numbers never wrap.
    """
    natural = [max([len(c.title), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]
    gap = 3 if width is None or _span(natural, 3) <= width else 2
    fitted = _fit(columns, cells, natural, gap, width)
    header = _block([c.title for c in columns], fitted, bottom=True)
    body = [_block(row, fitted, bottom=False) for row in cells]
    widths = [max(len(text) for block in (header, *body) for text in block[i]) for i in range(len(columns))]

    def line(values: list[str]) -> str:
        padded = (
            v.rjust(w) if _right_aligned(c) else v.ljust(w)
            for c, v, w in zip(columns, values, widths, strict=True)
        )
        return ("  " + (" " * gap).join(padded)).rstrip()

    lines = [*_wrap(title, width), ""] if title else []
    lines += [line(values) for values in zip(*header, strict=True)]
    lines.append("─" * _span(widths, gap))
    lines += [line(values) for block in body for values in zip(*block, strict=True)]
    if notes:
        lines += ["", *(text for note in notes for text in _wrap(note, width, hanging=True))]
    return "\n".join(lines) + "\n"


def _span(widths: list[int], gap: int) -> int:
    """Characters a table line takes: the 2-space indent, the columns and the gaps between them."""
    return 2 + sum(widths) + gap * (len(widths) - 1)


def _fit(columns: list[Column], cells: list[list[str]], natural: list[int], gap: int,
         width: int | None) -> list[int]:
    """Column widths within ``width``: the widest column gives up a character, repeatedly.

    No column goes below its minimum (its longest header word, its longest cell for a number,
    its longest word for text). A table that cannot fit even so is not wrapped at all: it
    overflows ``width`` at its natural widths, which reads better than a squeezed one.
    """
    if width is None or _span(natural, gap) <= width:
        return natural
    minimum = [_minimum(c, [row[i] for row in cells]) for i, c in enumerate(columns)]
    if _span(minimum, gap) > width:
        return natural
    widths = list(natural)
    while _span(widths, gap) > width:
        widest = max((i for i, w in enumerate(widths) if w > minimum[i]), key=lambda i: widths[i])
        widths[widest] -= 1
    return widths


def _minimum(column: Column, cells: list[str]) -> int:
    """The narrowest a column can wrap to: whole words, and whole numbers."""
    words = column.title.split()
    for cell in cells:
        words += [cell] if _right_aligned(column) else cell.split()
    return max(map(len, words), default=0)


def _block(values: list[str], widths: list[int], *, bottom: bool) -> list[list[str]]:
    """One row's values wrapped to ``widths`` and padded with blank lines to the same height."""
    wrapped = [_wrap(v, w) for v, w in zip(values, widths, strict=True)]
    height = max(map(len, wrapped), default=1)
    pad = [[""] * (height - len(lines)) for lines in wrapped]
    if bottom:
        return [blank + lines for blank, lines in zip(pad, wrapped, strict=True)]
    return [lines + blank for blank, lines in zip(pad, wrapped, strict=True)]


def _wrap(text: str, width: int | None, *, hanging: bool = False) -> list[str]:
    """``text`` in lines of at most ``width``, never breaking a word; unchanged if it fits.

    With ``hanging``, continuation lines are indented two spaces past the text's own indent.
    """
    if width is None or len(text) <= width:
        return [text]
    body = text.lstrip(" ")
    indent = text[: len(text) - len(body)]
    lines = textwrap.wrap(
        body,
        max(width, 1),
        initial_indent=indent,
        subsequent_indent=indent + "  " if hanging else indent,
        break_long_words=False,
        break_on_hyphens=False,
    )
    return lines or [text]
