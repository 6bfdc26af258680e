"""Reading a file a user gives: bounded, and parsed as plain data only.

- ``read_text``: at most ``MAX_FILE_BYTES``, UTF-8; a regular file is read directly, anything else
  (a FIFO, ``/dev/stdin``, a device) without blocking on a missing writer and within
  ``READ_TIMEOUT_S``; a folder is an error.
- ``parse_data``: ``.json`` files by the JSON parser, everything else by a strict YAML reader in the
  spirit of YAML 1.2's core schema -- no tags (``!!binary``, ``!!set``, ``!!python/...``), no
  aliases (so no "billion laughs"), decimal integers only (``061`` and ``1:01`` are text, not 49
  and 61), ``1e9`` a float, duplicate keys refused, nesting bounded. JSON refuses duplicate keys,
  ``NaN`` and ``Infinity`` the same way.

Every failure is a ``SpecError`` of one line naming the file, and the line, key or value at fault.
"""

from __future__ import annotations

import json
import os
import re
import stat
import time
from pathlib import Path
from typing import Any

import yaml

from kvcalc.errors import SpecError, UnknownModelError

MAX_FILE_BYTES = 4 << 20
"""A spec or config.json is a few KiB; 4 MiB leaves room for configs that carry tokenizer maps."""
MAX_DIGITS = 4000
"""Longer integers are refused while parsing (Python's int() refuses past 4,300 digits); shorter
ones are read exactly and refused by the bounds of the field that holds them."""
READ_TIMEOUT_S = 10.0
"""How long a pipe or device may take to deliver its text."""


def read_text(path: Path) -> str:
    """The text of ``path``, or a ``SpecError`` / ``UnknownModelError`` naming it."""
    data = read_bytes(path, MAX_FILE_BYTES, "a spec file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise SpecError(f"{path}: not a text file (it is not valid UTF-8)") from None


def read_bytes(path: Path, limit: int, what: str) -> bytes:
    """At most ``limit`` bytes of ``path`` (``what`` it should be, for the errors), or a
    ``SpecError`` / ``UnknownModelError`` naming it."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise UnknownModelError(f"{path}: no such file") from None
    except OSError as e:
        raise SpecError(f"{path}: cannot read ({e.strerror})") from None
    if stat.S_ISDIR(info.st_mode):
        raise SpecError(f"{path}: is a folder, not {what}")
    try:
        data = _read_regular(path, limit) if stat.S_ISREG(info.st_mode) else _read_stream(path, limit)
    except OSError as e:
        raise SpecError(f"{path}: cannot read ({e.strerror})") from None
    if len(data) > limit:
        raise SpecError(f"{path}: larger than {limit >> 20} MiB; not {what}")
    return data


def _read_regular(path: Path, limit: int) -> bytes:
    with open(path, "rb") as f:
        return f.read(limit + 1)


def _read_stream(path: Path, limit: int) -> bytes:
    """A FIFO or device, opened without waiting for a writer (none: end of file at once) and read
    until end of file, ``limit + 1`` bytes, or ``READ_TIMEOUT_S``."""
    import select

    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    chunks: list[bytes] = []
    size = 0
    deadline = time.monotonic() + READ_TIMEOUT_S
    try:
        poller = select.poll()  # unlike epoll, poll takes any file, /dev/zero included
        poller.register(fd, select.POLLIN)
        while size <= limit:
            try:
                chunk = os.read(fd, 1 << 16)
            except BlockingIOError:  # a writer, with nothing written yet
                left = deadline - time.monotonic()
                if left <= 0 or not poller.poll(left * 1000):
                    raise SpecError(f"{path}: no end of file within {READ_TIMEOUT_S:g} s") from None
                continue
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)


def parse_data(text: str, origin: str, *, as_json: bool | None = None) -> Any:
    """Plain data (dicts, lists, str, int, float, bool, None) from JSON or strict YAML text: JSON
    when ``as_json`` says so, or (None) when ``origin`` ends in .json."""
    try:
        if as_json or (as_json is None and origin.lower().endswith(".json")):
            # NaN and Infinity are read as floats: published configs hold them in fields kvcalc
            # never reads (Nemotron-H's time_step_limit [0.0, Infinity]); a field it reads checks
            # its own type and range, and refuses them by name.
            data = json.loads(text, object_pairs_hook=_checked_object, parse_int=_Unreadable.integer)
            _refuse_unreadable(data)
            return data
        return yaml.load(text, Loader=StrictLoader)
    except _JsonProblem as e:
        raise SpecError(f"{origin}: {e}") from None
    except json.JSONDecodeError as e:
        raise SpecError(f"{origin}: line {e.lineno}, column {e.colno}: malformed JSON ({e.msg})") from None
    except yaml.YAMLError as e:
        raise SpecError(f"{origin}: {_yaml_problem(e)}") from None
    except RecursionError:
        raise SpecError(f"{origin}: nested too deeply to be a spec or config") from None


class _JsonProblem(ValueError):
    pass


class _Unreadable:
    """A JSON value kvcalc will not read (an integer of thousands of digits), kept until its key is
    known so that the error can name the field."""

    def __init__(self, problem: str) -> None:
        self.problem = problem

    @classmethod
    def integer(cls, text: str) -> int | _Unreadable:
        if len(text) > MAX_DIGITS:
            return cls(f"{text[:12]}...: an integer of {len(text)} digits is out of range")
        return int(text)


def _checked_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for key, value in pairs:
        if key in data:
            raise _JsonProblem(f"{key}: duplicate key")
        if isinstance(value, _Unreadable):
            raise _JsonProblem(f"{key}: {value.problem}")
        data[key] = value
    return data


def _refuse_unreadable(data: Any) -> None:
    """An unreadable value outside any object (in a list, or the whole document)."""
    if isinstance(data, _Unreadable):
        raise _JsonProblem(data.problem)
    for item in data if isinstance(data, list) else data.values() if isinstance(data, dict) else ():
        _refuse_unreadable(item)


def _yaml_problem(e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    if isinstance(e, _Refused):
        return f"{where}{problem}"
    return f"{where}malformed YAML ({problem})"


class _Refused(yaml.constructor.ConstructorError):
    """Valid YAML that a spec has no use for (tags, aliases, duplicate keys)."""


class StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader narrowed to YAML 1.2 core-schema plain data (see the module docstring)."""

    yaml_implicit_resolvers: dict = {}

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            raise _Refused(None, None, f"alias *{event.anchor} is not accepted (write the value out)",
                           event.start_mark)
        tag = getattr(event, "tag", None)
        if tag not in (None, "!"):
            shown = tag.replace("tag:yaml.org,2002:", "!!")
            raise _Refused(None, None, f"tag {shown} is not accepted (plain values only)", event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen: set = set()
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=True)
            if value_node.tag == "tag:yaml.org,2002:int" and len(value_node.value) > MAX_DIGITS:
                raise _Refused(None, None, f"{key}: an integer of {len(value_node.value)} digits is out of "
                               "range", value_node.start_mark)
            if not isinstance(key, str | int | float | bool | type(None)):
                raise _Refused(None, None, f"key {key!r:.40} is not a plain value", key_node.start_mark)
            if key in seen:
                raise _Refused(None, None, f"{key}: duplicate key", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)

    def construct_decimal(self, node) -> int:
        text = self.construct_scalar(node)
        if len(text) > MAX_DIGITS:
            raise _Refused(None, None, f"{text[:12]}...: an integer of {len(text)} digits is out of range",
                           node.start_mark)
        return int(text)

    def construct_float_12(self, node) -> float:
        text = self.construct_scalar(node)
        special = {".inf": "inf", "+.inf": "inf", "-.inf": "-inf", ".nan": "nan"}
        return float(special.get(text.lower(), text))


_CORE_SCHEMA = {
    "tag:yaml.org,2002:null": (r"~|null|Null|NULL|", "~nN"),
    "tag:yaml.org,2002:bool": (r"true|True|TRUE|false|False|FALSE", "tTfF"),
    "tag:yaml.org,2002:int": (r"[-+]?(?:0|[1-9][0-9]*)", "-+0123456789"),
    "tag:yaml.org,2002:float": (  # a dot or an exponent: "061" stays text, not 61.0
        r"[-+]?(?:\.[0-9]+|[0-9]+\.[0-9]*)(?:[eE][-+]?[0-9]+)?|[-+]?[0-9]+[eE][-+]?[0-9]+"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)",
        "-+.0123456789",
    ),
}
for _tag, (_pattern, _first) in _CORE_SCHEMA.items():
    StrictLoader.add_implicit_resolver(_tag, re.compile(rf"^(?:{_pattern})$"), list(_first) or [None])
StrictLoader.add_implicit_resolver("tag:yaml.org,2002:null", re.compile(r"^$"), [""])
StrictLoader.add_constructor("tag:yaml.org,2002:int", StrictLoader.construct_decimal)
StrictLoader.add_constructor("tag:yaml.org,2002:float", StrictLoader.construct_float_12)
