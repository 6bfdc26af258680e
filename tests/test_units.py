import pytest

from kvcalc.errors import OptionError
from kvcalc.units import humanize_bytes, humanize_saving, humanize_tokens, parse_token_list, parse_tokens


@pytest.mark.parametrize(
    ("text", "tokens"),
    [("4096", 4096), ("4k", 4096), ("4K", 4096), ("128k", 131072), ("1M", 1048576), ("1.5k", 1536)],
)
def test_parse_tokens(text, tokens):
    assert parse_tokens(text) == tokens


@pytest.mark.parametrize("text", ["", "k", "4x", "-4", "0", "1.0001k", "4 k", "1e3"])
def test_parse_tokens_rejects(text):
    with pytest.raises(OptionError, match="--seq"):
        parse_tokens(text)


def test_parse_token_list_keeps_order():
    assert parse_token_list("128k,4k,8192") == [131072, 4096, 8192]


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.00 KiB"),
        (70272, "68.6 KiB"),
        (536870912, "512 MiB"),
        (9361686528, "8.72 GiB"),
    ],
)
def test_humanize_bytes(n, text):
    assert humanize_bytes(n) == text


def test_humanize_tokens():
    assert [humanize_tokens(n) for n in (131072, 4096, 1048576, 1000)] == ["128k", "4k", "1M", "1,000"]


def test_humanize_saving():
    assert humanize_saving(70272, 4997120) == "71.1× less"
    assert humanize_saving(10, 10) == "same"
