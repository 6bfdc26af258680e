"""Published configs of the 2025-26 families (``tests/data/published``, sources in its SOURCES.md),
read by kvcalc and by transformers 5.23: the same layers, the same shapes, and the figures pinned."""

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoConfig
from transformers.cache_utils import get_layer_types_and_kwargs

from kvcalc.analytic import Options, chunk_pages, footprint
from kvcalc.catalog import load_bundled, parse_spec
from kvcalc.errors import OptionError

DATA = Path(__file__).parent / "data" / "published"
KINDS = {"full_attention": "full", "sliding_attention": "sliding", "chunked_attention": "chunked",
         "dummy": "shared", "indexed_attention": "full"}

# file: (bf16 bytes per token over all layers, ideal; layers of each kind)
READ = {
    "llama-4-scout-17b-16e-instruct": (196_608, {"full": 12, "chunked": 36}),
    "llama-4-maverick-17b-128e-instruct.trimmed": (196_608, {"full": 12, "chunked": 36}),
    "gemma-4-26b-a4b": (225_280, {"full": 5, "sliding": 25}),
    "gemma-4-31b-it-nvfp4": (901_120, {"full": 10, "sliding": 50}),
    "gemma-4-e4b-it": (57_344, {"full": 4, "sliding": 20, "shared": 18}),
    "mimo-v2-flash": (222_720, {"full": 9, "sliding": 39}),
    "glm-5": (100_152, {"full": 78}),
}


# Linear-attention and Mamba hybrids -- file: (bf16 bytes per token, recurrent state bytes per sequence;
# layers of each kind)
READ_RECURRENT = {
    "nemotron-3-nano-30b-a3b-bf16": (6_144, 49_364_992, {"recurrent": 23, "full": 6, "mlp": 23}),
}
RECURRENT_KINDS = {"full_attention": "full", "linear_attention": "recurrent", "dummy": "mlp"}
"""transformers' cache layer types of these families: a Nemotron-H MoE or MLP block is a dummy layer."""
MIXER_FIELDS = {
    "nemotron_h": {"num_heads": "mamba_num_heads", "head_dim": "mamba_head_dim", "d_state": "ssm_state_size",
                   "n_groups": "n_groups", "conv_kernel": "conv_kernel"},
}
"""Where transformers' config class keeps each field of kvcalc's mixer."""


def read(name: str):
    path = DATA / f"{name}.json"
    return parse_spec(path.read_text(), str(path)), json.loads(path.read_text())


def assert_read_as_transformers_reads_it(spec, config: dict) -> None:
    """Every layer's kind, the attention and the mixer, as transformers' config and cache hold them."""
    text = AutoConfig.for_model(**config).get_text_config()
    types, _ = get_layer_types_and_kwargs(text)
    assert [RECURRENT_KINDS[t] for t in types] == [str(k) for k in spec.layer_kinds]
    assert (spec.attention.num_kv_heads, spec.attention.head_dim) == (text.num_key_value_heads, text.head_dim)
    fields = MIXER_FIELDS[text.model_type]
    assert {k: getattr(spec.recurrent, k) for k in fields} == {k: getattr(text, v) for k, v in fields.items()}


def transformers_layers(config: dict) -> list[tuple[str, int | None, int | None, int | None]]:
    """(kind, window, head_dim, KV heads) of every layer, as transformers builds the cache."""
    text = AutoConfig.for_model(**config).get_text_config()
    types, kwargs = get_layer_types_and_kwargs(text)
    shapes = []
    for i, t in enumerate(types):
        layer = text.per_layer_config[i] if getattr(text, "per_layer_config", None) else text
        heads = layer.num_key_value_heads
        if text.model_type == "mimo_v2_flash" and t == "sliding_attention":
            heads *= 2  # modeling_mimo_v2_flash.py: sliding layers have twice the KV heads
        shapes.append((KINDS[t], kwargs[i].get("sliding_window"), layer.head_dim, heads))
    return shapes


@pytest.mark.parametrize("name", sorted(READ))
def test_published_config_is_read_as_transformers_reads_it(name):
    spec, config = read(name)
    bytes_per_token, counts = READ[name]
    assert {str(k): n for k, n in spec.layer_counts.items()} == counts
    assert footprint(spec, Options(1000)).bytes_per_token == bytes_per_token
    if spec.attention.kind == "mla":
        assert [k for k, *_ in transformers_layers(config)] == [str(k) for k in spec.layer_kinds]
        return
    ours = [(str(k), spec.span(k), spec.attention_for(k).head_dim, spec.attention_for(k).num_kv_heads)
            for k in spec.layer_kinds]
    theirs = transformers_layers(config)
    shared = [i for i, (kind, *_) in enumerate(theirs) if kind == "shared"]
    for i in shared:  # a shared layer caches nothing: its shape is not kvcalc's to give
        ours[i] = theirs[i]
    assert ours == theirs


@pytest.mark.parametrize(("name", "bundled"), [
    ("llama-4-scout-17b-16e-instruct", "llama-4-scout"), ("gemma-4-e4b-it", "gemma-4-e4b"),
    ("gemma-4-26b-a4b", "gemma-4-26b-a4b"), ("gemma-4-31b-it-nvfp4", "gemma-4-31b"),
    ("mimo-v2-flash", "mimo-v2-flash"), ("glm-5", "glm-5"),
])
def test_the_catalog_holds_what_the_published_config_says(name, bundled):
    spec, _ = read(name)
    ours = load_bundled(bundled)
    assert spec.layer_kinds == ours.layer_kinds
    assert [spec.attention_for(k) for k in spec.layer_kinds] == [ours.attention_for(k) for k in ours.layer_kinds]
    assert (spec.sliding_window, spec.attention_chunk_size, spec.mtp_layers, spec.max_position_embeddings) == (
        ours.sliding_window, ours.attention_chunk_size, ours.mtp_layers, ours.max_position_embeddings)


@pytest.mark.parametrize("name", sorted(READ_RECURRENT))
def test_published_hybrid_config_is_read_as_transformers_reads_it(name):
    spec, config = read(name)
    bytes_per_token, state_bytes, counts = READ_RECURRENT[name]
    assert {str(k): n for k, n in spec.layer_counts.items()} == counts
    fp = footprint(spec, Options(1000))
    assert (fp.bytes_per_token, fp.state_bytes_per_sequence) == (bytes_per_token, state_bytes)
    assert_read_as_transformers_reads_it(spec, config)


def _figures(spec, options: Options) -> tuple[int, int, int] | str:
    """Bytes per token, state bytes per sequence and the total; or the engine's refusal."""
    try:
        fp = footprint(spec, options)
    except OptionError as e:
        return str(e)
    return fp.bytes_per_token, fp.state_bytes_per_sequence, fp.total_bytes


@pytest.mark.parametrize("engine", [None, "transformers", "vllm", "sglang", "llama.cpp"])
@pytest.mark.parametrize(("name", "bundled"), [("nemotron-3-nano-30b-a3b-bf16", "nemotron-3-nano-30b-a3b")])
def test_the_catalog_holds_the_state_the_published_config_says(name, bundled, engine):
    """The bundled spec and the published config: the same layers, mixer and attention, and the same
    figures on each engine (or the same refusal)."""
    spec, _ = read(name)
    ours = load_bundled(bundled)
    assert (ours.layer_kinds, ours.recurrent, ours.attention) == (spec.layer_kinds, spec.recurrent, spec.attention)
    assert (ours.architecture, ours.max_position_embeddings) == (spec.architecture, spec.max_position_embeddings)
    options = Options(32_768, batch=2, engine=engine)
    assert _figures(ours, options) == _figures(spec, options)


def test_gemma4_full_layers_take_the_global_shape():
    spec, _ = read("gemma-4-26b-a4b")
    full, sliding = spec.attention_for("full"), spec.attention_for("sliding")
    assert (full.num_kv_heads, full.head_dim, sliding.num_kv_heads, sliding.head_dim) == (2, 512, 8, 256)


def test_mimo_window_is_sliding_window_size_plus_one():
    spec, config = read("mimo-v2-flash")
    assert (config["sliding_window_size"], spec.sliding_window) == (128, 129)


def test_llama4_on_the_engines():
    spec, _ = read("llama-4-scout-17b-16e-instruct")
    seq = 100_000
    ideal = footprint(spec, Options(seq)).total_bytes
    assert ideal == 4096 * (12 * seq + 36 * 8192)  # K + V of 8 x 128 in bf16; chunked: one chunk
    hf = footprint(spec, Options(seq, engine="transformers")).total_bytes
    assert hf == 4096 * (12 * seq + 36 * 8191)  # DynamicSlidingWindowLayer of the chunk: chunk - 1
    vllm = footprint(spec, Options(seq, engine="vllm")).total_bytes
    assert vllm == 4096 * (12 * 100_000 + 36 * 8192)  # 16-token pages, 8192 a multiple of 16
    cpp = footprint(spec, Options(seq, engine="llama.cpp")).total_bytes
    assert cpp == 4096 * (12 * 100_096 + 36 * 8704)  # pad(8192 + 512, 256); context padded to 256
    sglang = footprint(spec, Options(seq, engine="sglang")).total_bytes  # hybrid SWA: chunked in the SWA pool
    assert sglang == 4096 * (12 * 100_000 + 36 * 80_000)  # 0.8 x 100,000 tokens, whatever the chunk


def test_vllm_pages_of_different_sizes_are_refused():
    spec, _ = read("gemma-4-26b-a4b")
    with pytest.raises(OptionError, match=r"pages differ in size per token \(full 4,096 B, sliding 8,192 B\)"):
        footprint(spec, Options(1000, engine="vllm"))
    assert footprint(spec, Options(1000, engine="sglang")).bytes_per_token == 225_280


@pytest.mark.parametrize("name", sorted({*READ, *READ_RECURRENT}))
def test_import_writes_a_spec_that_reads_back_the_same(cli, tmp_path, name):
    target = tmp_path / "spec.yaml"
    status, _, _ = cli("import", str(DATA / f"{name}.json"), "-o", str(target))
    assert status == 0
    spec, _ = read(name)
    again = parse_spec(target.read_text(), str(target))
    for seq in (100, 50_000):
        assert footprint(again, Options(seq)).total_bytes == footprint(spec, Options(seq)).total_bytes
    assert again.layer_kinds == spec.layer_kinds


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(tokens=st.integers(1, 400), chunk=st.integers(1, 64), page=st.integers(1, 48))
def test_chunk_pages_is_the_most_any_chunk_spans(tokens, chunk, page):
    """vLLM keeps the pages of the current chunk (chunks start at multiples of the chunk): the most
    it holds while a sequence grows to ``tokens``, by brute force over every length."""
    def held(t):  # pages of the chunk holding token t - 1, up to token t - 1
        start = (t - 1) // chunk * chunk
        return (t - 1) // page - start // page + 1
    assert chunk_pages(tokens, chunk, page) == max(held(t) for t in range(1, tokens + 1))
