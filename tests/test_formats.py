import pytest

from kvcalc.errors import OptionError
from kvcalc.formats import FP8_DS_MLA, get_format


@pytest.mark.parametrize(
    ("name", "values", "row_bytes"),
    [
        ("fp32", 576, 2304),
        ("bf16", 576, 1152),
        ("fp16", 576, 1152),
        ("fp8", 576, 576),
        ("fp8_e5m2", 576, 576),
        ("int8", 576, 576),
        ("q8_0", 576, 612),  # 18 blocks of 32 values x 34 B
        ("q4_0", 576, 324),  # 18 x 18 B
        ("q4_1", 576, 360),
        ("q5_0", 576, 396),
        ("q5_1", 576, 432),
        ("q8_0", 33, 68),  # a partial block is rounded up to a whole one
    ],
)
def test_row_bytes(name, values, row_bytes):
    assert get_format(name).row_bytes(values) == row_bytes


def test_fp8_ds_mla_is_656_bytes_per_token_layer():
    # 512 fp8 latent + 4 fp32 scales + 64 bf16 rope values
    assert FP8_DS_MLA.latent_bytes() + FP8_DS_MLA.rope_bytes() == 656


def test_format_names_are_case_insensitive():
    assert get_format("BF16").name == "bf16"


def test_unknown_format():
    with pytest.raises(OptionError, match=r"--kv-dtype: unknown storage format 'fp9'"):
        get_format("fp9")
