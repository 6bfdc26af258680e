"""A model architecture, as far as its KV cache is concerned.

Specs are frozen dataclasses whose constructors enforce every invariant (positive sizes, heads
divisible by KV heads, windows exactly where layers slide), so no impossible spec exists at run time.
Files are checked for shape and types by the pydantic schema in ``schema.py`` before they get here;
the bundled catalog is checked by that schema in the test suite and loaded directly, which keeps
pydantic's start-up cost off the analytic commands.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from functools import cached_property
from typing import Any, ClassVar

from kvcalc.formats import WEIGHT_FORMATS
from kvcalc.rotary import FIELDS as ROPE_FIELDS
from kvcalc.rotary import check_settings

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
ARCHITECTURE_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
"""A model class name, as a config's ``architectures`` lists them."""


class LayerKind(StrEnum):
    FULL = "full"
    SLIDING = "sliding"
    """Holds the last ``sliding_window`` tokens."""
    CHUNKED = "chunked"
    """Attends within fixed chunks of ``attention_chunk_size`` tokens (Llama-4's local layers), so
    it never needs more than one chunk's worth."""
    COMPRESSED_SPARSE = "compressed_sparse"
    """DeepSeek-V4's CSA: a sliding window plus one compressed entry per ``csa_rate`` tokens, with
    a lightning indexer's compressed key beside it."""
    HEAVILY_COMPRESSED = "heavily_compressed"
    """DeepSeek-V4's HCA: a sliding window plus one compressed entry per ``hca_rate`` tokens."""
    SHARED = "shared"
    """Reuses an earlier layer's cache and holds none of its own (Gemma-3n's last
    ``num_kv_shared_layers``; transformers' ``DummyLayer``)."""
    RECURRENT = "recurrent"
    """A linear-attention or Mamba mixer (``recurrent``): a fixed-size state per sequence, no K/V."""
    HYBRID = "hybrid"
    """Full attention and a ``recurrent`` mixer side by side (Falcon-H1): K/V and the state."""
    MLP = "mlp"
    """A block without a token mixer (Nemotron-H's MLP and MoE layers): it caches nothing."""


NO_CACHE_KINDS = (LayerKind.SHARED, LayerKind.MLP)
"""Layers that hold no cache of their own."""
STATE_KINDS = (LayerKind.RECURRENT, LayerKind.HYBRID)
"""Layers that hold a recurrent state."""


MAX_LAYERS = 10_000
MAX_HEADS = 1 << 16
MAX_DIM = 1 << 20
MAX_TOKENS = 1 << 36
MAX_PARAMS = 10**16
BOUNDS: dict[str, int] = {
    "num_layers": MAX_LAYERS, "mtp_layers": MAX_LAYERS, "sublayers": 16,
    "num_heads": MAX_HEADS, "num_kv_heads": MAX_HEADS,
    "hidden_size": MAX_DIM, "head_dim": MAX_DIM, "v_head_dim": MAX_DIM, "q_lora_rank": MAX_DIM,
    "kv_lora_rank": MAX_DIM, "qk_nope_head_dim": MAX_DIM, "qk_rope_head_dim": MAX_DIM,
    "index_head_dim": MAX_DIM, "index_n_heads": MAX_HEADS, "csa_rate": MAX_TOKENS, "hca_rate": MAX_TOKENS,
    "sliding_window": MAX_TOKENS, "attention_chunk_size": MAX_TOKENS, "max_position_embeddings": MAX_TOKENS,
    "params": MAX_PARAMS, "weights_bytes": 8 * MAX_PARAMS,
}
"""The largest value each size may take: far above any real model (the largest have ~200 layers,
128 heads, hidden sizes near 25k, 10M positions), low enough that no input makes kvcalc build a
billion-entry layer list or a number no float can show."""


def _check_positive(**values: int | None) -> None:
    for name, value in values.items():
        if value is not None and (type(value) is not int or not 1 <= value <= BOUNDS[name]):
            raise ValueError(f"{name}: {value!r} must be an integer from 1 to {BOUNDS[name]:,}")


@dataclass(frozen=True, kw_only=True)
class StandardAttention:
    """Multi-head attention with ``num_kv_heads`` shared K/V heads: MHA, GQA or MQA.

    Caches K (``head_dim``) and V (``v_head_dim``, default ``head_dim``) for every KV head.
    """

    kind: ClassVar[str] = "standard"
    num_heads: int
    num_kv_heads: int
    head_dim: int
    v_head_dim: int | None = None

    def __post_init__(self) -> None:
        _check_positive(num_heads=self.num_heads, num_kv_heads=self.num_kv_heads,
                        head_dim=self.head_dim, v_head_dim=self.v_head_dim)
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_kv_heads {self.num_kv_heads} does not divide num_heads {self.num_heads}"
            )

    @property
    def variant(self) -> str:
        if self.num_kv_heads == self.num_heads:
            return "MHA"
        return "MQA" if self.num_kv_heads == 1 else "GQA"

    @property
    def value_dim(self) -> int:
        return self.v_head_dim or self.head_dim

    def weight_count(self, hidden_size: int) -> int:
        """Parameters of q_proj, k_proj, v_proj and o_proj (no biases): q and o span the query
        heads, k and v the KV heads, each once with the K width and once with the V width."""
        return hidden_size * (self.num_heads + self.num_kv_heads) * (self.head_dim + self.value_dim)


@dataclass(frozen=True, kw_only=True)
class MlaAttention:
    """DeepSeek Multi-head Latent Attention (DeepSeek-V2 paper, section 2.1).

    The latent layout caches ``kv_lora_rank`` (d_c) + ``qk_rope_head_dim`` (d_R) values per token
    and layer, independent of the head count. ``q_lora_rank`` is None for a plain query projection.

    DeepSeek Sparse Attention (DeepSeek-V3.2, GLM-5) adds a lightning indexer: ``index_n_heads``
    query heads score every cached token against one shared key of ``index_head_dim`` values, cached
    per token and layer beside the latent (transformers' ``DeepseekV32Indexer``).
    """

    kind: ClassVar[str] = "mla"
    num_heads: int
    q_lora_rank: int | None
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    index_head_dim: int | None = None
    index_n_heads: int | None = None

    def __post_init__(self) -> None:
        _check_positive(num_heads=self.num_heads, q_lora_rank=self.q_lora_rank,
                        kv_lora_rank=self.kv_lora_rank, qk_nope_head_dim=self.qk_nope_head_dim,
                        qk_rope_head_dim=self.qk_rope_head_dim, v_head_dim=self.v_head_dim,
                        index_head_dim=self.index_head_dim, index_n_heads=self.index_n_heads)
        if (self.index_head_dim is None) != (self.index_n_heads is None):
            raise ValueError("index_head_dim and index_n_heads: give both (a DSA indexer) or neither")
        if self.index_head_dim is not None and self.q_lora_rank is None:
            raise ValueError("index_head_dim: the DSA indexer reads the low-rank query; q_lora_rank is null")

    @property
    def variant(self) -> str:
        return "MLA" if self.index_head_dim is None else "MLA+DSA"

    def weight_count(self, hidden_size: int) -> int:
        """Parameters of the query path (q_a_proj, its norm, q_b_proj; or q_proj), kv_a_proj_with_mqa,
        kv_a_layernorm, kv_b_proj and o_proj -- DeepseekV3Attention's, without biases."""
        heads, rank = self.num_heads, self.kv_lora_rank
        q_dim = heads * (self.qk_nope_head_dim + self.qk_rope_head_dim)
        q_lora = self.q_lora_rank
        q = hidden_size * q_dim if q_lora is None else hidden_size * q_lora + q_lora + q_lora * q_dim
        kv = hidden_size * (rank + self.qk_rope_head_dim) + rank
        kv += rank * heads * (self.qk_nope_head_dim + self.v_head_dim)
        return q + kv + heads * self.v_head_dim * hidden_size + self._indexer_weights(hidden_size)

    def _indexer_weights(self, hidden_size: int) -> int:
        """wq_b (q_lora_rank -> heads x head_dim), wk, k_norm (LayerNorm: weight and bias) and
        weights_proj of transformers' ``DeepseekV32Indexer``."""
        if self.index_head_dim is None:
            return 0
        dim, heads = self.index_head_dim, self.index_n_heads
        return self.q_lora_rank * heads * dim + hidden_size * dim + 2 * dim + hidden_size * heads


@dataclass(frozen=True, kw_only=True)
class CompressedAttention:
    """DeepSeek-V4's attention (transformers' ``DeepseekV4Attention``): one KV head of ``head_dim``
    values read as both key and value (K = V), on every layer a sliding window of the last
    ``sliding_window`` tokens, and on compressed layers one entry per ``csa_rate`` (CSA) or
    ``hca_rate`` (HCA) tokens: a gated sum of their projections, made by a compressor that keeps
    the tokens of the window it has not closed. CSA layers add a lightning indexer whose own
    compressed keys (``index_head_dim``, one head) are cached the same way.
    """

    kind: ClassVar[str] = "compressed"
    num_heads: int
    head_dim: int
    qk_rope_head_dim: int
    """The rotary slice of ``head_dim`` (engines store it apart in their packed fp8 formats)."""
    q_lora_rank: int
    index_n_heads: int
    index_head_dim: int
    csa_rate: int = 4
    hca_rate: int = 128

    def __post_init__(self) -> None:
        _check_positive(num_heads=self.num_heads, head_dim=self.head_dim,
                        qk_rope_head_dim=self.qk_rope_head_dim,
                        q_lora_rank=self.q_lora_rank, index_n_heads=self.index_n_heads,
                        index_head_dim=self.index_head_dim, csa_rate=self.csa_rate, hca_rate=self.hca_rate)
        if self.qk_rope_head_dim > self.head_dim:
            raise ValueError(f"qk_rope_head_dim {self.qk_rope_head_dim} exceeds head_dim {self.head_dim}")

    variant: ClassVar[str] = "CSA/HCA"

    def weight_count(self, hidden_size: int) -> int:
        """Parameters of kvcalc's reference layer (``nn/compressed.py``) on a CSA layer, its largest:
        the query path, the K = V projection and norm, a dense output projection (V4's own is
        grouped and low-rank: fewer) and both compressors; the indexer's query heads and weights."""
        heads, d, q = self.num_heads, self.head_dim, self.q_lora_rank
        attention = hidden_size * q + q + q * heads * d + hidden_size * d + d + heads * d * hidden_size
        index, index_heads = self.index_head_dim, self.index_n_heads
        compressors = sum(2 * hidden_size * 2 * w + self.csa_rate * 2 * w + w for w in (d, index))
        indexer = q * index_heads * index + hidden_size * index + 2 * index + hidden_size * index_heads
        return attention + compressors + indexer

    def rate(self, kind: LayerKind) -> int | None:
        """Tokens per compressed entry on a layer of ``kind`` (None: the window only)."""
        rates = {LayerKind.COMPRESSED_SPARSE: self.csa_rate, LayerKind.HEAVILY_COMPRESSED: self.hca_rate}
        return rates.get(kind)


class RecurrentKind(StrEnum):
    GATED_DELTANET = "gated_deltanet"
    """Gated DeltaNet (Qwen3-Next, Qwen3.5): one conv over q|k|v, a k x v state per value head."""
    KDA = "kda"
    """Kimi Delta Attention (Kimi-Linear): one conv over q|k|v, a head_dim x head_dim state per head."""
    LIGHTNING = "lightning"
    """Lightning attention (MiniMax-Text-01 / M1): a head_dim x head_dim state per head, no conv."""
    MAMBA2 = "mamba2"
    """Mamba2 (Nemotron-H, Falcon-H1, Granite-4.0-H): a conv over x|B|C, a head_dim x d_state state
    per head."""
    MAMBA = "mamba"
    """Mamba (Jamba): a conv over the inner channels, a d_state state per inner channel."""


_RECURRENT_FIELDS: dict[RecurrentKind, tuple[str, ...]] = {
    RecurrentKind.GATED_DELTANET: ("num_k_heads", "num_v_heads", "head_k_dim", "head_v_dim", "conv_kernel"),
    RecurrentKind.KDA: ("num_heads", "head_dim", "conv_kernel"),
    RecurrentKind.LIGHTNING: ("num_heads", "head_dim"),
    RecurrentKind.MAMBA2: ("num_heads", "head_dim", "d_state", "n_groups", "conv_kernel"),
    RecurrentKind.MAMBA: ("intermediate_size", "d_state", "conv_kernel"),
}
"""The fields each kind of mixer takes, all required."""

STATE_DTYPES = {"float32": 4, "bfloat16": 2, "float16": 2}
"""The SSM-state dtypes a config may name for serving engines (vLLM's and SGLang's choices), and
their bytes per value."""


@dataclass(frozen=True, kw_only=True)
class RecurrentState:
    """The mixer of ``recurrent`` (and ``hybrid``) layers: instead of K and V per token it keeps, per
    sequence, a recurrent state and (all but lightning) the last ``conv_kernel`` inputs of its short
    convolution. Shapes as transformers 5.23 holds them (``LinearAttentionLayer``: the conv state is
    ``conv_kernel`` wide, not ``conv_kernel - 1``)."""

    kind: RecurrentKind
    num_heads: int | None = None
    head_dim: int | None = None
    num_k_heads: int | None = None
    num_v_heads: int | None = None
    head_k_dim: int | None = None
    head_v_dim: int | None = None
    d_state: int | None = None
    n_groups: int | None = None
    intermediate_size: int | None = None
    conv_kernel: int | None = None
    ssm_dtype: str | None = None
    """The config's ``mamba_ssm_dtype``: the state dtype SGLang keeps (Qwen3-Next, Qwen3.5, Nemotron-H,
    Falcon-H1) and vLLM keeps for Qwen3.5. transformers ignores it."""
    ssm_cache_dtype: str | None = None
    """The config's ``mamba_ssm_cache_dtype``: the state dtype vLLM keeps for Nemotron-H."""

    def __post_init__(self) -> None:
        for name in ("ssm_dtype", "ssm_cache_dtype"):
            value = getattr(self, name)
            if value is not None and value not in STATE_DTYPES:
                raise ValueError(f"{name}: {value!r} is not one of {', '.join(map(repr, STATE_DTYPES))}")
        try:
            kind = RecurrentKind(self.kind)
        except ValueError:
            raise ValueError(f"kind: {self.kind!r} is not one of "
                             f"{', '.join(repr(str(k)) for k in RecurrentKind)}") from None
        object.__setattr__(self, "kind", kind)
        wanted = _RECURRENT_FIELDS[kind]
        for name in ("num_heads", "head_dim", "num_k_heads", "num_v_heads", "head_k_dim", "head_v_dim",
                     "d_state", "n_groups", "intermediate_size", "conv_kernel"):
            value = getattr(self, name)
            if name in wanted and value is None:
                raise ValueError(f"{name}: required for a {kind} mixer")
            if name not in wanted and value is not None:
                raise ValueError(f"{name}: a {kind} mixer has no {name} (it takes {', '.join(wanted)})")
            if value is not None and (type(value) is not int or not 1 <= value <= MAX_DIM):
                raise ValueError(f"{name}: {value!r} must be an integer from 1 to {MAX_DIM:,}")
        if kind is RecurrentKind.GATED_DELTANET and self.num_v_heads % self.num_k_heads:
            raise ValueError(f"num_k_heads {self.num_k_heads} does not divide num_v_heads {self.num_v_heads}")
        if kind is RecurrentKind.MAMBA2 and self.num_heads % self.n_groups:
            raise ValueError(f"n_groups {self.n_groups} does not divide num_heads {self.num_heads}")

    @property
    def conv_channels(self) -> int | None:
        """Channels of the short convolution (None: lightning has none)."""
        match self.kind:
            case RecurrentKind.GATED_DELTANET:
                return 2 * self.num_k_heads * self.head_k_dim + self.num_v_heads * self.head_v_dim
            case RecurrentKind.KDA:
                return 3 * self.num_heads * self.head_dim
            case RecurrentKind.MAMBA2:
                return self.num_heads * self.head_dim + 2 * self.n_groups * self.d_state
            case RecurrentKind.MAMBA:
                return self.intermediate_size
        return None

    @property
    def variant(self) -> str:
        return _RECURRENT_VARIANT[self.kind]

    def to_dict(self) -> dict[str, Any]:
        dtypes = {k: getattr(self, k) for k in ("ssm_dtype", "ssm_cache_dtype") if getattr(self, k)}
        shape = {k: getattr(self, k) for k in _RECURRENT_FIELDS[self.kind]}
        return {"kind": str(self.kind), **shape, **dtypes}


_RECURRENT_VARIANT = {RecurrentKind.GATED_DELTANET: "GDN", RecurrentKind.KDA: "KDA",
                      RecurrentKind.LIGHTNING: "Lightning", RecurrentKind.MAMBA2: "Mamba2",
                      RecurrentKind.MAMBA: "Mamba"}


Attention = StandardAttention | MlaAttention | CompressedAttention
ATTENTION_KINDS: dict[str, type[Attention]] = {
    "standard": StandardAttention, "mla": MlaAttention, "compressed": CompressedAttention,
}
COMPRESSED_KINDS = (LayerKind.COMPRESSED_SPARSE, LayerKind.HEAVILY_COMPRESSED)


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """One model's architecture.

    Layer pattern: by default every layer is full attention. ``layer_pattern`` repeats from layer 0
    (Gemma-3: five ``sliding`` then one ``full``); ``layer_types`` lists every layer explicitly.
    A sliding layer holds at most ``sliding_window`` tokens, a chunked one at most
    ``attention_chunk_size``.

    Every layer uses ``attention`` unless ``layer_attention`` gives its kind its own shape
    (Gemma-4's full layers: wider heads, fewer KV heads; MiMo-V2-Flash's sliding layers: more KV
    heads). The plan of what each layer caches is built from this in ``plan.py``.
    """

    name: str
    display_name: str
    source: str | None = None
    """URL (or path) of the published config the numbers were read from."""
    architecture: str | None = None
    """The model class the config names (its ``architectures``, e.g. ``Gemma3ForConditionalGeneration``):
    engines that choose rules per architecture read it (SGLang's sliding-window pool)."""
    num_layers: int
    """Attention layers, each with its own cache."""
    sublayers: int = 1
    """Attention layers per decoder layer (LongCat-Flash: 2); pipeline stages split decoder layers."""
    hidden_size: int
    params: int | None = None
    """Total parameter count: the model card's figure, or derived from an imported config."""
    weights_dtype: str | None = None
    """How the published checkpoint stores its weights (``formats.WEIGHT_FORMATS``: bf16,
    fp8-block ...), for ``fit``; None: not said (one format for every weight only)."""
    weights_bytes: int | None = None
    """The checkpoint's weights exactly, where it states them (model.safetensors.index.json's
    metadata.total_size, a GGUF file's tensor table): ``fit`` uses them over params x dtype."""
    default_engine: str | None = None
    """The engine a spec's figures are for unless --engine says otherwise (a GGUF file: llama.cpp)."""
    max_position_embeddings: int | None = None
    mtp_layers: int = 0
    """Multi-token-prediction layers (``num_nextn_predict_layers``): full-attention layers of the
    same attention kind, cached only when an engine runs MTP speculative decoding."""
    attention: Attention
    sliding_window: int | None = None
    attention_chunk_size: int | None = None
    layer_attention: dict[LayerKind, Attention] = field(default_factory=dict)
    layer_pattern: tuple[LayerKind, ...] | None = None
    layer_types: tuple[LayerKind, ...] | None = None
    recurrent: RecurrentState | None = None
    """The mixer of ``recurrent`` and ``hybrid`` layers (linear attention, Mamba)."""
    attention_bias: bool = False
    """Biases on the attention projections: the config's ``attention_bias`` (a family whose layers
    always have them, Qwen2's q/k/v, has them whatever it says). They shape no cache: ``measure``
    builds them."""
    rope: dict[str, Any] | None = None
    """The rotary embedding as the published config sets it (``rotary.py``: rope_type, rope_theta and
    the type's fields), or one per layer kind ({full: ..., sliding: ...}). It shapes no cache:
    ``measure`` builds its layers with it. None: the spec does not say."""
    assumptions: tuple[str, ...] = field(default=())
    """Defaults assumed where an imported config was silent."""

    def __post_init__(self) -> None:
        if not NAME_PATTERN.match(self.name):
            raise ValueError(f"name: {self.name!r} must be lowercase letters, digits, '.', '_', '-'")
        if self.architecture is not None and not ARCHITECTURE_PATTERN.match(self.architecture):
            raise ValueError(f"architecture: {self.architecture!r} is not a model class name")
        _check_positive(num_layers=self.num_layers, sublayers=self.sublayers, hidden_size=self.hidden_size,
                        params=self.params, weights_bytes=self.weights_bytes,
                        max_position_embeddings=self.max_position_embeddings,
                        sliding_window=self.sliding_window, attention_chunk_size=self.attention_chunk_size)
        if self.default_engine is not None:
            from kvcalc.engines import engine_names

            if self.default_engine not in engine_names():
                raise ValueError(f"default_engine: {self.default_engine!r} is not one of "
                                 f"{', '.join(engine_names())}")
        if self.weights_dtype is not None and self.weights_dtype not in WEIGHT_FORMATS:
            raise ValueError(f"weights_dtype: {self.weights_dtype!r} is not one of "
                             f"{', '.join(WEIGHT_FORMATS)}")
        if not isinstance(self.attention_bias, bool):
            raise ValueError(f"attention_bias: {self.attention_bias!r}: expected true or false")
        if type(self.mtp_layers) is not int or not 0 <= self.mtp_layers <= MAX_LAYERS:
            raise ValueError(f"mtp_layers: {self.mtp_layers!r} must be an integer from 0 to {MAX_LAYERS:,}")
        for key in ("layer_pattern", "layer_types"):
            kinds = getattr(self, key)
            if kinds is not None:
                object.__setattr__(self, key, _layer_kinds(key, kinds))
        object.__setattr__(self, "assumptions", tuple(self.assumptions))
        self._check_layers()
        self._check_layer_attention()
        self._check_rope()

    def _check_rope(self) -> None:
        if self.rope is None:
            return
        per_kind = (isinstance(self.rope, dict) and not set(self.rope) <= set(ROPE_FIELDS)
                    and any(isinstance(v, dict) for v in self.rope.values()))
        if per_kind:
            kinds = _layer_kinds("rope", tuple(self.rope))
            missing = [str(k) for k in self.layer_counts
                       if k not in kinds and k not in (*NO_CACHE_KINDS, LayerKind.RECURRENT)]
            if missing:
                raise ValueError(f"rope: no settings for the {', '.join(missing)} layers")
            rope = {str(k): check_settings(v, f"rope.{k}", max_tokens=MAX_TOKENS)
                    for k, v in zip(kinds, self.rope.values(), strict=True)}
        else:
            rope = check_settings(self.rope, max_tokens=MAX_TOKENS)
        object.__setattr__(self, "rope", rope)

    def rope_for(self, kind: LayerKind) -> dict[str, Any] | None:
        """The rope settings of the layers of ``kind`` (None: the spec does not say)."""
        if self.rope is None or "rope_theta" in self.rope:  # one for every layer
            return self.rope
        return self.rope.get(str(kind))

    def _check_layer_attention(self) -> None:
        kinds = {}
        for key, attention in self.layer_attention.items():
            kind = _layer_kinds("layer_attention", (key,))[0]
            if kind in (*NO_CACHE_KINDS, LayerKind.RECURRENT) or not self.layer_counts[kind]:
                raise ValueError(f"layer_attention: {str(key)!r}: no attention layer of this model is {kind}")
            if attention.kind != self.attention.kind:
                raise ValueError(f"layer_attention.{kind}: {attention.kind} attention beside "
                                 f"{self.attention.kind} attention is not modelled")
            kinds[kind] = attention
        object.__setattr__(self, "layer_attention", kinds)

    def attention_for(self, kind: LayerKind) -> Attention:
        """The attention of the layers of ``kind``."""
        return self.layer_attention.get(kind, self.attention)

    @property
    def attentions(self) -> tuple[Attention, ...]:
        """Every distinct attention the layers use, ``attention`` first."""
        return (self.attention, *(a for a in self.layer_attention.values() if a != self.attention))

    def _check_layers(self) -> None:
        if self.num_layers % self.sublayers:
            raise ValueError(f"num_layers {self.num_layers} is not a multiple of sublayers {self.sublayers}")
        if self.layer_pattern is not None and self.layer_types is not None:
            raise ValueError("give layer_pattern or layer_types, not both")
        if self.layer_pattern == ():
            raise ValueError("layer_pattern: must list at least one layer kind")
        if self.layer_types is not None and len(self.layer_types) != self.num_layers:
            raise ValueError(
                f"layer_types lists {len(self.layer_types)} layers but num_layers is "
                f"{self.num_layers}"
            )
        self._check_compressed()
        self._check_recurrent()
        for kind, key in ((LayerKind.SLIDING, "sliding_window"), (LayerKind.CHUNKED, "attention_chunk_size")):
            self._check_span(kind, key)

    def _check_compressed(self) -> None:
        """DeepSeek-V4's attention runs on sliding and compressed layers only, and only it compresses."""
        counts = self.layer_counts
        compressed = sum(counts[k] for k in COMPRESSED_KINDS)
        if isinstance(self.attention, CompressedAttention):
            others = (LayerKind.FULL, LayerKind.CHUNKED, LayerKind.SHARED)
            other = next((k for k in others if counts[k]), None)
            if other is not None:
                key = "layer_types" if self.layer_pattern is None else "layer_pattern"
                given = "" if self.layer_types or self.layer_pattern else " (none given: every layer full)"
                raise ValueError(f"{key}: {counts[other]} layers are {other}{given}, but compressed "
                                 "attention (DeepSeek-V4) has sliding, compressed_sparse and "
                                 "heavily_compressed layers only")
            if self.layer_attention:
                raise ValueError("layer_attention: compressed attention takes one shape for every layer")
        elif compressed:
            kind = next(k for k in COMPRESSED_KINDS if counts[k])
            raise ValueError(f"{counts[kind]} layers are {kind}, which needs attention of kind compressed, "
                             f"not {self.attention.kind}")

    def _check_recurrent(self) -> None:
        """A recurrent mixer where some layer uses it, and only there; beside standard or MLA attention."""
        layers = sum(self.layer_counts[k] for k in STATE_KINDS)
        if layers and self.recurrent is None:
            kind = next(k for k in STATE_KINDS if self.layer_counts[k])
            raise ValueError(f"{self.layer_counts[kind]} layers are {kind} but recurrent (their mixer) is "
                             "not set")
        if self.recurrent is not None and not layers:
            raise ValueError("recurrent is set but no layer is recurrent or hybrid "
                             "(layer_pattern, layer_types)")
        if layers and isinstance(self.attention, CompressedAttention):
            raise ValueError("recurrent layers beside compressed attention (DeepSeek-V4) are not modelled")

    def _check_span(self, kind: LayerKind, key: str) -> None:
        """A sliding (chunked) layer needs its window (chunk), and a window needs a layer. Every layer
        of compressed attention slides: its compressed entries come on top of the window."""
        layers, span = self.layer_counts[kind], getattr(self, key)
        if kind is LayerKind.SLIDING:
            layers += sum(self.layer_counts[k] for k in COMPRESSED_KINDS)
        if layers and span is None:
            raise ValueError(f"{layers} layers are {kind} but {key} is not set")
        if span is not None and not layers:
            raise ValueError(f"{key} is {span} but no layer is {kind} "
                             f"(add layer_pattern: [{kind}] for every layer)")
        positions = self.max_position_embeddings
        if span is not None and positions is not None and span > positions:
            raise ValueError(f"{key} {span:,} exceeds max_position_embeddings {positions:,}: such a "
                             "layer holds every token (list it as full)")

    def span(self, kind: LayerKind) -> int | None:
        """The most tokens a layer of ``kind`` attends to uncompressed: its window or chunk (None:
        every token)."""
        if kind is LayerKind.SLIDING or kind in COMPRESSED_KINDS:
            return self.sliding_window
        return self.attention_chunk_size if kind is LayerKind.CHUNKED else None

    @property
    def layer_kinds(self) -> tuple[LayerKind, ...]:
        """The kind of every layer, index 0 first (MTP layers not included)."""
        if self.layer_types is not None:
            return self.layer_types
        pattern = self.layer_pattern or (LayerKind.FULL,)
        return tuple(pattern[i % len(pattern)] for i in range(self.num_layers))

    @cached_property
    def layer_counts(self) -> Counter[LayerKind]:
        """How many layers of each kind, computed once per spec."""
        return Counter(self.layer_kinds)

    def replace(self, **changes: Any) -> ModelSpec:
        return replace(self, **changes)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        """A spec from plain data (a parsed file). Raises ValueError or TypeError naming the field."""
        layer_attention = {
            kind: _attention(f"layer_attention.{kind}", value)
            for kind, value in (data.get("layer_attention") or {}).items()
        }
        recurrent = data.get("recurrent")
        if recurrent is not None:
            try:
                recurrent = RecurrentState(**recurrent)
            except (TypeError, ValueError) as e:
                raise type(e)(f"recurrent: {e}") from None
        return cls(**{**data, "attention": _attention("attention", data["attention"]),
                      "layer_attention": layer_attention, "recurrent": recurrent})

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-ready data that ``from_dict`` reads back to an equal spec."""
        data = asdict(self)
        data["attention"] = {"kind": self.attention.kind, **data["attention"]}
        data["layer_attention"] = {
            str(kind): {"kind": a.kind, **asdict(a)} for kind, a in self.layer_attention.items()
        }
        data["recurrent"] = None if self.recurrent is None else self.recurrent.to_dict()
        for key, default in (("sublayers", 1), ("layer_attention", {}), ("attention_chunk_size", None),
                             ("architecture", None), ("weights_dtype", None), ("recurrent", None),
                             ("weights_bytes", None), ("default_engine", None), ("rope", None),
                             ("attention_bias", False)):
            if data[key] == default:
                del data[key]
        for key in ("layer_pattern", "layer_types"):
            if data[key] is not None:
                data[key] = [str(k) for k in data[key]]
        data["assumptions"] = list(self.assumptions)
        return data


def _attention(key: str, data: dict[str, Any]) -> Attention:
    fields = dict(data)
    kind = fields.pop("kind")
    try:
        return ATTENTION_KINDS[kind](**fields)
    except (TypeError, ValueError) as e:
        raise type(e)(f"{key}: {e}") from None


def _layer_kinds(key: str, kinds) -> tuple[LayerKind, ...]:
    try:
        return tuple(LayerKind(k) for k in kinds)
    except ValueError:
        bad = next(k for k in kinds if k not in LayerKind.__members__.values())
        names = ", ".join(repr(str(k)) for k in LayerKind)
        raise ValueError(f"{key}: {bad!r} is not one of {names}") from None
