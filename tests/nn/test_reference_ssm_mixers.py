"""kvcalc's lightning attention, Mamba2 and Mamba mixers against transformers 5.23's own modules, in
fp32: the layer built by ``from_config`` loads the reference's weights strictly and, on the same
inputs, a prefill then single-token decode steps -- each side through its own cache -- give the same
outputs to max|error| / max|reference| <= 1e-5. The references run their torch paths (mamba_ssm and
causal_conv1d are not installed; the tests skip if they are), with the decoder layers' masks: None
for an unpadded batch (``create_recurrent_attention_mask``)."""

import importlib.util

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from transformers import DynamicCache, JambaConfig, Mamba2Config, MiniMaxConfig  # noqa: E402
from transformers.models.jamba.modeling_jamba import JambaMambaMixer  # noqa: E402
from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer  # noqa: E402
from transformers.models.minimax.modeling_minimax import MiniMaxCache, MiniMaxLightningAttention  # noqa: E402

from kvcalc.nn.recurrent import LightningAttention, Mamba, Mamba2  # noqa: E402
from tests.nn.reference import BATCH, STEPS, TOKENS, kvcalc_steps, randomise, relative_error  # noqa: E402

HIDDEN = 32

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(name) for name in ("mamba_ssm", "causal_conv1d")),
    reason="the references would run the CUDA kernels, not their torch paths")


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)








def reference_steps(call, x):
    """``call(x_chunk)`` on the prefill, then on each later token alone."""
    return torch.cat([call(x[:, a:b]) for a, b in STEPS], dim=1)


def check(layer, reference, call):
    x = torch.randn(BATCH, TOKENS, HIDDEN)
    with torch.no_grad():
        expected = reference_steps(call, x)
        error = relative_error(kvcalc_steps(layer, x), expected)
    assert error <= 1e-5, error
    return layer


@pytest.mark.parametrize("layer_idx", [1, 3])
def test_lightning_matches_minimax_lightning_attention(layer_idx):
    """A block of 4 tokens, so the prefill of 7 crosses MiniMax's block boundary; then its recurrent
    decode through ``MiniMaxCache``'s linear cache."""
    config = MiniMaxConfig(hidden_size=HIDDEN, num_attention_heads=4, head_dim=6, num_hidden_layers=4, block_size=4)
    assert config.layer_types[layer_idx] == "linear_attention"
    reference = randomise(MiniMaxLightningAttention(config, layer_idx))
    layer = LightningAttention.from_config(config, layer_idx=layer_idx).load_reference(reference).eval()
    cache = MiniMaxCache()
    check(layer, reference, lambda x: reference(x, None, None, past_key_values=cache)[0])
    assert cache.linear_cache[layer_idx].shape == (BATCH, *layer.state_shape)


def test_lightning_refuses_the_weights_of_another_layer():
    config = MiniMaxConfig(hidden_size=HIDDEN, num_attention_heads=4, head_dim=6, num_hidden_layers=4)
    reference = MiniMaxLightningAttention(config, 1)
    with pytest.raises(ValueError, match="another layer_idx or num_layers"):
        LightningAttention.from_config(config, layer_idx=3).load_reference(reference)


def mamba2_config(**fields):
    base = {"hidden_size": HIDDEN, "num_heads": 8, "head_dim": 8, "expand": 2, "state_size": 5, "n_groups": 2,
            "conv_kernel": 3, "chunk_size": 4, "num_hidden_layers": 1, "vocab_size": 64}
    return Mamba2Config(**base | fields)


@pytest.mark.parametrize("n_groups", [1, 2, 4])
def test_mamba2_matches_mamba2_mixer(n_groups):
    """transformers' ``Mamba2Mixer`` (chunked scan over chunks of 4 in prefill, the selective state update
    in decode) through a ``DynamicCache``. Its gated norm is per group (group_size = inner / n_groups),
    as Nemotron-H's, Granite-4.0-H's and Bamba's are; n_groups 2 and 4 would fail a whole-width norm."""
    config = mamba2_config(n_groups=n_groups)
    reference = randomise(Mamba2Mixer(config, layer_idx=0))
    layer = Mamba2.from_config(config).load_reference(reference).eval()
    assert (layer.norm_groups, layer.norm_eps, layer.conv_bias is not None) == (n_groups, 1e-5, True)
    cache = DynamicCache(config=config)
    check(layer, reference, lambda x: reference(x, cache_params=cache, attention_mask=None))
    assert cache.layers[0].recurrent_states[0].shape == (BATCH, *layer.state_shape)


def test_mamba2_from_a_config_dict_and_refusals():
    config = mamba2_config()
    assert Mamba2.from_config(config.to_dict()).norm_groups == 2
    with pytest.raises(ValueError, match="use_bias True is not modelled"):
        Mamba2.from_config(config.to_dict() | {"use_bias": True})
    with pytest.raises(ValueError, match="time_step_limit"):
        Mamba2.from_config(config.to_dict() | {"time_step_limit": (0.0, 0.1)})


def jamba_config():
    """Layer 0 Mamba, layer 1 attention."""
    return JambaConfig(hidden_size=HIDDEN, mamba_expand=2, mamba_d_state=4, mamba_d_conv=3, mamba_dt_rank="auto",
                       num_hidden_layers=2, attn_layer_period=2, attn_layer_offset=1, vocab_size=64,
                       num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6)


def test_mamba_matches_jamba_mamba_mixer():
    """``JambaMambaMixer``: its selective scan in prefill, its state update in decode, through a
    ``DynamicCache``; dt, B and C RMS-normalised (rms_norm_eps), the conv with a bias."""
    config = jamba_config()
    assert config.layers_block_type[0] == "mamba"
    reference = randomise(JambaMambaMixer(config, layer_idx=0))
    layer = Mamba.from_config(config).load_reference(reference).eval()
    assert layer.dt_rank == 2
    cache = DynamicCache(config=config)
    check(layer, reference, lambda x: reference(x, cache_params=cache, attention_mask=None))
    assert cache.layers[0].recurrent_states[0].shape == (BATCH, *layer.state_shape)


def test_mamba_refuses_a_biased_projection():
    with pytest.raises(ValueError, match="mamba_proj_bias True is not modelled"):
        Mamba.from_config(jamba_config().to_dict() | {"mamba_proj_bias": True})
