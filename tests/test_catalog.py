"""The bundled catalog: every spec loads, names its source, and gives the published shape's bytes."""

from importlib import resources

import pytest

from kvcalc.analytic import Options, footprint
from kvcalc.catalog import bundled_names, load_bundled, parse_spec, resolve
from kvcalc.errors import SpecError, UnknownModelError

CATALOG = resources.files("kvcalc") / "model_specs"

# bf16 bytes per token over all layers, worked by hand from each publisher's config.json.
EXPECTED_BF16_BYTES_PER_TOKEN = {
    "deepseek-v2": (512 + 64) * 2 * 60,
    "deepseek-v2-lite": (512 + 64) * 2 * 27,
    "deepseek-v3": 70_272,  # (512 + 64) x 2 x 61
    "deepseek-v3.2": 78_324,  # ((512 + 64) x 2 + 132 indexer) x 61
    "gpt-oss-20b": 2 * 8 * 64 * 2 * 24,  # K + V, 8 KV heads x 64, bf16, 24 layers
    "deepseek-r1": 70_272,
    "kimi-k2": 70_272,
    "minicpm3-4b": (256 + 32) * 2 * 62,
    "llama-2-7b": 524_288,  # 2 x 32 heads x 128 x 2 x 32
    "llama-2-70b": 2 * 8 * 128 * 2 * 80,
    "llama-3.1-8b": 131_072,  # 2 x 8 x 128 x 2 x 32
    "llama-3.1-70b": 2 * 8 * 128 * 2 * 80,
    "llama-3.1-405b": 2 * 8 * 128 * 2 * 126,
    "mistral-7b-v0.1": 2 * 8 * 128 * 2 * 32,
    "mixtral-8x7b": 2 * 8 * 128 * 2 * 32,
    "qwen2.5-7b": 2 * 4 * 128 * 2 * 28,
    "qwen2.5-72b": 2 * 8 * 128 * 2 * 80,
    "qwen3-8b": 2 * 8 * 128 * 2 * 36,
    "qwen3-235b-a22b": 2 * 4 * 128 * 2 * 94,
    "gemma-2-9b": 2 * 8 * 256 * 2 * 42,
    "gemma-2-27b": 2 * 16 * 128 * 2 * 46,
    "gemma-3-27b": 2 * 16 * 128 * 2 * 62,
    "falcon-7b": 2 * 1 * 64 * 2 * 32,
    "gpt-oss-120b": 2 * 8 * 64 * 2 * 36,
    "phi-3-mini-4k": 2 * 32 * 96 * 2 * 32,
    "llama-4-scout": 2 * 8 * 128 * 2 * 48,  # 36 chunked + 12 full layers, all 8 x 128
    "llama-4-maverick": 2 * 8 * 128 * 2 * 48,
    "gemma-3n-e4b": 2 * 2 * 256 * 2 * 20,  # the last 15 of 35 layers share earlier caches
    "gemma-4-e4b": 2 * 2 * 2 * (256 * 20 + 512 * 4),  # 18 of 42 shared; full layers 512 wide
    "gemma-4-26b-a4b": 2 * 2 * (8 * 256 * 25 + 2 * 512 * 5),  # full: 2 global KV heads x 512
    "gemma-4-31b": 2 * 2 * (16 * 256 * 50 + 4 * 512 * 10),
    "mimo-v2-flash": 2 * (192 + 128) * (4 * 9 + 8 * 39),  # K 192 + V 128; sliding: 8 KV heads
    "glm-5": ((512 + 64) * 2 + 132) * 78,  # latent + rope key + the indexer key (132 B, fp8 + scale)
    "longcat-flash": (512 + 64) * 2 * 56,  # two MLA sublayers in each of 28 decoder layers
    # K = V 512 in every layer's window (counted whole), compressed entries at 1/R per token:
    # 512 x 2 B per entry, 1/4 on CSA layers, 1/128 on HCA ones; the indexer's 132 B at 1/4.
    "deepseek-v4-flash": 1024 * 43 + 1024 * 21 // 4 + 132 * 21 // 4 + 1024 * 20 // 128,  # 50,261
    "deepseek-v4-pro": 1024 * 61 + 1024 * 30 // 4 + 132 * 30 // 4 + 1024 * 31 // 128,  # 71,382
    # hybrid_override_pattern: 6 attention layers (*), K + V of 2 KV heads x 128; Mamba2 and MoE blocks
    # hold nothing per token
    "nemotron-3-nano-30b-a3b": 2 * 2 * 128 * 2 * 6,  # 6,144
    "minimax-m1": 2 * 8 * 128 * 2 * 10,  # 10 softmax layers of 80: 40,960
}

# Recurrent state per sequence, whatever its length (0 for every other model), worked from the configs:
# conv state (channels x conv_kernel) in the cache dtype, recurrent state in fp32.
EXPECTED_STATE_BYTES_PER_SEQUENCE = {
    # 23 Mamba2 layers: conv over 64 heads x 64 + 2 x 8 groups x d_state 128 = 6,144 channels x 4 in bf16,
    # state 64 x 64 x 128 in fp32
    "nemotron-3-nano-30b-a3b": 23 * ((64 * 64 + 2 * 8 * 128) * 4 * 2 + 64 * 64 * 128 * 4),  # 49,364,992
    # 70 lightning layers: 64 heads x 128 x 128 in the cache dtype (bf16), no conv
    "minimax-m1": 70 * 64 * 128 * 128 * 2,  # 146,800,640
}

# (sliding layers, window) as the published configs define them.
EXPECTED_WINDOWS = {
    "mistral-7b-v0.1": (32, 4096),
    "gemma-2-9b": (21, 4096),
    "gemma-2-27b": (23, 4096),
    "gemma-3-27b": (52, 1024),
    "gpt-oss-20b": (12, 128),
    "gpt-oss-120b": (18, 128),
    "phi-3-mini-4k": (32, 2047),
    "gemma-3n-e4b": (16, 512),
    "gemma-4-e4b": (20, 512),
    "gemma-4-26b-a4b": (25, 1024),
    "gemma-4-31b": (50, 1024),
    "mimo-v2-flash": (39, 129),
    "deepseek-v4-flash": (2, 128),  # and the 41 compressed layers: every V4 layer has the window
    "deepseek-v4-pro": (0, 128),
}


def test_catalog_holds_the_required_models():
    assert set(bundled_names()) == set(EXPECTED_BF16_BYTES_PER_TOKEN)
    assert set(EXPECTED_STATE_BYTES_PER_SEQUENCE) == {n for n in bundled_names() if load_bundled(n).recurrent}


@pytest.mark.parametrize("name", bundled_names())
def test_bundled_spec(name):
    spec = load_bundled(name)
    # Bundled files load without pydantic at run time; here each one must pass the schema too.
    assert parse_spec((CATALOG / f"{name}.yaml").read_text(), f"{name}.yaml") == spec
    assert spec.name == name
    assert spec.source.startswith("https://huggingface.co/") and spec.source.endswith("config.json")
    assert spec.params is None or spec.params > 10**9
    fp = footprint(spec, Options(seq_len=1))
    assert fp.bytes_per_token == EXPECTED_BF16_BYTES_PER_TOKEN[name]
    assert fp.state_bytes_per_sequence == EXPECTED_STATE_BYTES_PER_SEQUENCE.get(name, 0)
    sliding = spec.layer_counts["sliding"]
    assert (sliding, spec.sliding_window) == EXPECTED_WINDOWS.get(name, (0, None))


def test_mtp_layers_only_where_published():
    assert {n for n in bundled_names() if load_bundled(n).mtp_layers} == {
        "deepseek-v3", "deepseek-r1", "deepseek-v3.2", "glm-5", "deepseek-v4-flash", "deepseek-v4-pro"}


def test_gemma3_global_layers_are_every_sixth():
    kinds = load_bundled("gemma-3-27b").layer_kinds
    assert [i for i, k in enumerate(kinds) if k == "full"] == [5, 11, 17, 23, 29, 35, 41, 47, 53, 59]


def test_resolve_is_case_insensitive():
    assert resolve("DeepSeek-V3").name == "deepseek-v3"


def test_unknown_name_lists_the_closest():
    with pytest.raises(UnknownModelError, match=r"unknown model 'deepseek-v4'; closest: deepseek-v3"):
        resolve("deepseek-v4")


def test_resolve_reads_a_path(spec_file):
    assert resolve(str(spec_file())).name == "tiny"


def test_resolve_a_folder(tmp_path):
    with pytest.raises(SpecError, match="is a folder"):
        resolve(str(tmp_path))


def test_resolve_a_missing_file(tmp_path):
    with pytest.raises(UnknownModelError, match="no such file"):
        resolve(str(tmp_path / "absent.yaml"))


def test_binary_file(spec_file, tmp_path):
    path = tmp_path / "weights.yaml"
    path.write_bytes(b"\xff\xfe\x00\x01")
    with pytest.raises(SpecError, match="not a text file"):
        resolve(str(path))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: x\n  bad: [\n", r"^f.yaml: line 2, column 6: malformed YAML"),
        ("- 1\n- 2\n", r"^f.yaml: expected a mapping of spec fields, got list"),
        ("", r"^f.yaml: expected a mapping of spec fields, got NoneType"),
        ("!!python/object/apply:os.system ['true']",
             r"^f.yaml: line 1, column 1: tag !!python/object/apply:os.system is not accepted"),
    ],
)
def test_malformed_yaml(text, message):
    with pytest.raises(SpecError, match=message):
        parse_spec(text, "f.yaml")


@pytest.mark.parametrize(
    ("replace", "message"),
    [
        (("num_kv_heads: 2", "num_kv_heads: 3"), r"f.yaml: attention: num_kv_heads 3 does not divide"),
        (("num_layers: 4", "num_layers: '4'"), r"f.yaml: num_layers: '4': Input should be a valid int"),
        (("num_layers: 4", "num_layers: 0"), r"f.yaml: num_layers: 0: Input should be greater than or equal to 1"),
        (("head_dim: 8", "head_dim: 8\n  rope: 1"), r"f.yaml: attention.rope: unknown field \(value 1\)"),
        (("  head_dim: 8\n", ""), r"f.yaml: attention.head_dim: required field is missing"),
        (("kind: standard", "kind: flash"), r"f.yaml: attention.kind: 'flash' is not one of"),
        (("  kind: standard\n", ""), r"f.yaml: attention.kind: required field is missing"),
    ],
)
def test_invalid_spec_names_file_field_and_value(replace, message):
    from tests.conftest import MINIMAL_SPEC

    with pytest.raises(SpecError, match=message):
        parse_spec(MINIMAL_SPEC.replace(*replace), "f.yaml")


def test_minimax_m1_lays_out_its_layers_as_its_attn_type_list():
    """MiniMax-M1's published attn_type_list (github.com/MiniMax-AI/MiniMax-M1 at 2abb4f4, config.json)
    is 1 at layers 7, 15, ..., 79: softmax attention there, lightning attention elsewhere."""
    spec = load_bundled("minimax-m1")
    assert [i for i, kind in enumerate(spec.layer_kinds) if kind == "full"] == list(range(7, 80, 8))
    assert spec.layer_counts["recurrent"] == 70
