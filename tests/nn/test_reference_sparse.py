"""kvcalc's sparse-attention layers against transformers' own modules in fp32, on the reference's
weights loaded strictly: prefill then cached decode, outputs equal to max|error| / max|reference|
<= 1e-5 -- the DSA layer (MLA + lightning indexer) against ``DeepseekV32Attention`` and
``GlmMoeDsaAttention``, DeepSeek-V4's compressed layer (sliding, CSA, HCA) against
``DeepseekV4Attention``.

kvcalc caches the indexer's key in fp8 as vLLM does; transformers keeps it in full precision. Where
the indexer keeps every token the two agree as they are; where ``index_topk`` is smaller than the
sequence the reference's cache here stores its indexer keys through kvcalc's fp8 round trip, so the
sole difference -- the rounding of the key the engines cache -- is taken out, and shown separately.
"""

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from transformers import DeepseekV4Config, DeepseekV32Config, DynamicCache, GlmMoeDsaConfig  # noqa: E402
from transformers.models.deepseek_v4.modeling_deepseek_v4 import (  # noqa: E402
    DeepseekV4Attention,
    DeepseekV4RotaryEmbedding,
)
from transformers.models.deepseek_v32.modeling_deepseek_v32 import (  # noqa: E402
    DeepseekV32Attention,
    DeepseekV32RotaryEmbedding,
)
from transformers.models.glm_moe_dsa.modeling_glm_moe_dsa import (  # noqa: E402
    GlmMoeDsaAttention,
    GlmMoeDsaRotaryEmbedding,
)

from kvcalc.nn.compressed import CompressedAttentionLayer  # noqa: E402
from kvcalc.nn.indexer import dequantise, quantise  # noqa: E402
from kvcalc.nn.mla import MLA  # noqa: E402
from tests.nn.reference import (  # noqa: E402
    BATCH,
    STEPS,
    TOKENS,
    kvcalc_steps,
    randomise,
    relative_error,
)

SPARSE_TOPK = 4
"""Fewer than the 7 prefill tokens: the indexer's choice decides every later query's output. The
indexers have 16 heads: a token scores exactly 0 only when every head's ReLU is 0, and such ties at
the cut break one way in kvcalc (the earliest) and as ``topk`` happens to in transformers."""
FAMILIES = {
    "deepseek_v32": (DeepseekV32Config, DeepseekV32Attention, DeepseekV32RotaryEmbedding),
    "glm_moe_dsa": (GlmMoeDsaConfig, GlmMoeDsaAttention, GlmMoeDsaRotaryEmbedding),
}


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


def dsa_config(family, index_topk):
    config_class = FAMILIES[family][0]
    config = config_class(hidden_size=64, num_attention_heads=4, num_key_value_heads=4, q_lora_rank=24,
                          kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=12,
                          index_n_heads=16, index_head_dim=16, index_topk=index_topk, num_hidden_layers=1,
                          rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    config._attn_implementation = "eager"
    return config


class Fp8IndexerCache(DynamicCache):
    """transformers' cache with its indexer keys stored as kvcalc (and vLLM) store them: fp8 values,
    an fp32 scale per 128."""

    def update_indexer(self, indexer_key_states, layer_idx):
        return super().update_indexer(dequantise(quantise(indexer_key_states)), layer_idx)


def reference_steps(module, rotary, x, cache):
    """The reference as kvcalc's layer runs: prefill PREFILL tokens, then one token at a time."""
    outs = []
    for start, end in STEPS:
        positions = torch.arange(start, end)[None]
        future = torch.arange(start, end)[:, None] < torch.arange(end)[None, :]
        mask = torch.zeros(future.shape).masked_fill(future, float("-inf"))[None, None]  # (1, 1, S, T)
        out = module(x[:, start:end], rotary(x, positions), mask, past_key_values=cache, position_ids=positions)
        outs.append(out[0])  # GLM's also returns its top-k indices
    return torch.cat(outs, dim=1)


def reference_and_layer(family, index_topk, layout="latent"):
    config = dsa_config(family, index_topk)
    reference = FAMILIES[family][1](config, layer_idx=0).eval()
    randomise(reference)
    layer = MLA.from_config(config.to_dict(), layout=layout).load_reference(reference).eval()
    return config, reference, layer


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_dsa_keeping_every_token_matches_the_reference_and_plain_mla(family):
    """index_topk above the sequence: the indexer keeps all, fp8 or not, and the layer is plain MLA."""
    config, reference, layer = reference_and_layer(family, 64)
    plain = MLA.from_config(config.to_dict() | {"index_n_heads": None}).eval()
    plain.load_state_dict({k: v for k, v in layer.state_dict().items() if not k.startswith("indexer.")})
    x = torch.randn(BATCH, TOKENS, 64)
    with torch.no_grad():
        expected = reference_steps(reference, FAMILIES[family][2](config), x, DynamicCache(config=config))
        assert relative_error(kvcalc_steps(layer, x), expected) <= 1e-5
        assert relative_error(kvcalc_steps(plain, x), expected) <= 1e-5


@pytest.mark.parametrize("layout", ["latent", "decompressed"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_dsa_sparse_matches_the_reference_on_fp8_indexer_keys(family, layout):
    config, reference, layer = reference_and_layer(family, SPARSE_TOPK, layout)
    dense = MLA.from_config(config.to_dict() | {"index_n_heads": None}, layout=layout).eval()
    dense.load_state_dict({k: v for k, v in layer.state_dict().items() if not k.startswith("indexer.")})
    x = torch.randn(BATCH, TOKENS, 64)
    with torch.no_grad():
        expected = reference_steps(reference, FAMILIES[family][2](config), x, Fp8IndexerCache(config=config))
        assert relative_error(kvcalc_steps(layer, x), expected) <= 1e-5
        assert relative_error(kvcalc_steps(dense, x), expected) > 0.05  # the choice matters


def test_dsa_caches_the_reference_indexer_key_rounded_to_fp8():
    """The one difference from transformers: its cache holds the indexer key itself, kvcalc's the
    key's fp8 rounding (DeepSeek-V3.2's half-split rope keeps the two in the same order)."""
    config, reference, layer = reference_and_layer("deepseek_v32", SPARSE_TOPK)
    x = torch.randn(BATCH, TOKENS, 64)
    cache = DynamicCache(config=config)
    with torch.no_grad():
        reference_steps(reference, DeepseekV32RotaryEmbedding(config), x, cache)
        kvcalc_steps(layer, x)
    keys = cache.layers[0].indexer_keys  # (B, T, index_head_dim) fp32
    held, _ = layer.cache.read(torch.float32)
    ours = dequantise({"index_k": held["index_k"], "index_scale": held["index_scale"]})
    assert torch.allclose(ours, dequantise(quantise(keys)), rtol=1e-6, atol=0)
    assert 0 < relative_error(ours, keys) <= 2**-4  # e4m3: 3 mantissa bits


def test_dsa_from_config_reads_the_index_fields_and_the_indexer_rope_layout():
    v32 = dsa_config("deepseek_v32", 16).to_dict()
    indexer = MLA.from_config(v32).indexer
    assert (indexer.n_heads, indexer.head_dim, indexer.topk, indexer.rope_dim) == (16, 16, 16, 8)
    assert not indexer.rope_interleaved
    assert MLA.from_config(dsa_config("glm_moe_dsa", 16)).indexer.rope_interleaved
    assert MLA.from_config(v32 | {"indexer_rope_interleave": True}).indexer.rope_interleaved  # as vLLM reads it
    unset = {k: v for k, v in v32.items() if k != "index_topk"}
    assert MLA.from_config(unset).indexer.topk == 2048  # transformers' default


# DeepSeek-V4: a window shorter than the prefill (the ring wraps), CSA every 2 tokens (up to 6
# entries), HCA every 4; YaRN on the compressed layers' rope, the grouped output projection, sinks.

WINDOW = 4
V4_LAYERS = ["sliding_attention", "compressed_sparse_attention", "heavily_compressed_attention"]
V4_YARN = {"rope_type": "yarn", "factor": 16.0, "original_max_position_embeddings": 65536, "beta_fast": 32,
           "beta_slow": 1}


def v4_config(index_topk):
    config = DeepseekV4Config(hidden_size=64, num_attention_heads=4, head_dim=16, partial_rotary_factor=0.5,
                              q_lora_rank=24, o_groups=2, o_lora_rank=8, sliding_window=WINDOW, index_n_heads=16,
                              index_head_dim=16, index_topk=index_topk, num_hidden_layers=3, layer_types=V4_LAYERS,
                              compress_rates={"compressed_sparse_attention": 2, "heavily_compressed_attention": 4},
                              max_position_embeddings=1048576, rope_theta=10000.0, compress_rope_theta=160000.0,
                              rope_parameters=V4_YARN)
    config._attn_implementation = "eager"
    return config


def v4_reference_steps(module, config, x, fp8_index_keys=False):
    """``DeepseekV4Attention`` run as kvcalc's layer is, its sliding mask over the keys its cache
    returns (the last WINDOW - 1 held, then this call's); with ``fp8_index_keys`` the CSA cache
    stores the indexer's keys through kvcalc's fp8 round trip."""
    rotary, cache, outs = DeepseekV4RotaryEmbedding(config), DynamicCache(config=config), []
    for layer in cache.layers if fp8_index_keys else []:
        if hasattr(layer, "overlap_kv"):  # a CSA layer
            store = layer.update_compressor_states
            layer.update_compressor_states = lambda name, kv, store=store: store(
                name, dequantise(quantise(kv)) if name == "indexer" else kv)
    for start, end in STEPS:
        positions = torch.arange(start, end)[None]
        held = min(start, WINDOW - 1)
        delta = torch.arange(start, end)[:, None] - torch.arange(start - held, end)[None, :]  # query - key
        mask = torch.zeros(delta.shape).masked_fill((delta < 0) | (delta >= WINDOW), float("-inf"))
        angles = {kind: rotary(x, positions, layer_type=kind) for kind in ("main", "compress")}
        out, _ = module(x[:, start:end], angles, positions, mask.expand(x.shape[0], 1, -1, -1),
                        past_key_values=cache)
        outs.append(out)
    return torch.cat(outs, dim=1)


def v4_reference_and_layer(layer_idx, index_topk):
    config = v4_config(index_topk)
    reference = DeepseekV4Attention(config, layer_idx=layer_idx).eval()
    randomise(reference)
    layer = CompressedAttentionLayer.from_config(config.to_dict(), layer_idx).load_reference(reference).eval()
    return config, reference, layer


@pytest.mark.parametrize("layer_idx", [0, 1, 2], ids=V4_LAYERS)
def test_compressed_layer_matches_deepseek_v4_attention(layer_idx):
    """index_topk above the entry count: CSA's indexer keeps every entry, fp8 or not."""
    config, reference, layer = v4_reference_and_layer(layer_idx, 64)
    assert layer.rotary.rope_type == ("default" if layer_idx == 0 else "yarn")
    x = torch.randn(BATCH, TOKENS, 64)
    with torch.no_grad():
        expected = v4_reference_steps(reference, config, x)
        assert relative_error(kvcalc_steps(layer, x), expected) <= 1e-5


def test_compressed_sparse_layer_matches_deepseek_v4_attention_on_fp8_indexer_keys():
    config, reference, layer = v4_reference_and_layer(1, 2)
    dense = CompressedAttentionLayer.from_config(v4_config(64), 1).load_reference(reference).eval()
    assert layer.indexer.topk == 2
    x = torch.randn(BATCH, TOKENS, 64)
    with torch.no_grad():
        expected = v4_reference_steps(reference, config, x, fp8_index_keys=True)
        assert relative_error(kvcalc_steps(layer, x), expected) <= 1e-5
        assert relative_error(kvcalc_steps(dense, x), expected) > 0.05  # the choice matters


def test_compressed_layer_from_config_refuses_what_it_does_not_know():
    config = v4_config(64).to_dict()
    with pytest.raises(ValueError, match="layer_idx 3: layer_types has 3 entries"):
        CompressedAttentionLayer.from_config(config, 3)
    with pytest.raises(ValueError, match="'full_attention'"):
        CompressedAttentionLayer.from_config(config | {"layer_types": ["full_attention"]}, 0)
