"""kvcalc's DeepSeek-V4 layer (``nn/compressed.py``) in fp32: a cached decode equals one forward
over every token (the compressors' open and last windows carried between calls), and the buffers
hold exactly what the ideal engine counts."""

import pytest

torch = pytest.importorskip("torch")

from kvcalc.analytic import Options, footprint  # noqa: E402
from kvcalc.measure import MeasureOptions, measure  # noqa: E402
from kvcalc.nn.compressed import CompressedAttentionLayer  # noqa: E402
from kvcalc.spec import CompressedAttention, ModelSpec  # noqa: E402

TOL = {"atol": 2e-5, "rtol": 1e-4}


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


def layer(rate=None, csa=False, window=5, topk=3):
    made = CompressedAttentionLayer(64, 4, 16, 4, 24, window, rate, index_n_heads=2 if csa else None,
                                    index_head_dim=8, index_topk=topk)
    with torch.no_grad():
        for p in made.parameters():
            if p.dim() > 1:
                p.uniform_(-0.3, 0.3)
    return made.eval()


def decode_all(layer, x, prefill: int):
    layer.allocate_cache(x.shape[0], x.shape[1], torch.float32)
    outs = [layer(x[:, :prefill], start_pos=0)]
    outs += [layer(x[:, t : t + 1], start_pos=t) for t in range(prefill, x.shape[1])]
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize(("rate", "csa", "topk"), [(None, False, 3), (4, False, 3), (4, True, 2), (3, True, 8)])
@pytest.mark.parametrize("prefill", [1, 2, 6, 13])
def test_decode_equals_forward(rate, csa, prefill, topk):
    """Windows close during the prefill, between decode steps and not at all (prefill 1, 2). With
    rate 4 the CSA indexer picks 2 of up to 4 entries: sparse, so the choice must be the same both
    ways. (Entries whose scores are all ReLU'd to 0 tie; ``indexer.choose`` gives a tie at the cut to
    the earliest entry, in prefill and decode alike. With rate 3 it keeps every entry.)"""
    lay = layer(rate, csa, topk=topk)
    x = torch.randn(2, 16, 64)
    with torch.no_grad():
        full = lay(x)
        torch.testing.assert_close(decode_all(lay, x, prefill), full, **TOL)


def test_entries_change_the_output_only_once_a_window_closes():
    """An HCA entry of 4 tokens is seen from its 4th token: before that, the layer is its window."""
    hca, sliding = layer(4), layer(None)
    sliding.load_state_dict({k: v for k, v in hca.state_dict().items() if not k.startswith("compressor")})
    x = torch.randn(1, 9, 64)
    with torch.no_grad():
        same = (hca(x) - sliding(x)).abs().amax(dim=-1)[0]
    assert (same[:3] == 0).all() and (same[3:] > 0).all()


def tiny(kinds, csa=3, hca=5, window=4):
    attn = CompressedAttention(num_heads=4, head_dim=16, qk_rope_head_dim=4, q_lora_rank=24, index_n_heads=2,
                               index_head_dim=8, csa_rate=csa, hca_rate=hca)
    return ModelSpec(name="t", display_name="t", num_layers=len(kinds), hidden_size=64, attention=attn,
                     sliding_window=window, layer_types=tuple(kinds))


@pytest.mark.parametrize("seq", [1, 2, 3, 4, 5, 6, 11, 30])
@pytest.mark.parametrize("kv_dtype", ["fp32", "bf16", "fp8"])
def test_measured_bytes_equal_the_ideal(seq, kv_dtype):
    spec = tiny(["sliding", "compressed_sparse", "heavily_compressed"])
    row = measure(spec, MeasureOptions(seq_len=seq, batch=2, kv_dtype=kv_dtype, decode_steps=2), torch.device("cpu"))
    assert row.error is None and row.measured_bytes == row.analytic_bytes
    assert row.analytic_bytes == footprint(spec, Options(seq, 2, kv_dtype)).total_bytes  # one layer of each kind


def test_query_blocks_give_the_same_attention(monkeypatch):
    """A long prefill reads, per block of queries, only the window keys within reach."""
    import kvcalc.nn.compressed as compressed

    lay = layer(4, True, window=6, topk=8)
    x = torch.randn(1, 40, 64)
    with torch.no_grad():
        whole = lay(x)
        monkeypatch.setattr(compressed, "QUERY_BLOCK", 7)
        torch.testing.assert_close(lay(x), whole, **TOL)
