"""Recurrent mixers in fp32: a cached decode equals one forward; the recurrence equals a plain
step-by-step reference written from the papers' equations; the state kept is what kvcalc counts."""

import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402

from kvcalc.nn.recurrent import GatedDeltaNet, Mamba2  # noqa: E402
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


@pytest.mark.parametrize("make", [gdn, mamba2])
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


def test_decoding_needs_a_cache():
    with pytest.raises(ValueError, match="start_pos 3: decoding needs allocate_cache"):
        gdn()(torch.randn(1, 1, 32), start_pos=3)
