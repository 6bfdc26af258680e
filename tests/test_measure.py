"""kvcalc measure: real layers hold exactly the bytes the formula gives, for every bundled model."""

import json
import math

import pytest

torch = pytest.importorskip("torch")

from kvcalc.analytic import Layout  # noqa: E402
from kvcalc.catalog import bundled_names, load_bundled  # noqa: E402
from kvcalc.errors import OptionError  # noqa: E402
from kvcalc.measure import MeasureOptions, measure, resolve_device  # noqa: E402

CPU = torch.device("cpu")
LAYOUTS = {n: [Layout.LATENT, Layout.DECOMPRESSED] if load_bundled(n).attention.kind == "mla"
           else [Layout.LATENT] for n in bundled_names()}


@pytest.mark.parametrize(("name", "layout"), [(n, lay) for n, ls in LAYOUTS.items() for lay in ls])
def test_measured_equals_analytic_for_every_bundled_model(name, layout):
    # The models' true dimensions; a short context keeps CI fast (bench/ has the long ones).
    row = measure(load_bundled(name), MeasureOptions(seq_len=40, batch=2, layout=layout, decode_steps=3), CPU)
    assert row.error is None
    assert row.measured_bytes == row.analytic_bytes and row.match
    assert row.model_bytes_scaled == row.model_bytes
    assert row.prefill_s > 0 and row.decode_s_per_token > 0


def test_sliding_layers_hold_only_their_window():
    row = measure(load_bundled("gpt-oss-120b"), MeasureOptions(seq_len=300, decode_steps=2), CPU)
    full, sliding = 2 * 8 * 64 * 2 * 300, 2 * 8 * 64 * 2 * 128  # one layer of each kind
    assert row.layers == 2 and row.measured_bytes == full + sliding == row.analytic_bytes


@pytest.mark.parametrize(("kv_dtype", "width"), [("fp32", 4), ("fp16", 2), ("fp8", 1), ("fp8_e5m2", 1)])
def test_cache_dtypes(kv_dtype, width):
    row = measure(load_bundled("llama-3.1-8b"), MeasureOptions(seq_len=16, kv_dtype=kv_dtype, decode_steps=2), CPU)
    assert row.measured_bytes == 2 * 8 * 128 * width * 16 == row.analytic_bytes


def test_several_layers_are_scaled_to_the_model():
    row = measure(load_bundled("deepseek-v2-lite"), MeasureOptions(seq_len=16, layers=3, decode_steps=1), CPU)
    assert (row.layers, row.measured_bytes) == (3, 3 * 576 * 2 * 16)
    assert row.model_bytes_scaled == 27 * 576 * 2 * 16


def test_a_row_that_does_not_fit_is_reported(monkeypatch):
    import kvcalc.measure as m

    monkeypatch.setattr(m, "_available_host_bytes", lambda: 1 << 20)
    row = measure(load_bundled("llama-3.1-8b"), MeasureOptions(seq_len=4096), CPU)
    assert row.measured_bytes is None and row.match is None
    assert row.error.startswith("needs about") and "GiB of host memory" in row.error


@pytest.mark.parametrize(
    ("options", "message"),
    [(MeasureOptions(16, kv_dtype="q8_0"), "measure stores fp32, bf16"),
     (MeasureOptions(16, layers=0), "--layers: 0"), (MeasureOptions(16, decode_steps=-1), "--decode-steps")],
)
def test_invalid_options(options, message):
    with pytest.raises(OptionError, match=message):
        measure(load_bundled("llama-3.1-8b"), options, CPU)


def test_cuda_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(OptionError, match="--device cuda: no CUDA device is available"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"


def test_cli_json_rows(cli):
    status, out, _ = cli("measure", "deepseek-v2-lite", "--seq", "32", "--layout", "latent,decompressed",
                         "--decode-steps", "2", "--device", "cpu", "-f", "json")
    assert status == 0
    rows = json.loads(out)["rows"]
    assert [(r["layout"], r["match"]) for r in rows] == [("latent", True), ("decompressed", True)]
    assert set(rows[0]) >= {"model", "device", "layout", "kv_dtype", "seq_len", "batch", "layers",
                            "analytic_bytes", "measured_bytes", "match", "prefill_s",
                            "decode_s_per_token", "decode_bytes_per_s"}
    assert rows[1]["measured_bytes"] == 16 * (192 + 128) * 2 * 32


def test_cli_exit_1_when_a_row_is_not_measured(cli, monkeypatch):
    import kvcalc.measure as m

    monkeypatch.setattr(m, "_available_host_bytes", lambda: 1 << 20)
    status, out, _ = cli("measure", "llama-3.1-8b", "--seq", "4k", "--device", "cpu")
    assert status == 1
    assert "not measured: needs about" in out


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_allocator_view():
    row = measure(load_bundled("deepseek-v3"), MeasureOptions(seq_len=1024), torch.device("cuda"))
    assert row.match
    assert row.cuda_allocated_bytes >= row.measured_bytes  # the caching allocator rounds up
    assert row.cuda_peak_prefill_bytes >= row.cuda_allocated_bytes


def test_chunked_layers_hold_one_chunk():
    """Llama-4's shape with chunks of 16: at 40 tokens a chunked layer's ring holds 16."""
    from kvcalc.spec import ModelSpec

    spec = ModelSpec.from_dict({
        "name": "tiny-llama4", "display_name": "tiny", "num_layers": 4, "hidden_size": 64,
        "attention": {"kind": "standard", "num_heads": 4, "num_kv_heads": 2, "head_dim": 16},
        "attention_chunk_size": 16, "layer_pattern": ["chunked", "chunked", "chunked", "full"],
    })
    row = measure(spec, MeasureOptions(seq_len=40, decode_steps=3), CPU)
    full, chunked = 2 * 2 * 16 * 2 * 40, 2 * 2 * 16 * 2 * 16  # one layer of each kind, bf16
    assert row.measured_bytes == full + chunked == row.analytic_bytes
    assert row.model_bytes_scaled == full + 3 * chunked == row.model_bytes


@pytest.mark.parametrize("kv_dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("mixer", [
    {"kind": "gated_deltanet", "num_k_heads": 2, "num_v_heads": 4, "head_k_dim": 16, "head_v_dim": 8,
     "conv_kernel": 4},
    {"kind": "mamba2", "num_heads": 4, "head_dim": 8, "d_state": 16, "n_groups": 2, "conv_kernel": 4},
    {"kind": "kda", "num_heads": 4, "head_dim": 8, "conv_kernel": 4},
    {"kind": "lightning", "num_heads": 4, "head_dim": 16},
    {"kind": "mamba", "intermediate_size": 128, "d_state": 8, "conv_kernel": 4},
], ids=lambda mixer: mixer["kind"])
def test_recurrent_layers_hold_their_state(mixer, kv_dtype):
    """A hybrid's recurrent layers keep conv inputs and a state whatever the length, MLP blocks
    nothing: measured bytes equal the analytic figure, scaled to the model."""
    from kvcalc.spec import ModelSpec

    spec = ModelSpec.from_dict({
        "name": "hybrid", "display_name": "Hybrid", "num_layers": 8, "hidden_size": 64,
        "attention": {"kind": "standard", "num_heads": 4, "num_kv_heads": 2, "head_dim": 16},
        "layer_pattern": ["recurrent", "mlp", "recurrent", "full"], "recurrent": mixer})
    row = measure(spec, MeasureOptions(seq_len=24, batch=2, kv_dtype=kv_dtype, decode_steps=3, layers=2), CPU)
    assert row.match and row.measured_bytes == row.analytic_bytes > 0
    assert row.layers == 4  # two recurrent, two full; MLP blocks allocate nothing
    assert row.model_bytes_scaled == row.model_bytes


@pytest.mark.parametrize("kv_dtype", ["fp32", "bf16"])
def test_hybrid_layers_hold_kv_and_state(kv_dtype):
    """Falcon-H1's layers: attention and a Mamba2 mixer side by side, K/V per token and the state."""
    from kvcalc.spec import ModelSpec

    spec = ModelSpec.from_dict({
        "name": "falcon-tiny", "display_name": "Falcon tiny", "num_layers": 3, "hidden_size": 64,
        "attention": {"kind": "standard", "num_heads": 4, "num_kv_heads": 2, "head_dim": 16},
        "layer_pattern": ["hybrid"],
        "recurrent": {"kind": "mamba2", "num_heads": 8, "head_dim": 16, "d_state": 16, "n_groups": 2,
                      "conv_kernel": 4}})
    row = measure(spec, MeasureOptions(seq_len=24, batch=2, kv_dtype=kv_dtype, decode_steps=3), CPU)
    width = 4 if kv_dtype == "fp32" else 2
    kv, conv, state = 2 * 2 * 16 * width * 24, (128 + 2 * 2 * 16) * 4 * width, 8 * 16 * 16 * 4
    assert row.match and row.measured_bytes == 2 * (kv + conv + state) == row.analytic_bytes
    assert row.layers == 1 and row.model_bytes_scaled == row.model_bytes == 3 * row.measured_bytes


def test_cli_measure_tp_2_shards_a_hybrid_layer(cli, tmp_path):
    """Falcon-H1's layer at --tp 2 (gloo ranks on the CPU): one KV head per rank, and half the Mamba2
    heads with the one group copied to both ranks -- conv (64 + 2 x 16) x 4, state 4 x 16 x 16 fp32."""
    path = tmp_path / "falcon_h1.json"
    path.write_text(json.dumps({"model_type": "falcon_h1", **HF_TINY, "num_hidden_layers": 2, "mamba_d_ssm": 128,
                                "mamba_n_heads": 8, "mamba_d_head": 16, "mamba_n_groups": 1, "mamba_d_state": 16,
                                "mamba_d_conv": 4}))
    status, out, err = cli("measure", str(path), "--tp", "2", "--seq", "16", "--decode-steps", "2",
                           "--device", "cpu", "-f", "json")
    assert status == 0, err
    per_rank = 2 * 1 * 16 * 2 * 16 + (64 + 2 * 16) * 4 * 2 + 4 * 16 * 16 * 4
    assert [(r["rank"], r["match"], r["measured_bytes"]) for r in json.loads(out)["rows"]] == [
        (0, True, per_rank), (1, True, per_rank)]


HF_TINY = {"vocab_size": 97, "hidden_size": 64, "intermediate_size": 64, "num_attention_heads": 4,
           "num_key_value_heads": 2, "max_position_embeddings": 256}
# Per family, a tiny config.json and its bytes at 64 tokens, bf16, one layer of each kind:
HF_CONFIGS = {
    # Kimi-Linear: MLA latent (16 + 8) x 64 tokens; KDA conv 3 x 4 x 8 channels x 4, state 4 x 8 x 8 fp32.
    "kimi_linear": ({"num_key_value_heads": 4, "num_hidden_layers": 5, "kv_lora_rank": 16, "q_lora_rank": None,
                     "qk_rope_head_dim": 8, "qk_nope_head_dim": 16, "v_head_dim": 12,
                     "linear_attn_config": {"num_heads": 4, "head_dim": 8, "short_conv_kernel_size": 4,
                                            "full_attn_layers": [4], "kda_layers": [1, 2, 3, 5]}},
                    (16 + 8) * 2 * 64 + 96 * 4 * 2 + 4 * 8 * 8 * 4),
    # MiniMax: GQA K/V 2 x 2 heads x 16 x 64 tokens; lightning state 4 x 16 x 16 in the cache dtype, no conv.
    "minimax": ({"head_dim": 16, "num_hidden_layers": 4,
                 "layer_types": ["full_attention", "linear_attention", "linear_attention", "full_attention"]},
                2 * 2 * 16 * 2 * 64 + 4 * 16 * 16 * 2),
    # Jamba: K/V as MiniMax's (head_dim 64 / 4); Mamba conv 128 inner channels x 4, state 128 x 8 fp32.
    "jamba": ({"num_hidden_layers": 4, "attn_layer_period": 2, "attn_layer_offset": 1, "mamba_d_state": 8,
               "mamba_d_conv": 4, "mamba_expand": 2}, 2 * 2 * 16 * 2 * 64 + 128 * 4 * 2 + 128 * 8 * 4),
    # Falcon-H1: one hybrid layer, K/V and Mamba2 conv (128 + 2 x 2 x 16) x 4, state 8 x 16 x 16 fp32.
    "falcon_h1": ({"num_hidden_layers": 2, "mamba_d_ssm": 128, "mamba_n_heads": 8, "mamba_d_head": 16,
                   "mamba_n_groups": 2, "mamba_d_state": 16, "mamba_d_conv": 4},
                  2 * 2 * 16 * 2 * 64 + 192 * 4 * 2 + 8 * 16 * 16 * 4),
}


@pytest.mark.parametrize("model_type", HF_CONFIGS)
def test_cli_measures_each_recurrent_family(cli, tmp_path, model_type):
    """kvcalc measure on a family's config.json: every kind of layer built, the bytes as the formula's."""
    fields, expected = HF_CONFIGS[model_type]
    path = tmp_path / f"{model_type}.json"
    path.write_text(json.dumps({"model_type": model_type, **HF_TINY, **fields}))
    status, out, err = cli("measure", str(path), "--seq", "64", "--decode-steps", "2", "--device", "cpu",
                           "-f", "json")
    assert status == 0, err
    [row] = json.loads(out)["rows"]
    assert row["match"] and row["measured_bytes"] == row["analytic_bytes"] == expected


def test_layers_are_built_with_the_spec_rope_and_family():
    """measure builds through from_config: DeepSeek-V3's YaRN (its frequencies and mscale²) and
    gpt-oss's sinks and biases, as the spec states them."""
    from kvcalc.measure import build_layer
    from kvcalc.spec import LayerKind

    yarn = {"rope_type": "yarn", "rope_theta": 10000, "factor": 40, "beta_fast": 32, "beta_slow": 1,
            "mscale": 1.0, "mscale_all_dim": 1.0, "original_max_position_embeddings": 4096}
    spec = load_bundled("deepseek-v3").replace(rope=yarn)
    layer = build_layer(spec, LayerKind.FULL, Layout.LATENT, torch.device("meta"), torch.bfloat16)
    assert layer.rotary.rope_type == "yarn"
    assert layer.scale == pytest.approx(192**-0.5 * (0.1 * math.log(40) + 1) ** 2)
    plain = build_layer(spec.replace(rope=None), LayerKind.FULL, Layout.LATENT, torch.device("meta"),
                        torch.bfloat16)
    assert plain.rotary.rope_type == "default" and plain.scale == 192**-0.5
    oss = load_bundled("gpt-oss-20b").replace(attention_bias=True)
    sliding = build_layer(oss, LayerKind.SLIDING, Layout.LATENT, torch.device("meta"), torch.bfloat16)
    assert sliding.sinks.shape == (64,) and sliding.q_proj.bias is not None and sliding.window == 128


def test_cli_says_how_the_layers_are_built(cli):
    status, out, _ = cli("measure", "gpt-oss-20b", "falcon-7b", "--seq", "32", "--decode-steps", "2",
                         "--device", "cpu", "-f", "json")
    assert status == 0
    notes = json.loads(out)["notes"]
    assert any(n.startswith("gpt-oss-20b: layers: attention as transformers' gpt_oss computes it") for n in notes)
    assert any(n.startswith("falcon-7b: layers: Llama's attention with the spec's shapes") for n in notes)


def test_decode_time_leaves_out_the_warm_up_step(monkeypatch):
    import kvcalc.measure as m

    times = iter([5.0, 100.0, 1.0, 2.0, 4.0])  # prefill, then four decode steps; the first warms up

    def fake_timed(work, device):
        work()
        return next(times)

    monkeypatch.setattr(m, "timed", fake_timed)
    row = measure(load_bundled("llama-3.1-8b"), MeasureOptions(16, decode_steps=4), CPU)
    assert (row.prefill_s, row.decode_s_per_token) == (5.0, 2.0)
    assert row.decode_bytes_per_s == row.measured_bytes / 2.0
