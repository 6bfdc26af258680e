"""Recurrent mixers in fp32: a cached decode equals one forward; the recurrence equals a plain
step-by-step reference written from the papers' equations; the state kept is what kvcalc counts
(the analytic figure, as transformers 5.23 holds it)."""

import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402

from kvcalc.analytic import Options, footprint  # noqa: E402
from kvcalc.nn.attention import Attention  # noqa: E402
from kvcalc.nn.recurrent import (  # noqa: E402
    GatedDeltaNet,
    Hybrid,
    KimiDeltaAttention,
    LightningAttention,
    Mamba,
    Mamba2,
)
from kvcalc.spec import ModelSpec  # noqa: E402
from tests.nn.test_layers import decode_all  # noqa: E402

TOL = {"atol": 2e-5, "rtol": 1e-4}


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


def randomised(layer):
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn_like(p) * (p.shape[-1] ** -0.5 if p.dim() > 1 else 0.5))
    return layer.eval()


def gdn():
    return randomised(GatedDeltaNet(32, num_k_heads=2, num_v_heads=4, head_k_dim=8, head_v_dim=6, conv_kernel=4))


def mamba2():
    return randomised(Mamba2(32, num_heads=4, head_dim=6, d_state=5, n_groups=2, conv_kernel=3))


def kda():
    return randomised(KimiDeltaAttention(32, num_heads=3, head_dim=6, conv_kernel=4))


def lightning():
    return randomised(LightningAttention(32, num_heads=4, head_dim=6, layer_idx=1, num_layers=4))


def mamba():
    return randomised(Mamba(32, intermediate_size=12, d_state=4, conv_kernel=3, dt_rank=2))


def hybrid():
    """Falcon-H1's layer: GQA attention beside a Mamba2 mixer."""
    return Hybrid(randomised(Attention(32, 4, 2, 8)), mamba2())


def rms(x, weight, eps=1e-6):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


@pytest.mark.parametrize("make", [gdn, mamba2, kda, lightning, mamba, hybrid])
@pytest.mark.parametrize("prefill", [1, 2, 7])
def test_decode_equals_forward(make, prefill):
    layer = make()
    x = torch.randn(2, 11, 32)
    torch.testing.assert_close(decode_all(layer, x, prefill), layer(x), **TOL)


def conv_reference(layer, inputs):
    """out_t[c] = silu(sum_j w[c, j] * in_{t - K + 1 + j}[c]), zeros before the first input."""
    batch, seq, channels = inputs.shape
    k = layer.kernel
    out = torch.zeros_like(inputs)
    for t in range(seq):
        for j in range(k):
            s = t - k + 1 + j
            if s >= 0:
                out[:, t] += layer.conv_weight[:, j] * inputs[:, s]
    if layer.conv_bias is not None:
        out = out + layer.conv_bias
    return F.silu(out)


def test_gated_deltanet_against_the_delta_rule_step_by_step():
    """S_t = a_t S_{t-1} + beta_t k_t (v_t - a_t S_{t-1}^T k_t)^T, o_t = S_t^T q_t / sqrt(d_k), head by head."""
    layer = gdn()
    x = torch.randn(1, 6, 32)
    key, value, hv = 16, 24, 4
    qkv, z, b, a = layer.in_proj(x).split([2 * key + value, value, hv, hv], dim=-1)
    q, k, v = conv_reference(layer, qkv).split([key, key, value], dim=-1)
    outs = []
    states = [torch.zeros(8, 6) for _ in range(hv)]
    for t in range(6):
        heads = []
        for h in range(hv):
            g = h // 2  # two value heads per key head
            qh = F.normalize(q[0, t, g * 8 : (g + 1) * 8], dim=0)
            kh = F.normalize(k[0, t, g * 8 : (g + 1) * 8], dim=0)
            vh = v[0, t, h * 6 : (h + 1) * 6]
            decay = torch.exp(-torch.exp(layer.a_log[h]) * F.softplus(a[0, t, h]))
            beta = torch.sigmoid(b[0, t, h])
            s = decay * states[h]
            s = s + beta * torch.outer(kh, vh - s.T @ kh)
            states[h] = s
            o = s.T @ qh / 8**0.5
            heads.append(o * torch.rsqrt(o.pow(2).mean() + 1e-6) * layer.norm)
        outs.append(torch.cat(heads) * F.silu(z[0, t]))
    expected = layer.out_proj(torch.stack(outs)[None])
    torch.testing.assert_close(layer(x), expected, **TOL)


def test_mamba2_against_the_ssm_step_by_step():
    """h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T, y_t = h_t C_t + D x_t, head by head, B and C per group."""
    layer = mamba2()
    x = torch.randn(1, 5, 32)
    inner, groups, n = 24, 2, 5
    z, xbc, dt = layer.in_proj(x).split([inner, inner + 2 * groups * n, 4], dim=-1)
    xs, bs, cs = conv_reference(layer, xbc).split([inner, groups * n, groups * n], dim=-1)
    states = [torch.zeros(6, n) for _ in range(4)]
    outs = []
    for t in range(5):
        ys = []
        for h in range(4):
            g = h // 2
            step = F.softplus(dt[0, t, h])
            xh, bh, ch = xs[0, t, h * 6 : (h + 1) * 6], bs[0, t, g * n : (g + 1) * n], cs[0, t, g * n : (g + 1) * n]
            states[h] = torch.exp(-torch.exp(layer.a_log[h]) * step) * states[h] + step * torch.outer(xh, bh)
            ys.append(states[h] @ ch + layer.d[h] * xh)
        y = torch.cat(ys) * F.silu(z[0, t])
        outs.append(y * torch.rsqrt(y.pow(2).mean() + 1e-6) * layer.norm)
    torch.testing.assert_close(layer(x), layer.out_proj(torch.stack(outs)[None]), **TOL)


@pytest.mark.parametrize(("make", "state"), [(gdn, 4 * 8 * 6), (mamba2, 4 * 6 * 5)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_state_is_fixed_and_counted(make, state, dtype):
    """Conv inputs (channels x kernel) in the cache dtype, the state in fp32, whatever the length."""
    layer = make()
    cache = layer.allocate_cache(3, 100, dtype)
    before = cache.nbytes
    layer(torch.randn(3, 9, 32), start_pos=0)
    layer(torch.randn(3, 1, 32), start_pos=9)
    assert cache.nbytes == before == 3 * (layer.channels * layer.kernel * dtype.itemsize + state * 4)


def test_kda_against_the_delta_rule_step_by_step():
    """KDA: the decay a_t is per key channel, a_t = exp(-exp(A_log) softplus(f_b f_a x_t + dt_bias));
    S_t = diag(a_t) S_{t-1} + beta_t k_t (v_t - (diag(a_t) S_{t-1})^T k_t)^T, o_t = S_t^T q_t / sqrt(d),
    head by head; each head's output RMS-normalised (eps 1e-5, Kimi-Linear's) and gated by
    sigmoid(g_b g_a x_t)."""
    layer = kda()
    x = torch.randn(1, 6, 32)
    heads, d = 3, 6
    q, k, v = conv_reference(layer, layer.qkv_proj(x)).split([heads * d] * 3, dim=-1)
    forget = layer.f_b_proj(layer.f_a_proj(x)) + layer.dt_bias
    gate, b = layer.g_b_proj(layer.g_a_proj(x)), layer.b_proj(x)
    states = [torch.zeros(d, d) for _ in range(heads)]
    outs = []
    for t in range(6):
        ys = []
        for h in range(heads):
            c = slice(h * d, (h + 1) * d)
            qh, kh, vh = F.normalize(q[0, t, c], dim=0), F.normalize(k[0, t, c], dim=0), v[0, t, c]
            a = torch.exp(-torch.exp(layer.a_log[h]) * F.softplus(forget[0, t, c]))  # (d,): one per key channel
            s = a[:, None] * states[h]
            s = s + torch.sigmoid(b[0, t, h]) * torch.outer(kh, vh - s.T @ kh)
            states[h] = s
            ys.append(rms(s.T @ qh / d**0.5, layer.norm, eps=1e-5) * torch.sigmoid(gate[0, t, c]))
        outs.append(torch.cat(ys))
    torch.testing.assert_close(layer(x), layer.out_proj(torch.stack(outs)[None]), **TOL)


def test_lightning_against_decayed_linear_attention():
    """Lightning attention unrolled: o_t = sum_{s <= t} lambda_h^(t - s) (q_t . k_s) v_s, lambda_h =
    exp(-slope_h), slope_h = 2^(-8 (h + 1) / H) (1 - l / (L - 1 + 1e-5) + 1e-5) for layer l of L
    (MiniMax-Text-01); q | k | v = SiLU(qkv_proj x) per head; the heads' outputs RMS-normalised
    together and gated by sigmoid(output_gate x)."""
    layer = lightning()  # layer 1 of 4
    x = torch.randn(1, 7, 32)
    heads, d = 4, 6
    qkv = F.silu(layer.qkv_proj(x))[0].view(7, heads, 3 * d)
    outs = torch.zeros(7, heads, d)
    for h in range(heads):
        slope = 2 ** (-8 * (h + 1) / heads) * (1 - 1 / (3 + 1e-5) + 1e-5)
        q, k, v = qkv[:, h, :d], qkv[:, h, d : 2 * d], qkv[:, h, 2 * d :]
        for t in range(7):
            outs[t, h] = sum(torch.exp(torch.tensor(-slope * (t - s))) * (q[t] @ k[s]) * v[s] for s in range(t + 1))
    y = rms(outs.reshape(7, heads * d), layer.norm) * torch.sigmoid(layer.output_gate(x[0]))
    torch.testing.assert_close(layer(x), layer.out_proj(y)[None], **TOL)


def test_mamba_against_the_selective_scan_step_by_step():
    """Mamba (Jamba): h_t[i] = exp(dt_t[i] A[i]) h_{t-1}[i] + dt_t[i] x_t[i] B_t, y_t[i] = h_t[i] . C_t +
    D[i] x_t[i], channel by channel, A = -exp(A_log); dt, B and C from x_proj of the convolved x, each
    RMS-normalised, dt = softplus(dt_proj dt); y gated by SiLU(z)."""
    layer = mamba()
    x = torch.randn(1, 5, 32)
    inner, n, rank = 12, 4, 2
    xs, z = layer.in_proj(x).split([inner, inner], dim=-1)
    xs = conv_reference(layer, xs)
    dt, bs, cs = layer.x_proj(xs).split([rank, n, n], dim=-1)
    dt = F.softplus(layer.dt_proj(rms(dt, layer.dt_norm)))
    bs, cs = rms(bs, layer.b_norm), rms(cs, layer.c_norm)
    states = [torch.zeros(n) for _ in range(inner)]
    outs = []
    for t in range(5):
        ys = []
        for i in range(inner):
            step, xi = dt[0, t, i], xs[0, t, i]
            states[i] = torch.exp(-step * torch.exp(layer.a_log[i])) * states[i] + step * xi * bs[0, t]
            ys.append(states[i] @ cs[0, t] + layer.d[i] * xi)
        outs.append(torch.stack(ys) * F.silu(z[0, t]))
    torch.testing.assert_close(layer(x), layer.out_proj(torch.stack(outs)[None]), **TOL)


TINY = {"name": "tiny", "display_name": "Tiny", "num_layers": 2, "hidden_size": 32,
        "attention": {"kind": "standard", "num_heads": 4, "num_kv_heads": 2, "head_dim": 8}}
MIXERS = [
    (gdn, {"kind": "gated_deltanet", "num_k_heads": 2, "num_v_heads": 4, "head_k_dim": 8, "head_v_dim": 6,
           "conv_kernel": 4}),
    (kda, {"kind": "kda", "num_heads": 3, "head_dim": 6, "conv_kernel": 4}),
    (lightning, {"kind": "lightning", "num_heads": 4, "head_dim": 6}),
    (mamba2, {"kind": "mamba2", "num_heads": 4, "head_dim": 6, "d_state": 5, "n_groups": 2, "conv_kernel": 3}),
    (mamba, {"kind": "mamba", "intermediate_size": 12, "d_state": 4, "conv_kernel": 3}),
]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@pytest.mark.parametrize(("make", "mixer"), MIXERS, ids=[m["kind"] for _, m in MIXERS])
@pytest.mark.parametrize("dtype", DTYPES)
def test_the_state_kept_is_the_analytic_figure(make, mixer, dtype):
    """Each mixer holds, per sequence and whatever the length, what kvcalc's formula gives for one
    recurrent layer as transformers holds it: conv inputs in the cache dtype, the state in fp32 (in
    the cache dtype for lightning)."""
    spec = ModelSpec.from_dict({**TINY, "layer_pattern": ["recurrent", "full"], "recurrent": mixer})
    per_sequence = footprint(spec, Options(1, kv_dtype=dtype, engine="transformers")).state_bytes_per_sequence
    layer = make()
    cache = layer.allocate_cache(3, 100, DTYPES[dtype])
    layer(torch.randn(3, 9, 32), start_pos=0)
    layer(torch.randn(3, 1, 32), start_pos=9)
    assert cache.nbytes == 3 * per_sequence > 0
    assert cache.state.dtype == (DTYPES[dtype] if mixer["kind"] == "lightning" else torch.float32)


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_hybrid_layer_holds_both_caches(dtype):
    """Falcon-H1: every layer K/V per token and the Mamba2 state per sequence, as the formula gives."""
    spec = ModelSpec.from_dict({**TINY, "num_layers": 1, "layer_pattern": ["hybrid"], "recurrent": MIXERS[3][1]})
    layer = hybrid()
    cache = layer.allocate_cache(2, 12, DTYPES[dtype])
    layer(torch.randn(2, 9, 32), start_pos=0)
    for pos in range(9, 12):
        layer(torch.randn(2, 1, 32), start_pos=pos)
    kv = 2 * 2 * 8 * 12 * 2 * DTYPES[dtype].itemsize  # K and V, 2 KV heads x 8, 12 tokens, batch 2
    assert cache.nbytes == footprint(spec, Options(12, batch=2, kv_dtype=dtype, engine="transformers")).total_bytes
    assert cache.nbytes == kv + cache.mixer.nbytes


@pytest.mark.parametrize("make", [gdn, lightning])
def test_decoding_needs_a_cache(make):
    with pytest.raises(ValueError, match="start_pos 3: decoding needs allocate_cache"):
        make()(torch.randn(1, 1, 32), start_pos=3)
