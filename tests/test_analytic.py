"""Pure formula tests: the published reference figures, then properties over random architectures."""

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvcalc.analytic import Layout, Options, footprint, mha_equivalent
from kvcalc.catalog import load_bundled
from kvcalc.errors import OptionError
from kvcalc.formats import FORMATS, PackedMlaFormat, StorageFormat
from kvcalc.spec import MlaAttention, ModelSpec, StandardAttention

DEEPSEEK_V3 = load_bundled("deepseek-v3")


def test_deepseek_v3_latent():
    assert footprint(DEEPSEEK_V3, Options(seq_len=1)).bytes_per_token == 70_272


def test_deepseek_v3_decompressed():
    fp = footprint(DEEPSEEK_V3, Options(seq_len=1, layout=Layout.DECOMPRESSED))
    assert fp.bytes_per_token == 4_997_120  # 128 x (192 + 128) x 2 B x 61
    assert [p.name for p in fp.parts] == ["K", "V"]


def test_deepseek_v3_128k_request_with_its_mtp_layer():
    # FlashMLA's figure: 576 x 2 x 62 x 128 x 1024 = 8.72 GiB
    fp = footprint(DEEPSEEK_V3, Options(seq_len=131072, mtp=True))
    assert fp.total_bytes == 9_361_686_528
    assert fp.mtp_layers == 1


def test_latent_parts_are_named():
    fp = footprint(DEEPSEEK_V3, Options(seq_len=1))
    assert [(p.name, p.values, p.bytes_per_token_layer) for p in fp.parts] == [
        ("latent", 512, 1024),
        ("rope key", 64, 128),
    ]


def test_llama_references():
    assert footprint(load_bundled("llama-3.1-8b"), Options(1)).bytes_per_token == 131_072
    assert footprint(load_bundled("llama-2-7b"), Options(1)).bytes_per_token == 524_288


def test_mistral_window_caps_every_layer_at_32k():
    fp = footprint(load_bundled("mistral-7b-v0.1"), Options(seq_len=32768))
    assert fp.total_bytes == 536_870_912  # 131,072 B/token x 4096 tokens
    assert fp.bytes_per_token == 131_072  # the full-context rate is unchanged


def test_gemma3_sliding_and_full_layers_hold_different_tokens():
    fp = footprint(load_bundled("gemma-3-27b"), Options(seq_len=32768))
    full = 2 * 16 * 128 * 2 * 10
    sliding = 2 * 16 * 128 * 2 * 52
    assert fp.total_bytes == full * 32768 + sliding * 1024


def test_fp8_ds_mla_for_deepseek_v3():
    fp = footprint(DEEPSEEK_V3, Options(seq_len=1, kv_dtype="fp8_ds_mla"))
    assert fp.bytes_per_token == 656 * 61


def test_q8_0_latent_rows():
    fp = footprint(DEEPSEEK_V3, Options(seq_len=1, kv_dtype="q8_0"))
    assert fp.bytes_per_token == 612 * 61  # 576 values = 18 blocks x 34 B


@pytest.mark.parametrize(
    ("model", "options", "message"),
    [
        ("llama-3.1-8b", Options(1, kv_dtype="fp8_ds_mla"), "uses GQA attention"),
        ("deepseek-v3", Options(1, kv_dtype="fp8_ds_mla", layout=Layout.DECOMPRESSED), "latent layout"),
        ("minicpm3-4b", Options(1, kv_dtype="fp8_ds_mla"), "minicpm3-4b has 256 \\+ 32"),
        ("llama-3.1-8b", Options(0), "seq_len: 0 must be a whole number, at least 1"),
        ("llama-3.1-8b", Options(1, batch=0), "batch: 0 must be a whole number"),
    ],
)
def test_invalid_options(model, options, message):
    with pytest.raises(OptionError, match=message):
        footprint(load_bundled(model), options)


def test_mha_equivalent_of_mla_is_decompressed():
    mha = mha_equivalent(DEEPSEEK_V3, Options(seq_len=4096))
    assert (mha.layout, mha.bytes_per_token) == ("decompressed", 4_997_120)


def test_mha_equivalent_of_gqa_gives_every_query_head_its_kv():
    mha = mha_equivalent(load_bundled("llama-3.1-8b"), Options(seq_len=1))
    assert mha.bytes_per_token == 524_288


def test_mha_equivalent_of_fp8_ds_mla_uses_plain_fp8():
    mha = mha_equivalent(DEEPSEEK_V3, Options(seq_len=1, kv_dtype="fp8_ds_mla"))
    assert (mha.kv_dtype, mha.bytes_per_token) == ("fp8", 40_960 * 61)


# --- properties over random architectures ---------------------------------------------------

dims = st.integers(1, 512)
PLAIN = [n for n, f in FORMATS.items() if isinstance(f, StorageFormat) and not f.is_blocked]
ROW_FORMATS = [n for n, f in FORMATS.items() if not isinstance(f, PackedMlaFormat)]


@st.composite
def standard_specs(draw, kv_heads=None):
    groups = draw(st.integers(1, 16))
    kv = kv_heads if kv_heads is not None else draw(st.integers(1, 16))
    layers = draw(st.integers(1, 128))
    window = draw(st.none() | st.integers(1, 1 << 16))
    return ModelSpec(
        name="random",
        display_name="random",
        num_layers=layers,
        hidden_size=64,
        attention=StandardAttention(num_heads=kv * groups, num_kv_heads=kv, head_dim=draw(dims)),
        sliding_window=window,
        layer_pattern=None if window is None else draw(st.sampled_from([["sliding"], ["sliding", "full"]])),
    )


@st.composite
def mla_specs(draw):
    heads = draw(st.integers(1, 128))
    nope = draw(dims)
    return ModelSpec(
        name="random-mla",
        display_name="random",
        num_layers=draw(st.integers(1, 128)),
        hidden_size=64,
        mtp_layers=draw(st.integers(0, 2)),
        attention=MlaAttention(
            num_heads=heads,
            q_lora_rank=draw(st.none() | dims),
            # a compression: the latent is narrower than the per-head keys it rebuilds
            kv_lora_rank=draw(st.integers(1, heads * nope)),
            qk_nope_head_dim=nope,
            qk_rope_head_dim=draw(dims),
            v_head_dim=draw(dims),
        ),
    )


any_spec = standard_specs() | mla_specs()


@given(any_spec, st.integers(1, 1 << 20), st.integers(1, 64), st.sampled_from(ROW_FORMATS), st.booleans())
def test_total_is_linear_in_batch(spec, seq_len, batch, kv_dtype, mtp):
    one = footprint(spec, Options(seq_len, 1, kv_dtype, mtp=mtp))
    many = footprint(spec, Options(seq_len, batch, kv_dtype, mtp=mtp))
    assert many.total_bytes == batch * one.total_bytes


@given(any_spec, st.integers(1, 1 << 20), st.integers(1, 1 << 20), st.sampled_from(ROW_FORMATS))
def test_total_is_linear_in_sequence_below_any_window(spec, a, b, kv_dtype):
    window = spec.sliding_window or (1 << 40)
    a, b = min(a, window // 2 or 1), min(b, window // 2 or 1)
    if a + b > window:
        return
    fp = lambda n: footprint(spec, Options(n, kv_dtype=kv_dtype)).total_bytes  # noqa: E731
    assert fp(a + b) == fp(a) + fp(b)
    assert fp(a) == a * footprint(spec, Options(a, kv_dtype=kv_dtype)).bytes_per_token


@given(any_spec, st.integers(1, 1 << 22))
def test_windows_never_hold_more_than_the_full_context_rate(spec, seq_len):
    fp = footprint(spec, Options(seq_len))
    assert fp.total_bytes <= seq_len * fp.bytes_per_token


@given(standard_specs(), st.sampled_from(ROW_FORMATS), st.integers(1, 1 << 16))
def test_mqa_le_gqa_le_mha(spec, kv_dtype, seq_len):
    attn = spec.attention

    def with_kv_heads(n):
        a = replace(attn, num_kv_heads=n)
        return footprint(spec.replace(attention=a), Options(seq_len, kv_dtype=kv_dtype))

    mqa, gqa, mha = with_kv_heads(1), with_kv_heads(attn.num_kv_heads), with_kv_heads(attn.num_heads)
    assert mqa.total_bytes <= gqa.total_bytes <= mha.total_bytes
    assert mha.total_bytes == mha_equivalent(spec, Options(seq_len, kv_dtype=kv_dtype)).total_bytes


@given(mla_specs(), st.sampled_from(PLAIN), st.integers(1, 1 << 16))
def test_latent_is_smaller_than_decompressed(spec, kv_dtype, seq_len):
    latent = footprint(spec, Options(seq_len, kv_dtype=kv_dtype))
    decompressed = footprint(spec, Options(seq_len, kv_dtype=kv_dtype, layout=Layout.DECOMPRESSED))
    assert latent.total_bytes < decompressed.total_bytes


@given(any_spec, st.sampled_from(PLAIN))
def test_plain_formats_are_values_times_width(spec, kv_dtype):
    fp = footprint(spec, Options(1, kv_dtype=kv_dtype))
    width = FORMATS[kv_dtype].block_bytes
    assert fp.bytes_per_token == sum(p.values * width * p.layers for p in fp.parts)


@given(mla_specs())
def test_mla_latent_ignores_the_head_count(spec):
    more_heads = replace(spec.attention, num_heads=spec.attention.num_heads * 8)
    wider = spec.replace(attention=more_heads)
    assert footprint(wider, Options(1)).bytes_per_token == footprint(spec, Options(1)).bytes_per_token
