"""RoPE against transformers' own maths: each rope_type's inverse frequencies and attention factor
(``ROPE_INIT_FUNCTIONS``, v5) to 1e-6, both layouts against transformers' rotation functions, and
the config readers."""

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from transformers import LlamaConfig  # noqa: E402
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS  # noqa: E402
from transformers.models.deepseek_v3 import modeling_deepseek_v3 as ds  # noqa: E402
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding  # noqa: E402

from kvcalc.nn.rope import Rope, apply_rope  # noqa: E402
from kvcalc.rotary import rope_parameters  # noqa: E402

DEEPSEEK_YARN = {"rope_type": "yarn", "factor": 40.0, "beta_fast": 32, "beta_slow": 1, "mscale": 1.0,
                 "mscale_all_dim": 1.0, "original_max_position_embeddings": 4096}
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 8192}
VARIANTS = {
    "default": ({"rope_type": "default"}, 4096),
    "linear": ({"rope_type": "linear", "factor": 4.0}, 4096),
    "linear-partial": ({"rope_type": "linear", "factor": 4.0, "partial_rotary_factor": 0.5}, 4096),
    "dynamic": ({"rope_type": "dynamic", "factor": 2.0}, 2048),
    "yarn-deepseek": (DEEPSEEK_YARN, 163840),
    "yarn-qwen": ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}, 131072),
    "yarn-untruncated": ({**DEEPSEEK_YARN, "truncate": False, "mscale": 0.707, "beta_fast": 16}, 163840),
    "yarn-attention-factor": ({**DEEPSEEK_YARN, "attention_factor": 0.8}, 163840),
    "llama3": (LLAMA3, 131072),
}


def reference(params: dict, max_positions: int, seq_len: int | None = None):
    config = LlamaConfig(hidden_size=256, num_attention_heads=2, head_dim=128, max_position_embeddings=max_positions,
                         rope_parameters={"rope_theta": 50000.0, **params})
    if params["rope_type"] == "default":
        return LlamaRotaryEmbedding.compute_default_rope_parameters(config)
    return ROPE_INIT_FUNCTIONS[params["rope_type"]](config, None, seq_len=seq_len)


@pytest.mark.parametrize("name", VARIANTS)
def test_inv_freq_and_attention_factor_match_transformers(name):
    params, max_positions = VARIANTS[name]
    rope = Rope.from_parameters(rope_parameters({"rope_theta": 50000.0, "rope_parameters": params}), 128,
                                max_position_embeddings=max_positions)
    inv_freq, factor = reference(params, max_positions)
    torch.testing.assert_close(rope.inv_freq(), inv_freq, rtol=1e-6, atol=0)
    assert rope.attention_factor == pytest.approx(factor, rel=1e-6)


def test_dynamic_grows_past_the_trained_length():
    params, max_positions = VARIANTS["dynamic"]
    rope = Rope.from_parameters({"rope_theta": 50000.0, **params}, 128, max_position_embeddings=max_positions)
    inv_freq, _ = reference(params, max_positions, seq_len=5000)
    torch.testing.assert_close(rope.inv_freq(5000), inv_freq, rtol=1e-6, atol=0)
    assert not torch.allclose(rope.inv_freq(5000), rope.inv_freq(100))


@pytest.mark.parametrize("interleaved", [False, True])
def test_layouts_match_transformers(interleaved):
    q, k = torch.randn(2, 3, 5, 16), torch.randn(2, 1, 5, 16)  # (B, H, S, D), transformers' order
    rope = Rope(16, 10000.0, interleaved)
    cos, sin = rope.angles(torch.arange(5))
    emb_cos, emb_sin = torch.cat([cos, cos], -1)[None], torch.cat([sin, sin], -1)[None]  # (1, S, D)
    rotate = ds.apply_rotary_pos_emb_interleave if interleaved else ds.apply_rotary_pos_emb
    q_ref, k_ref = rotate(q, k, emb_cos, emb_sin)
    q_out, k_out = (rope.rotate(t.transpose(1, 2), cos, sin).transpose(1, 2) for t in (q, k))
    if interleaved:  # transformers returns the rotated pairs de-interleaved: evens, then odds
        q_out, k_out = (torch.cat([t[..., 0::2], t[..., 1::2]], -1) for t in (q_out, k_out))
    torch.testing.assert_close(q_out, q_ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(k_out, k_ref, rtol=1e-6, atol=1e-6)


def test_partial_rotary_passes_the_rest_through():
    rope = Rope.from_parameters({"rope_theta": 10000.0, "partial_rotary_factor": 0.25}, 32)
    x = torch.randn(1, 4, 2, 32)
    cos, sin = rope.angles(torch.arange(4))
    out = rope.rotate(x, cos, sin)
    assert rope.dim == 8
    torch.testing.assert_close(out[..., 8:], x[..., 8:])
    torch.testing.assert_close(out[..., :8], apply_rope(x[..., :8], cos, sin, interleaved=False))


def test_rope_parameters_reads_old_and_new_configs():
    old = {"rope_theta": 500000.0, "rope_scaling": {"type": "linear", "factor": 2.0}}
    assert rope_parameters(old) == {"rope_type": "linear", "rope_theta": 500000.0, "factor": 2.0}
    new = {"rope_parameters": {"rope_type": "default", "rope_theta": 1e6}}
    assert rope_parameters(new) == {"rope_type": "default", "rope_theta": 1e6}
    assert rope_parameters({}) == {"rope_type": "default", "rope_theta": 10000.0}


def test_rope_parameters_refuses_what_it_does_not_compute():
    with pytest.raises(ValueError, match="rope_type 'longrope'"):
        rope_parameters({"rope_parameters": {"rope_type": "longrope"}})
    with pytest.raises(ValueError, match="one rope per layer type"):
        rope_parameters({"rope_parameters": {"full_attention": {"rope_type": "default"}}})


def test_a_missing_field_is_named():
    with pytest.raises(ValueError, match="rope_parameters.factor"):
        Rope(8, scaling={"rope_type": "linear"}).inv_freq()
