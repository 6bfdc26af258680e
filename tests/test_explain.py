from kvcalc.analytic import Layout, Options, footprint, mha_equivalent
from kvcalc.catalog import load_bundled
from kvcalc.explain import explain


def lines_for(name: str, options: Options, with_totals: bool = False) -> list[str]:
    spec = load_bundled(name)
    return explain(spec, footprint(spec, options), mha_equivalent(spec, options), with_totals=with_totals)


def test_deepseek_v3_formula_uses_its_own_numbers():
    lines = lines_for("deepseek-v3", Options(1))
    assert "  (512 + 64) × 2 B × 61 layers = 70,272 B/token" in lines
    assert "  latent = 512 (kv_lora_rank) = 512 values" in lines
    assert lines[-1] == (
        "MHA equivalent (decompressed layout, bf16): 4,997,120 B/token (this cache: 71.1× less)"
    )


def test_gqa_formula():
    assert "  2 × 8 × 128 × 2 B × 32 layers = 131,072 B/token" in lines_for("llama-3.1-8b", Options(1))


def test_decompressed_formula_has_distinct_k_and_v_widths():
    lines = lines_for("deepseek-v3", Options(1, layout=Layout.DECOMPRESSED))
    assert "  (128 × 192 + 128 × 128) × 2 B × 61 layers = 4,997,120 B/token" in lines


def test_blocked_format_rounds_each_row():
    lines = lines_for("deepseek-v3", Options(1, kv_dtype="q8_0"))
    assert "  latent: 512 values = 16 q8_0 blocks × 34 B = 544 B" in lines
    assert "  (544 + 68) B × 61 layers = 37,332 B/token" in lines


def test_mtp_and_totals():
    lines = lines_for("deepseek-v3", Options(131072, mtp=True), with_totals=True)
    assert "  (512 + 64) × 2 B × 62 layers (61 + 1 MTP) = 71,424 B/token" in lines
    assert "  total: 9,361,686,528 B (8.72 GiB)" in lines


def test_sliding_layers_show_their_window():
    lines = lines_for("gemma-3-27b", Options(32768), with_totals=True)
    assert "  sliding layers (window 1,024): 2 × 16 × 128 × 2 B × 52 layers = 425,984 B/token" in lines
    assert "  sliding layers: 425,984 B/token × min(32,768, 1,024) = 1,024 tokens = 436,207,616 B" in lines
