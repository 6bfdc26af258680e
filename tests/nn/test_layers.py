"""Layer numerics in fp32: cached decode equals one causal forward; absorbed MLA equals
decompressed; GQA equals MHA with repeated KV heads; an independent plain-tensor reference agrees."""

import math

import pytest

torch = pytest.importorskip("torch")

from kvcalc.nn.attention import Attention  # noqa: E402
from kvcalc.nn.mla import MLA  # noqa: E402
from kvcalc.nn.rope import apply_rope, rope_angles, softmax_scale, yarn_mscale  # noqa: E402

TOL = {"atol": 2e-5, "rtol": 1e-4}


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


def decode_all(layer, x, prefill: int):
    """Prefill ``prefill`` tokens, then decode the rest one at a time; outputs concatenated."""
    layer.allocate_cache(x.shape[0], x.shape[1], torch.float32)
    outs = [layer(x[:, :prefill], start_pos=0)]
    outs += [layer(x[:, t : t + 1], start_pos=t) for t in range(prefill, x.shape[1])]
    return torch.cat(outs, dim=1)


def mla(layout, q_lora_rank=24, **kw):
    return MLA(64, 4, q_lora_rank, 32, 16, 8, 12, layout=layout, **kw)


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
@pytest.mark.parametrize("span", [{}, {"window": 5}, {"chunk": 4}, {"chunk": 5}])
def test_attention_decode_equals_forward(kv_heads, span):
    layer = Attention(64, 4, kv_heads, 16, **span)
    x = torch.randn(2, 12, 64)
    full = layer(x)
    torch.testing.assert_close(decode_all(layer, x, prefill=7), full, **TOL)


@pytest.mark.parametrize("layout", ["latent", "decompressed"])
@pytest.mark.parametrize("q_lora_rank", [24, None])
def test_mla_decode_equals_forward(layout, q_lora_rank):
    layer = mla(layout, q_lora_rank)
    x = torch.randn(2, 10, 64)
    torch.testing.assert_close(decode_all(layer, x, prefill=6), layer(x), **TOL)


def test_absorbed_equals_decompressed():
    naive = mla("decompressed", yarn_factor=40.0)
    absorbed = mla("latent", yarn_factor=40.0)
    absorbed.load_state_dict(naive.state_dict(), strict=True)
    x = torch.randn(2, 9, 64)
    torch.testing.assert_close(decode_all(absorbed, x, 1), decode_all(naive, x, 1), **TOL)


def test_decoding_needs_a_cache():
    with pytest.raises(ValueError, match="start_pos 3: decoding needs allocate_cache"):
        mla("latent")(torch.randn(1, 1, 64), start_pos=3)


def test_gqa_equals_mha_with_repeated_kv_heads():
    gqa = Attention(64, 4, 2, 16)
    mha = Attention(64, 4, 4, 16)
    state = gqa.state_dict()
    for name in ("k_proj.weight", "v_proj.weight"):  # KV head j serves query heads 2j, 2j + 1
        state[name] = state[name].view(2, 16, 64).repeat_interleave(2, dim=0).reshape(64, 64)
    mha.load_state_dict(state, strict=True)
    x = torch.randn(1, 8, 64)
    torch.testing.assert_close(mha(x), gqa(x), **TOL)


def reference_attention(q, k, v, scale, window=None, chunk=None):
    """Plain tensors: q (S, H, D), k (T, H, D), v (T, H, Dv); query s at position s, key t at t."""
    s_len, heads = q.shape[:2]
    out = torch.zeros(s_len, heads, v.shape[-1])
    for h in range(heads):
        for s in range(s_len):
            keys = [t for t in range(k.shape[0]) if t <= s and (window is None or s - t < window)
                    and (chunk is None or t // chunk == s // chunk)]
            scores = torch.stack([(q[s, h] * k[t, h]).sum() * scale for t in keys])
            weights = torch.softmax(scores, dim=0)
            out[s, h] = sum(w * v[t, h] for w, t in zip(weights, keys, strict=True))
    return out


@pytest.mark.parametrize("span", [{"window": 3}, {"chunk": 4}])
def test_attention_matches_a_plain_reference(span):
    layer = Attention(32, 4, 2, 8, **span)
    x = torch.randn(1, 6, 32)
    pos = torch.arange(6)
    cos, sin = rope_angles(pos, 8, 10000.0)
    w = {n: p.detach() for n, p in layer.named_parameters()}
    q = apply_rope((x[0] @ w["q_proj.weight"].T).view(1, 6, 4, 8), cos, sin, interleaved=False)[0]
    k = apply_rope((x[0] @ w["k_proj.weight"].T).view(1, 6, 2, 8), cos, sin, interleaved=False)[0]
    v = (x[0] @ w["v_proj.weight"].T).view(6, 2, 8)
    k, v = k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1)
    expected = reference_attention(q, k, v, 8**-0.5, **span).reshape(6, 32) @ w["o_proj.weight"].T
    torch.testing.assert_close(layer(x)[0], expected, **TOL)
    torch.testing.assert_close(decode_all(layer, x, 2)[0], expected, **TOL)


def test_mla_matches_a_plain_reference():
    layer = mla("latent", q_lora_rank=None)
    x = torch.randn(1, 5, 64)
    w = {n: p.detach() for n, p in layer.named_parameters()}
    cos, sin = rope_angles(torch.arange(5), 8, 10000.0)
    q = (x[0] @ w["q_proj.weight"].T).view(1, 5, 4, 24)
    q = torch.cat([q[..., :16], apply_rope(q[..., 16:], cos, sin, interleaved=True)], -1)[0]
    kv_a = x[0] @ w["kv_a_proj_with_mqa.weight"].T
    c = kv_a[:, :32]
    c = c * torch.rsqrt(c.pow(2).mean(-1, keepdim=True) + 1e-6) * w["kv_a_layernorm.weight"]
    k_pe = apply_rope(kv_a[None, :, None, 32:], cos, sin, interleaved=True)[0, :, 0]
    kv = (c @ w["kv_b_proj.weight"].T).view(5, 4, 28)
    k = torch.cat([kv[..., :16], k_pe[:, None].expand(5, 4, 8)], -1)
    expected = reference_attention(q, k, kv[..., 16:], 24**-0.5).reshape(5, 48) @ w["o_proj.weight"].T
    torch.testing.assert_close(layer(x)[0], expected, **TOL)  # prefill: per-head form
    torch.testing.assert_close(decode_all(layer, x, 1)[0], expected, **TOL)  # decode: absorbed


def test_rope_conventions_are_a_permutation_of_each_other():
    x = torch.randn(1, 4, 2, 8)
    cos, sin = rope_angles(torch.arange(4), 8, 10000.0)
    perm = torch.tensor([0, 2, 4, 6, 1, 3, 5, 7])  # interleaved pairs (2i, 2i+1) -> halves (i, i+4)
    half = apply_rope(x[..., perm], cos, sin, interleaved=False)
    inter = apply_rope(x, cos, sin, interleaved=True)
    torch.testing.assert_close(half, inter[..., perm])
    torch.testing.assert_close(apply_rope(x, cos, sin, interleaved=True).norm(dim=-1), x.norm(dim=-1))


def test_yarn_softmax_scale_of_deepseek_v3():
    mscale = 0.1 * math.log(40) + 1
    assert yarn_mscale(40.0) == pytest.approx(mscale)
    assert softmax_scale(192, yarn_factor=40.0) == pytest.approx(192**-0.5 * mscale**2)
    assert softmax_scale(192) == pytest.approx(192**-0.5)


def test_mla_state_dict_has_transformers_names_and_shapes():
    # DeepseekV3Attention's parameters, for hidden 64, 4 heads, q_lora 24, kv_lora 32, 16/8/12
    expected = {
        "q_a_proj.weight": (24, 64), "q_a_layernorm.weight": (24,), "q_b_proj.weight": (4 * 24, 24),
        "kv_a_proj_with_mqa.weight": (32 + 8, 64), "kv_a_layernorm.weight": (32,),
        "kv_b_proj.weight": (4 * (16 + 12), 32), "o_proj.weight": (64, 4 * 12),
    }
    layer = mla("latent")
    layer.allocate_cache(1, 4, torch.float32)
    state = {k: tuple(v.shape) for k, v in layer.state_dict().items()}
    assert state == expected  # the cache buffers are not persistent
    layer.load_state_dict({k: torch.zeros(s) for k, s in expected.items()}, strict=True)
    assert set(mla("latent", q_lora_rank=None).state_dict()) - set(expected) == {"q_proj.weight"}


@pytest.mark.parametrize(
    ("layout", "nbytes"), [("latent", 2 * 10 * (32 + 8) * 2), ("decompressed", 2 * 10 * 4 * (24 + 12) * 2)]
)
def test_cache_bytes(layout, nbytes):
    cache = mla(layout).allocate_cache(2, 10, torch.bfloat16)
    assert cache.nbytes == nbytes


def test_sliding_cache_is_a_ring_of_the_window():
    layer = Attention(32, 2, 1, 16, window=4)
    cache = layer.allocate_cache(1, 100, torch.float16)
    assert cache.nbytes == 2 * 4 * 16 * 2
    layer(torch.randn(1, 7, 32))
    held, positions = cache.read(torch.float32)
    assert sorted(positions.tolist()) == [3, 4, 5, 6]


def test_fp8_cache_round_trips_within_fp8_precision():
    layer = Attention(32, 2, 2, 16)
    x = torch.randn(1, 6, 32)
    full = layer(x)
    layer.allocate_cache(1, 6, torch.float8_e4m3fn)
    outs = [layer(x[:, :3])] + [layer(x[:, t : t + 1], start_pos=t) for t in range(3, 6)]
    assert layer.cache.nbytes == 2 * 6 * 2 * 16
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=0.1, rtol=0.1)


def test_query_blocks_give_the_same_attention(monkeypatch):
    import kvcalc.nn.cache as cache

    layer = Attention(64, 4, 2, 16, window=5)  # a window: the masked, blocked path
    x = torch.randn(2, 9, 64)
    whole = layer(x)
    monkeypatch.setattr(cache, "SCORE_BUDGET", 2 * 4 * 9)  # one query row at a time
    torch.testing.assert_close(layer(x), whole, **TOL)


def test_chunked_cache_is_a_ring_of_the_chunk():
    """Llama-4's local layers: the keys of a query's chunk all lie in the last ``chunk`` tokens."""
    layer = Attention(32, 2, 1, 16, chunk=4)
    cache = layer.allocate_cache(1, 100, torch.float16)
    assert cache.nbytes == 2 * 4 * 16 * 2
    with pytest.raises(ValueError, match="slides .* or attends in chunks"):
        Attention(32, 2, 1, 16, window=4, chunk=4)


def dsa(layout, topk):
    return mla(layout, index_n_heads=2, index_head_dim=16, index_topk=topk)


@pytest.mark.parametrize("layout", ["latent", "decompressed"])
def test_dsa_decode_equals_forward(layout):
    """The indexer keeps 4 of up to 10 tokens per query: a sparse attention, the same whether the
    keys come from the tokens at hand or from the fp8 cache."""
    layer = dsa(layout, topk=4)
    x = torch.randn(2, 10, 64)
    torch.testing.assert_close(decode_all(layer, x, prefill=6), layer(x), **TOL)


def test_dsa_attends_to_the_chosen_tokens_only():
    sparse, dense = dsa("latent", topk=3), mla("latent")
    dense.load_state_dict({k: v for k, v in sparse.state_dict().items() if not k.startswith("indexer.")})
    x = torch.randn(1, 8, 64)
    first = slice(0, 3)  # the first 3 queries see at most 3 tokens: everything, as dense attention
    torch.testing.assert_close(sparse(x)[:, first], dense(x)[:, first], **TOL)
    assert not torch.allclose(sparse(x)[:, 3:], dense(x)[:, 3:], **TOL)
    assert dsa("latent", topk=8)(x).shape == x.shape


def test_dsa_cache_holds_the_fp8_indexer_key_and_its_scale():
    """DeepSeek's format: 16 fp8 values + one fp32 scale = 20 B per token beside the latent."""
    cache = dsa("latent", topk=4).allocate_cache(2, 10, torch.bfloat16)
    assert cache.nbytes == 2 * 10 * ((32 + 8) * 2 + 16 + 4)
    assert (cache.index_k.dtype, cache.index_scale.dtype) == (torch.float8_e4m3fn, torch.float32)


def test_indexer_state_dict_has_transformers_names_and_shapes():
    """DeepseekV32Indexer's parameters for q_lora 24, 2 heads of 16."""
    state = {k: tuple(v.shape) for k, v in dsa("latent", 4).state_dict().items() if k.startswith("indexer.")}
    assert state == {"indexer.wq_b.weight": (32, 24), "indexer.wk.weight": (16, 64),
                     "indexer.k_norm.weight": (16,), "indexer.k_norm.bias": (16,),
                     "indexer.weights_proj.weight": (2, 64)}
