"""Rows -> text: an aligned table, CSV, GitHub Markdown or JSON.

Every command describes its output as columns over rows; this module is the only place that turns
values into text. Machine formats (CSV, JSON) carry raw integers with units in the key
(``total_bytes``); human formats (table, Markdown) humanise them.
"""

from __future__ import annotations

import csv
import io
import json
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
) -> str:
    """Text of ``rows`` in ``fmt``. ``title`` and ``notes`` appear in human formats only."""
    rows = list(rows)
    if fmt is OutputFormat.JSON:
        return json.dumps([_record(columns, r) for r in rows], indent=2) + "\n"
    if fmt is OutputFormat.CSV:
        return _csv(columns, rows)
    shown = [c for c in columns if c.human]
    cells = [[_human(c, r) for c in shown] for r in rows]
    if fmt is OutputFormat.MARKDOWN:
        return _markdown(shown, cells, title, notes)
    return _table(shown, cells, title, notes)


def render_lines(lines: Sequence[str], fmt: OutputFormat) -> str:
    """Free text (an explanation) in a human format: plain, or fenced for Markdown."""
    body = "\n".join(lines) + "\n"
    return f"```\n{body}```\n" if fmt is OutputFormat.MARKDOWN else body


def _record(columns: Sequence[Column], row: Any) -> dict[str, Any]:
    return {c.key: c.value(row) for c in columns if c.data}


def _csv(columns: Sequence[Column], rows: list[Any]) -> str:
    out = io.StringIO()
    data = [c for c in columns if c.data]
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(c.key for c in data)
    for row in rows:
        writer.writerow(_plain(c.value(row)) for c in data)
    return out.getvalue()


def _plain(value: Any) -> Any:
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


def _table(columns: list[Column], cells: list[list[str]], title: str | None, notes) -> str:
    """An aligned plain-text table: a header, a rule, the rows, then the notes."""
    widths = [max([len(c.title), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]

    def line(values: list[str]) -> str:
        padded = (
            v.rjust(w) if _right_aligned(c) else v.ljust(w)
            for c, v, w in zip(columns, values, widths, strict=True)
        )
        return ("  " + "   ".join(padded)).rstrip()

    lines = [title, ""] if title else []
    lines += [line([c.title for c in columns]), "─" * (sum(widths) + 3 * len(widths) - 1)]
    lines += [line(row) for row in cells]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"
