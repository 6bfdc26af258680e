"""kvcalc's layers against transformers' own modules, in fp32: the layer built by ``from_config``
loads the reference's weights strictly and, on the same inputs, prefill then cached decode, gives
the same outputs to max|error| / max|reference| <= 1e-5 -- DeepseekV3Attention (plain and
DeepSeek-V3's YaRN, with and without q_lora, both cache layouts) and LlamaAttention (llama3
scaling, GQA)."""

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from transformers import DeepseekV3Config, DynamicCache, LlamaConfig  # noqa: E402
from transformers.models.deepseek_v3.modeling_deepseek_v3 import (  # noqa: E402
    DeepseekV3Attention,
    DeepseekV3RotaryEmbedding,
)
from transformers.models.llama.modeling_llama import LlamaAttention, LlamaRotaryEmbedding  # noqa: E402

from kvcalc.nn.attention import Attention  # noqa: E402
from kvcalc.nn.mla import MLA  # noqa: E402

BATCH, TOKENS, PREFILL = 2, 12, 7
DEEPSEEK_YARN = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 40.0, "beta_fast": 32, "beta_slow": 1,
                 "mscale": 1.0, "mscale_all_dim": 1.0, "original_max_position_embeddings": 4096}
LLAMA3 = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


def deepseek_config(q_lora_rank, rope):
    config = DeepseekV3Config(hidden_size=64, num_attention_heads=4, num_key_value_heads=4, q_lora_rank=q_lora_rank,
                              kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=12,
                              max_position_embeddings=163840, rope_parameters=rope)
    config._attn_implementation = "eager"
    return config


def reference_steps(module, rotary, x):
    """transformers' module run as kvcalc's layer is: prefill PREFILL tokens (causal mask), then
    decode one token at a time through a DynamicCache."""
    cache, outs = DynamicCache(), []
    for start, end in [(0, PREFILL)] + [(t, t + 1) for t in range(PREFILL, TOKENS)]:
        positions = torch.arange(start, end)[None]
        mask = None
        if end - start > 1:
            mask = torch.full((end - start, end), float("-inf")).triu(1)[None, None]  # (1, 1, S, T)
        out, _ = module(x[:, start:end], rotary(x, positions), mask, past_key_values=cache)
        outs.append(out)
    return torch.cat(outs, dim=1)


def kvcalc_steps(layer, x):
    layer.allocate_cache(BATCH, TOKENS, torch.float32)
    outs = [layer(x[:, :PREFILL], start_pos=0)]
    outs += [layer(x[:, t : t + 1], start_pos=t) for t in range(PREFILL, TOKENS)]
    return torch.cat(outs, dim=1)


def relative_error(ours, reference) -> float:
    return ((ours - reference).abs().max() / reference.abs().max()).item()


def randomise(module):
    """Weights far from init (norm scales included), so every parameter's name and role matter."""
    with torch.no_grad():
        for param in module.parameters():
            param.normal_(0, 0.3)


@pytest.mark.parametrize("layout", ["latent", "decompressed"])
@pytest.mark.parametrize("q_lora_rank", [24, None])
@pytest.mark.parametrize("rope", [{"rope_type": "default", "rope_theta": 10000.0}, DEEPSEEK_YARN],
                         ids=["plain", "yarn"])
def test_mla_matches_deepseek_v3_attention(layout, q_lora_rank, rope):
    config = deepseek_config(q_lora_rank, rope)
    reference = DeepseekV3Attention(config, layer_idx=0).eval()
    randomise(reference)
    layer = MLA.from_config(config.to_dict(), layout=layout).load_reference(reference).eval()
    x = torch.randn(BATCH, TOKENS, 64)
    with torch.no_grad():
        expected = reference_steps(reference, DeepseekV3RotaryEmbedding(config), x)
        assert relative_error(kvcalc_steps(layer, x), expected) <= 1e-5


def test_mla_from_a_pretrained_config_equals_from_its_dict():
    config = deepseek_config(24, DEEPSEEK_YARN)
    a, b = MLA.from_config(config), MLA.from_config(config.to_dict())
    assert (a.scale, a.rotary) == (b.scale, b.rotary)
    assert a.rotary.rope_type == "yarn" and a.rotary.interleaved


def test_mla_refuses_biased_projections():
    config = deepseek_config(24, DEEPSEEK_YARN).to_dict() | {"attention_bias": True}
    with pytest.raises(ValueError, match="attention_bias True"):
        MLA.from_config(config)


def test_attention_matches_llama_attention_llama3_gqa():
    config = LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                         max_position_embeddings=131072, rope_parameters=LLAMA3)
    config._attn_implementation = "eager"
    reference = LlamaAttention(config, layer_idx=0).eval()
    randomise(reference)
    layer = Attention.from_config(config).load_reference(reference).eval()
    assert (layer.num_heads, layer.num_kv_heads, layer.rotary.rope_type) == (4, 2, "llama3")
    x = torch.randn(BATCH, TOKENS, 64)
    with torch.no_grad():
        expected = reference_steps(reference, LlamaRotaryEmbedding(config), x)
        assert relative_error(kvcalc_steps(layer, x), expected) <= 1e-5


def test_attention_refuses_what_from_config_does_not_build():
    base = {"hidden_size": 64, "num_attention_heads": 4}
    with pytest.raises(ValueError, match="sliding_window"):
        Attention.from_config(base | {"sliding_window": 4096})
    with pytest.raises(ValueError, match="attention_bias True"):
        Attention.from_config(base | {"attention_bias": True})
    with pytest.raises(ValueError, match="sliding_attention"):
        Attention.from_config(base | {"layer_types": ["full_attention", "sliding_attention"]})
    assert Attention.from_config(base | {"layer_types": ["full_attention"]}).head_dim == 16
