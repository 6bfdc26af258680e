"""kvcalc's layers against transformers' own modules, in fp32: the layer built by ``from_config``
loads the reference's weights strictly and, on the same inputs, prefill then cached decode, gives
the same outputs to max|error| / max|reference| <= 1e-5 -- DeepseekV3Attention (plain and
DeepSeek-V3's YaRN, with and without q_lora, both cache layouts), LlamaAttention (llama3
scaling, GQA, biases), Gemma-3's (sliding and full layers, each with its own rope; q/k norms),
Gemma-2's (softcap), gpt-oss's (sinks, biases, sliding windows, YaRN), Qwen3's (q/k norm) and
Qwen2's (q/k/v biases)."""

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from transformers import (  # noqa: E402
    DeepseekV3Config,
    DynamicCache,
    Gemma2Config,
    Gemma3TextConfig,
    GptOssConfig,
    LlamaConfig,
    Qwen2Config,
    Qwen3Config,
)
from transformers.models.deepseek_v3.modeling_deepseek_v3 import (  # noqa: E402
    DeepseekV3Attention,
    DeepseekV3RotaryEmbedding,
)
from transformers.models.gemma2.modeling_gemma2 import Gemma2Attention, Gemma2RotaryEmbedding  # noqa: E402
from transformers.models.gemma3.modeling_gemma3 import Gemma3Attention, Gemma3RotaryEmbedding  # noqa: E402
from transformers.models.gpt_oss.modeling_gpt_oss import GptOssAttention, GptOssRotaryEmbedding  # noqa: E402
from transformers.models.llama.modeling_llama import LlamaAttention, LlamaRotaryEmbedding  # noqa: E402
from transformers.models.qwen2.modeling_qwen2 import Qwen2Attention, Qwen2RotaryEmbedding  # noqa: E402
from transformers.models.qwen3.modeling_qwen3 import Qwen3Attention, Qwen3RotaryEmbedding  # noqa: E402

from kvcalc.nn.attention import Attention  # noqa: E402
from kvcalc.nn.mla import MLA  # noqa: E402
from tests.nn.reference import (  # noqa: E402
    BATCH,
    STEPS,
    TOKENS,
    TOLERANCE,
    kvcalc_steps,
    randomise,
    relative_error,
)

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


def reference_steps(module, rotary, x, window=None, cache=None):
    """transformers' module run as kvcalc's layer is: prefill PREFILL tokens (causal mask, within
    ``window`` tokens, self included), then decode one token at a time through a DynamicCache."""
    cache, outs = DynamicCache() if cache is None else cache, []
    for start, end in STEPS:
        positions = torch.arange(start, end)[None]
        delta = torch.arange(start, end)[:, None] - torch.arange(end)[None, :]  # query - key
        hidden = (delta < 0) | (delta >= window if window else False)
        mask = torch.zeros(delta.shape).masked_fill(hidden, float("-inf"))[None, None]  # (1, 1, S, T)
        out, _ = module(x[:, start:end], rotary(x, positions), mask, past_key_values=cache)
        outs.append(out)
    return torch.cat(outs, dim=1)








@pytest.mark.parametrize("layout", ["latent", "decompressed"])
@pytest.mark.parametrize("q_lora_rank", [24, None])
@pytest.mark.parametrize("rope", [{"rope_type": "default", "rope_theta": 10000.0}, DEEPSEEK_YARN],
                         ids=["plain", "yarn"])
def test_mla_matches_deepseek_v3_attention(layout, q_lora_rank, rope):
    config = deepseek_config(q_lora_rank, rope)
    reference = DeepseekV3Attention(config, layer_idx=0).eval()
    randomise(reference)
    layer = MLA.from_config(config.to_dict(), layout=layout).load_reference(reference).eval()
    assert_same_outputs(layer, reference, DeepseekV3RotaryEmbedding(config))


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
    assert_same_outputs(layer, reference, LlamaRotaryEmbedding(config))


def assert_same_outputs(layer, reference, rotary, window=None):
    """kvcalc's layer and transformers' module on the same random input, prefill then decode."""
    x = torch.randn(BATCH, TOKENS, 64)
    with torch.no_grad():
        expected = reference_steps(reference, rotary, x, window)
        assert relative_error(kvcalc_steps(layer, x), expected) <= TOLERANCE


WINDOW = 4
"""Shorter than the prefill, so the ring cache wraps during decode."""
SMALL = {"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "num_hidden_layers": 2,
         "max_position_embeddings": 4096}


def check_layer(config, module_class, rotary, layer_idx=0, window=None):
    """kvcalc's layer from ``config`` against the family's module on the same weights."""
    config._attn_implementation = "eager"
    reference = module_class(config, layer_idx=layer_idx).eval()
    randomise(reference)
    layer = Attention.from_config(config, layer_idx=layer_idx).load_reference(reference).eval()
    assert layer.window == window
    assert_same_outputs(layer, reference, rotary, window)
    return layer


def test_attention_matches_llama_attention_with_biases():
    config = LlamaConfig(**SMALL, attention_bias=True)
    layer = check_layer(config, LlamaAttention, LlamaRotaryEmbedding(config))
    assert layer.q_proj.bias is not None and layer.o_proj.bias is not None


GEMMA3_ROPE = {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
               "full_attention": {"rope_type": "linear", "rope_theta": 1000000.0, "factor": 8.0}}


@pytest.mark.parametrize("layer_idx", [0, 1], ids=["sliding", "full"])
def test_attention_matches_gemma3_attention(layer_idx):
    """Gemma-3: q/k RMSNorms of (1 + weight), query_pre_attn_scalar, a rope per layer type."""
    config = Gemma3TextConfig(**SMALL, query_pre_attn_scalar=24, sliding_window=WINDOW,
                              layer_types=["sliding_attention", "full_attention"], rope_parameters=GEMMA3_ROPE)
    rotary = Gemma3RotaryEmbedding(config)
    layer_type = config.layer_types[layer_idx]
    layer = check_layer(config, Gemma3Attention, lambda x, p: rotary(x, p, layer_type), layer_idx,
                        WINDOW if layer_type == "sliding_attention" else None)
    assert layer.scale == 24**-0.5 and layer.qk_norm == "gemma"
    assert layer.rotary.rope_type == ("linear" if layer_type == "full_attention" else "default")


def test_attention_from_an_older_gemma3_config_turns_sliding_layers_at_the_local_base():
    config = {"model_type": "gemma3_text", **SMALL, "sliding_window": WINDOW, "rope_theta": 1e6,
              "rope_local_base_freq": 1e4, "layer_types": ["sliding_attention", "full_attention"]}
    assert Attention.from_config(config, layer_idx=0).rotary.theta == 1e4
    assert Attention.from_config(config, layer_idx=1).rotary.theta == 1e6


def test_attention_matches_gemma2_attention_softcap():
    config = Gemma2Config(**SMALL, query_pre_attn_scalar=24, attn_logit_softcapping=2.0,
                          sliding_window=WINDOW, layer_types=["sliding_attention", "full_attention"])
    layer = check_layer(config, Gemma2Attention, Gemma2RotaryEmbedding(config), 0, WINDOW)
    assert layer.softcap == 2.0


GPT_OSS_YARN = {"rope_type": "yarn", "rope_theta": 150000.0, "factor": 32.0, "beta_fast": 32.0,
                "beta_slow": 1.0, "truncate": False, "original_max_position_embeddings": 4096}


@pytest.mark.parametrize("layer_idx", [0, 1], ids=["sliding", "full"])
def test_attention_matches_gpt_oss_attention(layer_idx):
    """gpt-oss: a learned sink logit per head, biased projections, YaRN without truncation."""
    config = GptOssConfig(**SMALL, sliding_window=WINDOW, layer_types=["sliding_attention", "full_attention"],
                          rope_parameters=GPT_OSS_YARN, attention_bias=True)
    layer = check_layer(config, GptOssAttention, GptOssRotaryEmbedding(config), layer_idx,
                        WINDOW if layer_idx == 0 else None)
    assert layer.sinks is not None and layer.rotary.rope_type == "yarn"


def test_attention_matches_qwen3_attention_qk_norm():
    config = Qwen3Config(**SMALL)
    layer = check_layer(config, Qwen3Attention, Qwen3RotaryEmbedding(config))
    assert layer.qk_norm == "rms"


def test_attention_matches_qwen2_attention_qkv_bias():
    config = Qwen2Config(**SMALL)
    layer = check_layer(config, Qwen2Attention, Qwen2RotaryEmbedding(config))
    assert layer.q_proj.bias is not None and layer.o_proj.bias is None


def test_attention_matches_nemotron_h_attention_without_rope():
    from transformers import NemotronHConfig
    from transformers.models.nemotron_h.modeling_nemotron_h import NemotronHAttention

    config = NemotronHConfig(**SMALL | {"num_hidden_layers": 1}, layers_block_type=["attention"])
    config._attn_implementation = "eager"
    reference = randomise(NemotronHAttention(config, layer_idx=0))
    layer = Attention.from_config(config).load_reference(reference)
    assert not layer.rotates

    def unrotated(x, position_embeddings, mask, past_key_values):  # its forward takes no rope
        return reference(x, mask, past_key_values=past_key_values)

    assert_same_outputs(layer, unrotated, lambda x, positions: None)


def test_attention_matches_phi3_attention_fused_qkv():
    from transformers import Phi3Config
    from transformers.models.phi3.modeling_phi3 import Phi3Attention, Phi3RotaryEmbedding

    config = Phi3Config(**SMALL)
    check_layer(config, Phi3Attention, Phi3RotaryEmbedding(config))


def test_attention_refuses_what_from_config_does_not_build():
    base = {"hidden_size": 64, "num_attention_heads": 4}
    with pytest.raises(ValueError, match="sliding_window 4096 without layer_types"):
        Attention.from_config(base | {"sliding_window": 4096})
    with pytest.raises(ValueError, match="'chunked_attention'"):
        Attention.from_config(base | {"layer_types": ["chunked_attention"]})
    with pytest.raises(ValueError, match="model_type 'llama4_text'"):
        Attention.from_config(base | {"model_type": "llama4_text"})
    with pytest.raises(ValueError, match="layer_idx 3"):
        Attention.from_config(base | {"layer_types": ["full_attention"]}, layer_idx=3)
    assert Attention.from_config(base | {"layer_types": ["full_attention"]}).head_dim == 16
    mistral = Attention.from_config(base | {"model_type": "mistral", "sliding_window": 4096})
    assert mistral.window == 4096
    qwen2 = base | {"model_type": "qwen2", "sliding_window": 4096, "use_sliding_window": False}
    assert Attention.from_config(qwen2).window is None


# measure builds its layers from the spec (``layer_config`` -> ``from_config``): a spec read from a
# config gives layers that compute what transformers' own module of that config does.

MEASURED = {
    "gpt_oss": (GptOssConfig, GptOssAttention, GptOssRotaryEmbedding,
                {"rope_parameters": GPT_OSS_YARN, "attention_bias": True}),
    "qwen3": (Qwen3Config, Qwen3Attention, Qwen3RotaryEmbedding, {"rope_parameters": {"rope_theta": 1e6}}),
    "llama": (LlamaConfig, LlamaAttention, LlamaRotaryEmbedding, {"rope_parameters": LLAMA3}),
}
ARCHITECTURE = {"gpt_oss": "GptOssForCausalLM", "qwen3": "Qwen3ForCausalLM", "llama": "LlamaForCausalLM"}


@pytest.mark.parametrize("family", sorted(MEASURED))
def test_measure_builds_the_layer_the_config_defines(family):
    from kvcalc.catalog import spec_from_data
    from kvcalc.measure import build_layer
    from kvcalc.spec import LayerKind

    config_class, module_class, rotary_class, extra = MEASURED[family]
    config = config_class(**SMALL, **extra, vocab_size=128)
    config._attn_implementation = "eager"
    data = config.to_dict() | {"architectures": [ARCHITECTURE[family]]}
    spec = spec_from_data(data, "config.json", family)
    assert spec.rope is not None
    reference = module_class(config, layer_idx=1).eval()  # a full-attention layer
    randomise(reference)
    layer = build_layer(spec, LayerKind.FULL, "latent", "cpu", torch.float32).load_reference(reference)
    assert_same_outputs(layer, reference, rotary_class(config))


def test_measure_builds_deepseek_mla_with_its_yarn():
    from kvcalc.catalog import spec_from_data
    from kvcalc.measure import build_layer
    from kvcalc.spec import LayerKind

    config = deepseek_config(24, DEEPSEEK_YARN)
    spec = spec_from_data(config.to_dict() | {"architectures": ["DeepseekV3ForCausalLM"]}, "config.json", "ds")
    assert spec.rope["rope_type"] == "yarn"
    reference = DeepseekV3Attention(config, layer_idx=0).eval()
    randomise(reference)
    layer = build_layer(spec, LayerKind.FULL, "latent", "cpu", torch.float32).load_reference(reference)
    assert_same_outputs(layer, reference, DeepseekV3RotaryEmbedding(config))


CACHED = {
    "llama": lambda: (LlamaConfig(**SMALL, rope_parameters=LLAMA3), LlamaAttention, LlamaRotaryEmbedding, Attention),
    "qwen3": lambda: (Qwen3Config(**SMALL), Qwen3Attention, Qwen3RotaryEmbedding, Attention),
    "gpt_oss": lambda: (GptOssConfig(**SMALL, rope_parameters=GPT_OSS_YARN, attention_bias=True,
                                     layer_types=["full_attention"] * 2),
                        GptOssAttention, GptOssRotaryEmbedding, Attention),
    "deepseek_v3": lambda: (deepseek_config(24, DEEPSEEK_YARN), DeepseekV3Attention, DeepseekV3RotaryEmbedding,
                            lambda config: MLA.from_config(config, layout="latent")),
}


@pytest.mark.parametrize("family", sorted(CACHED))
def test_the_cache_holds_what_transformers_caches(family):
    """Keys after rope and norms, and values, in transformers' order: tensor for tensor."""
    config, module_class, rotary_class, build = CACHED[family]()
    config._attn_implementation = "eager"
    reference = randomise(module_class(config, layer_idx=0))
    layer = (build(config) if build is not Attention else Attention.from_config(config)).load_reference(reference)
    x, cache = torch.randn(BATCH, TOKENS, 64), DynamicCache()
    with torch.no_grad():
        reference_steps(reference, rotary_class(config), x, cache=cache)
        kvcalc_steps(layer, x)
    held, positions = layer.cache.read(torch.float32)
    assert positions.tolist() == list(range(TOKENS))
    if "latent_rope" in held:  # MLA: transformers keeps the latent as keys, the rope key as values
        latent, rope_key = held["latent_rope"].split([layer.kv_lora_rank, layer.rope], dim=-1)
        held = {"k": latent[:, None], "v": rope_key[:, None]}
    torch.testing.assert_close(held["k"], cache.layers[0].keys, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(held["v"], cache.layers[0].values, atol=1e-5, rtol=1e-5)
