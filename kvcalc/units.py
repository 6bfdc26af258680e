"""Parsing token counts (``4k``) and humanising byte counts (``68.6 KiB``). Powers of two throughout."""

from __future__ import annotations

import re
from fractions import Fraction

from kvcalc.errors import OptionError
from kvcalc.spec import MAX_TOKENS

_TOKEN_SUFFIX = {"": 1, "k": 1 << 10, "m": 1 << 20}
_TOKENS = re.compile(r"(\d{1,15}(?:\.\d{1,15})?)([km]?)", re.IGNORECASE)


def parse_tokens(text: str, option: str = "--seq") -> int:
    """``4096``, ``4k`` (4096), ``128k`` (131072), ``1M`` (1048576), ``1.5k`` (1536)."""
    match = _TOKENS.fullmatch(text.strip())
    if not match:
        raise OptionError(f"{option}: {text!r} is not a token count (examples: 4096, 4k, 128k, 1M)")
    count = Fraction(match[1]) * _TOKEN_SUFFIX[match[2].lower()]
    if count.denominator != 1 or count < 1:
        raise OptionError(f"{option}: {text!r} is not a whole, positive number of tokens")
    if count > MAX_TOKENS:
        raise OptionError(f"{option}: {text!r} is more than {humanize_tokens(MAX_TOKENS)} tokens")
    return int(count)


def parse_token_list(text: str, option: str = "--seq") -> list[int]:
    """A comma-separated list of token counts, in the order given."""
    return [parse_tokens(item, option) for item in text.split(",")]


_BINARY_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def humanize_bytes(n: int) -> str:
    """``70272`` -> ``68.6 KiB``; exact below 1 KiB. Three significant digits."""
    if n < 0:
        return "-" + humanize_bytes(-n)
    if n < 1024:
        return f"{n} B"
    unit = min((n.bit_length() - 1) // 10, len(_BINARY_UNITS) - 1)
    value = Fraction(n, 1 << (10 * unit))
    digits = 2 if value < 10 else 1 if value < 100 else 0
    scaled = round(value * 10**digits)  # integers only: any size, no float overflow
    if digits == 0:
        return f"{scaled} {_BINARY_UNITS[unit]}"
    return f"{scaled // 10**digits}.{scaled % 10**digits:0{digits}d} {_BINARY_UNITS[unit]}"


def humanize_tokens(n: int) -> str:
    """``131072`` -> ``128k``; counts that are not whole k stay as integers."""
    for suffix, size in (("M", 1 << 20), ("k", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size}{suffix}"
    return f"{n:,}"


def humanize_saving(cache_bytes: int, mha_bytes: int) -> str:
    """How many times less than the MHA-equivalent cache: ``71.1× less``, or ``same``."""
    if cache_bytes == mha_bytes:
        return "same"
    return f"{mha_bytes / cache_bytes:.1f}× less"


_BYTE_UNITS = {
    "b": 1,
    "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40,
}
_BYTES = re.compile(r"(\d{1,20}(?:\.\d{1,20})?)\s*([a-z]*)", re.IGNORECASE)


def parse_bytes(text: str, option: str) -> int:
    """``80GiB`` (powers of two), ``80GB`` or ``80G`` (powers of ten), or bytes ``85899345920B``. A
    bare number other than 0 is refused: 80 could mean GB or GiB, a 7% difference."""
    match = _BYTES.fullmatch(text.strip())
    unit = match[2].lower() if match else None
    if match and unit == "" and Fraction(match[1]) != 0:
        raise OptionError(f"{option}: {text!r}: give a unit: {match[1]}GiB (powers of two), {match[1]}GB "
                          "or G (powers of ten), or B for bytes")
    if not match or unit not in {"", *_BYTE_UNITS}:
        raise OptionError(f"{option}: {text!r} is not a size (examples: 80GiB, 80GB, 80G, 85899345920B)")
    size = Fraction(match[1]) * _BYTE_UNITS.get(unit, 1)
    if size.denominator != 1 or size < 0:
        raise OptionError(f"{option}: {text!r} is not a whole number of bytes")
    return int(size)
