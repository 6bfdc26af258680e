"""kvcalc's delta-rule mixers against transformers' own modules, in fp32: the layer built by
``from_config`` loads the reference's weights strictly and, on the same inputs -- a prefill, then
one token at a time through each side's own cache -- gives the same outputs to
max|error| / max|reference| <= 1e-5: GatedDeltaNet against ``Qwen3NextGatedDeltaNet`` (q, k, v, z
and b, a interleaved per key head) and ``Qwen3_5GatedDeltaNet`` (split projections), and
KimiDeltaAttention against ``KimiLinearDeltaAttention``. transformers runs its torch paths (the
chunked rule for the prefill, the recurrent one for decode), FLA and causal-conv1d not installed."""

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from transformers import DynamicCache, KimiLinearConfig, Qwen3_5TextConfig, Qwen3NextConfig  # noqa: E402
from transformers.models.kimi_linear.modeling_kimi_linear import KimiLinearDeltaAttention  # noqa: E402
from transformers.models.qwen3_5.modeling_qwen3_5 import Qwen3_5GatedDeltaNet  # noqa: E402
from transformers.models.qwen3_next.modeling_qwen3_next import Qwen3NextGatedDeltaNet  # noqa: E402

from kvcalc.nn.recurrent import GatedDeltaNet, KimiDeltaAttention  # noqa: E402
from tests.nn.reference import BATCH, STEPS, TOKENS, kvcalc_steps, randomise, relative_error  # noqa: E402

HIDDEN = 32
GDN = {"hidden_size": HIDDEN, "num_hidden_layers": 2, "layer_types": ["linear_attention", "full_attention"],
       "linear_num_key_heads": 2, "linear_num_value_heads": 4, "linear_key_head_dim": 8,
       "linear_value_head_dim": 6, "linear_conv_kernel_dim": 4, "rms_norm_eps": 1e-5}
KIMI = {"hidden_size": HIDDEN, "num_hidden_layers": 2, "layer_types": ["linear_attention", "full_attention"],
        "linear_num_heads": 3, "linear_head_dim": 6, "linear_conv_kernel_dim": 3, "rms_norm_eps": 1e-4}


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)




def reference_steps(module, config, x):
    """transformers' mixer as its decoder layer calls it, through the family's cache: the prefill,
    then one token at a time (no padding, so its recurrent mask is None)."""
    cache = DynamicCache(config=config)
    return torch.cat([module(x[:, a:b], cache_params=cache, attention_mask=None) for a, b in STEPS], dim=1)






CASES = {
    "qwen3_next": (Qwen3NextConfig, Qwen3NextGatedDeltaNet, GatedDeltaNet),
    "qwen3_5": (Qwen3_5TextConfig, Qwen3_5GatedDeltaNet, GatedDeltaNet),
    "kimi_linear": (KimiLinearConfig, KimiLinearDeltaAttention, KimiDeltaAttention),
}


@pytest.mark.parametrize("family", sorted(CASES))
def test_mixer_matches_the_transformers_module(family):
    config_class, module_class, layer_class = CASES[family]
    config = config_class(**(KIMI if family == "kimi_linear" else GDN))
    reference = randomise(module_class(config, layer_idx=0))
    layer = layer_class.from_config(config.to_dict()).load_reference(reference)
    x = torch.randn(BATCH, TOKENS, HIDDEN)
    with torch.no_grad():
        assert relative_error(kvcalc_steps(layer, x), reference_steps(reference, config, x)) <= 1e-5


def test_gated_deltanet_from_config_reads_the_shapes():
    layer = GatedDeltaNet.from_config(Qwen3NextConfig(**GDN))
    assert (layer.k_heads, layer.v_heads, layer.dk, layer.dv, layer.kernel) == (2, 4, 8, 6, 4)
    assert layer.norm_eps == 1e-5 and layer.dt_bias.shape == (4,)
    assert layer.state_shape == (4, 8, 6) and layer.channels == 2 * 16 + 24


def test_kda_from_config_prefers_a_checkpoints_linear_attn_config():
    nested = {"head_dim": 4, "num_heads": 5, "short_conv_kernel_size": 2}
    layer = KimiDeltaAttention.from_config(KIMI | {"linear_attn_config": nested})
    assert (layer.heads, layer.head_dim, layer.kernel, layer.norm_eps) == (5, 4, 2, 1e-4)
    assert KimiDeltaAttention.from_config(KimiLinearConfig(**KIMI)).state_shape == (3, 6, 6)


def test_from_config_refuses_another_conv_activation():
    with pytest.raises(ValueError, match="hidden_act 'gelu'"):
        GatedDeltaNet.from_config(GDN | {"hidden_act": "gelu"})


def test_load_reference_refuses_a_weight_it_does_not_map():
    config = Qwen3NextConfig(**GDN)
    reference = Qwen3NextGatedDeltaNet(config, layer_idx=0)
    reference.register_parameter("extra", torch.nn.Parameter(torch.zeros(1)))
    with pytest.raises(ValueError, match=r"does not map: \['extra'\]"):
        GatedDeltaNet.from_config(config).load_reference(reference)
