"""Engine profiles: how each serving engine lays out, pages and windows the same model's cache.

A profile is data. ``--engine NAME[@VARIANT]`` picks one; without ``--engine`` the figures are the
engine-neutral ideal (exact token counts, no pages, the layout ``--layout`` names).

Sources, per profile:
- vLLM ``vllm/v1/kv_cache_interface.py``: a page is ``block_size`` tokens; ``MLAAttentionSpec``
  caches one 576-wide "KV head" (656 B per token with ``fp8_ds_mla``); ``SlidingWindowSpec`` keeps the
  last ``sliding_window - 1`` tokens plus the new one, in whole pages. Block size 16 by default, 64
  with the FlashMLA backend (the default for MLA on Hopper), 128 with CUTLASS MLA.
  ``VLLM_MLA_DISABLE=1`` caches per-head K and V with V padded to the K width.
- SGLang ``mem_cache/memory_pool.py`` (``MLATokenToKVPool``: 576 per token): page size 1 (FlashInfer,
  Triton, FA3), 64 (FlashMLA), 128 (CUTLASS MLA). Its hybrid SWA architectures keep sliding layers
  in an SWA pool sized at 0.8 of the full one (``WindowRule.POOL_SHARE``); the others keep every
  token on every layer (docs/facts/sglang-0.5.23-pools.md).
- vLLM's admission: a request reserves more blocks than it holds for sliding and chunked layers
  (``analytic.admission_cells``; ``max_num_batched_tokens``, ``in_flight_batches``).
- llama.cpp ``src/llama-kv-cache.cpp`` / ``llama-kv-cache-iswa.cpp``: the context is padded to 256
  cells; SWA layers get ``pad(min(n_ctx, n_swa * n_seq + n_ubatch), 256)`` cells, n_ubatch 512. MLA:
  per-head K and V before April 2025; K 576 + V 512 (the latent again) from April 2025; K 576 only
  (V a view of K) since January 2026.
- transformers ``cache_utils.py``: ``DynamicCache`` grows per token; sliding layers keep the last
  ``sliding_window - 1`` tokens. DeepSeek MLA is cached decompressed up to 5.14, latent from 5.15.
- DeepSeek-V4: transformers 5.23's ``DeepseekV4HCACache`` / ``DeepseekV4CSACache``; vLLM 0.33's
  ``models/deepseek_v4/`` specs, packed by ``v1/core/kv_cache_planning.py`` (``packing.py``).
- DeepSeek-V3 ``inference/model.py``: ``attn_impl="absorb"`` caches the latent and rope key,
  ``"naive"`` per-head K and V; bf16, preallocated for ``max_seq_len`` (here: the requested length).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum
from fractions import Fraction

from kvcalc.errors import OptionError


class MlaCache(StrEnum):
    """What an MLA model's cache holds per token and layer."""

    LATENT = "latent"  # latent d_c + rope key d_R
    LATENT_KV = "latent-kv"  # K = latent + rope key, V = the latent again (llama.cpp 2025)
    DECOMPRESSED = "decompressed"  # per-head K (d_nope + d_R) and V (d_v)
    DECOMPRESSED_PADDED = "decompressed-padded"  # ... with V padded to the K width (vLLM, MLA off)


class IndexerKeys(StrEnum):
    """How a DSA model's indexer keys are stored (DeepSeek-V3.2)."""

    FP8_SCALED = "fp8-scaled"  # fp8 values + one fp32 scale per 128: DeepSeek's own format
    CACHE_DTYPE = "cache-dtype"  # in the cache's dtype, like K and V: transformers


class CompressedCache(StrEnum):
    """How an engine holds DeepSeek-V4's cache (``plan._compressed_parts``)."""

    IDEAL = "ideal"
    """One K = V entry per token of the window; compressed entries; room for each compressor's
    longest open window and CSA's last closed window, all in the cache dtype (the DSA indexer key in
    the engine's indexer format)."""
    VLLM = "vllm"
    """vLLM 0.33 (FlashMLA, Hopper): fp8_ds_mla entries, fp32 compressor state in sliding windows,
    all packed into blocks shared by every layer (``packing.py``)."""
    TRANSFORMERS = "transformers"
    """transformers 5.23's DeepseekV4HCACache / DeepseekV4CSACache: as the ideal, but layers that
    only slide keep K and V as two tensors (DynamicSlidingWindowLayer), and the CSA compressors'
    last-window gates are fp32 (the fp32 position bias is added before they are kept)."""


COMPRESSED_RULES = {
    CompressedCache.IDEAL: "DeepSeek-V4: one K = V tensor per layer; compressed entries; room for each "
    "compressor's longest open window (R - 1 rows of kv and gate) and CSA's last window, in the cache dtype",
    CompressedCache.VLLM: "DeepSeek-V4 (vLLM 0.33, FlashMLA): fp8_ds_mla entries of 584 B (448 fp8 + 64 "
    "bf16 RoPE values + 8 scale bytes) for the window (pages of 64 tokens) and the compressed entries (pages "
    "of 256 tokens: 256 / R entries), indexer keys of 132 B, compressor state as fp32 kv and score rows of a "
    "window of 8 (CSA) or 128 (HCA) tokens in pages of 4 or 8; every page padded to a multiple of 576 B; "
    "specs with the same block and window packed into groups whose pages share one block id, each block as "
    "wide as the widest group (v1/core/kv_cache_planning.py _get_packed_kv_cache_groups)",
    CompressedCache.TRANSFORMERS: "DeepSeek-V4 (DeepseekV4HCACache / DeepseekV4CSACache): layers that only "
    "slide keep K and V as two tensors, the others one K = V; each compressor keeps its open window's "
    "kv and gate rows (seq mod R), CSA's also the last closed window's, its gates in fp32",
}


class WindowRule(StrEnum):
    """How many token slots a sliding-window layer holds."""

    EXACT = "exact"  # min(seq_len, window)
    WINDOW_MINUS_ONE = "window-1"  # min(seq_len, window - 1): transformers' DynamicCache
    PAGE_SPAN = "page-span"  # the pages spanned by the last `window` tokens: vLLM
    UBATCH = "ubatch"  # pad(min(context, window * sequences + 512), 256): llama.cpp
    CHUNK_PAGES = "chunk-pages"  # the most pages one chunk spans: vLLM's chunked local attention
    ALL = "all"  # every token: the engine keeps no window apart (SGLang outside its hybrid SWA list)
    POOL_SHARE = "pool-share"  # swa_full_tokens_ratio of every token: SGLang's SWA pool, sized off the full


SWA_FULL_TOKENS_RATIO = 0.8
"""SGLang's swa_full_tokens_ratio (srt/arg_groups/fields/schedule.py): its SWA pool holds this many
tokens for each token of its full pool, whatever the window."""
SWA_RATIO = Fraction(4, 5)
"""The same ratio, exact, for a sequence's share of the SWA pool."""


@dataclass(frozen=True)
class Engine:
    name: str
    mla_cache: MlaCache | None
    """None: the engine-neutral ideal, where ``--layout`` decides."""
    page_tokens: int
    """Tokens per page; a sequence's cache is rounded up to whole pages (1 = unpaged)."""
    window_rule: WindowRule
    formats: tuple[str, ...] | None
    """Storage formats the engine offers (None: any)."""
    source: str
    context_pad: int = 1
    """The whole context (all sequences' cells) is rounded up to a multiple of this."""
    mla_only: bool = False
    mla_rule: str = ""
    """How it caches MLA, in words (shown for MLA models only)."""
    rules: tuple[str, ...] = ()
    """What else the profile does, in words, for ``show --explain``."""
    indexer_keys: IndexerKeys | None = IndexerKeys.FP8_SCALED
    """DSA models' indexer keys; None: the engine does not run DeepSeek Sparse Attention."""
    dsa_page: int | None = None
    """The page a DSA model runs with, whatever the variant (the indexer's kernels need it)."""
    dsa_formats: tuple[str, ...] | None = None
    """The formats a DSA model's latent is stored in (None: ``formats``)."""
    shares_layers: bool = False
    """Whether layers that reuse another layer's cache (Gemma-3n) are known to hold none here."""
    chunk_rule: WindowRule | None = None
    """How many token slots a chunked-attention layer holds, as a window rule over the chunk
    (None: how the engine caches chunked attention is not modelled)."""
    kind_shapes: bool = False
    """Whether layers of different kinds may cache different shapes here (Gemma-4's wider full
    layers, MiMo-V2-Flash's sliding ones) as far as kvcalc knows."""
    compressed: CompressedCache | None = None
    """How it holds DeepSeek-V4's cache; None: not modelled, ``compressed_refusal`` says why."""
    compressed_refusal: str = "how it caches DeepSeek-V4's compressed attention is not modelled"
    hybrid_swa: frozenset[str] | None = None
    """The architectures whose sliding layers the engine holds apart (SGLang's hybrid SWA pool); every
    other architecture's sliding layers hold every token. None: the engine does not choose by
    architecture."""
    recurrent: bool = False
    """Whether kvcalc models how it holds linear-attention and Mamba state (``plan.state_parts``)."""
    needs_attention: bool = False
    """transformers 5.23 cannot run a cached forward without an attention layer (``Cache.get_seq_length``
    raises): a model whose every layer is recurrent is refused."""
    state_slots: bool = False
    """SGLang: a recurrent layer's state lives in a pool of per-request slots of its own (MambaPool),
    sized before the KV pool (``analytic._sglang_state``, ``fit.sglang_pools``)."""
    block_pool: bool = False
    """vLLM: layers form KV-cache groups of equal size whose pages share one pool of block ids, and a
    request is admitted on the blocks it may reserve (``analytic.admission_cells``), not those it
    holds. Layers whose pages differ in bytes get their block sizes scaled or pages padded to one
    size (v1/core/kv_cache_planning.py ``unify_kv_cache_spec_page_size``): not modelled."""

    def check(self, kv_dtype: str, is_mla: bool, has_indexer: bool = False, shared: bool = False,
              chunked: bool = False, kind_shapes: bool = False, compressed: bool = False,
              recurrent: bool = False, attends: bool = True) -> None:
        if self.formats is not None and kv_dtype not in self.formats:
            raise OptionError(
                f"--kv-dtype {kv_dtype}: {self.name} caches in {', '.join(self.formats)} only"
            )
        if recurrent and not self.recurrent:
            raise OptionError(f"--engine {self.name}: how it holds the recurrent state of linear-attention "
                              "or Mamba layers is not modelled yet")
        if not attends and self.needs_attention:
            raise OptionError(f"--engine {self.name}: transformers cannot cache a model without an attention "
                              "layer (Cache.get_seq_length raises on the first forward)")
        if compressed:
            self._check_compressed()
        elif self.mla_only and not is_mla:
            raise OptionError(f"--engine {self.name}: runs DeepSeek MLA models only")
        if has_indexer:
            self._check_dsa(kv_dtype)
        elif kv_dtype == "nvfp4_ds_mla":
            raise OptionError(f"--kv-dtype {kv_dtype}: vLLM serves it with FlashMLA's sparse backend only, "
                              "on SM100: DeepSeek Sparse Attention models (DeepSeek-V3.2, GLM-5)")
        if chunked and self.chunk_rule is None and self.hybrid_swa is None:  # SGLang: ``for_architecture``
            raise OptionError(f"--engine {self.name}: how it caches chunked local attention "
                              "(attention_chunk_size) is not modelled")
        if kind_shapes and not self.kind_shapes:
            raise OptionError(f"--engine {self.name}: how it caches layers whose shape differs by kind "
                              "(layer_attention) is not modelled")
        if shared and not self.shares_layers:
            raise OptionError(f"--engine {self.name}: how it caches layers that share another layer's "
                              "cache (num_kv_shared_layers) is not modelled")

    def for_architecture(self, architecture: str | None, windowed: bool) -> Engine:
        """This profile for a model of ``architecture`` with sliding or chunked layers (``windowed``):
        SGLang keeps a window apart only for the architectures it lists."""
        if self.hybrid_swa is None or not windowed:
            return self
        if architecture is None:
            raise OptionError(f"--engine {self.name}: it keeps a sliding window apart only for the "
                              "architectures it lists (srt/configs/model_config.py is_hybrid_swa_model); "
                              "this spec names none: give its `architecture` (the config's architectures)")
        if architecture in self.hybrid_swa:
            return replace(self, window_rule=WindowRule.POOL_SHARE, chunk_rule=WindowRule.POOL_SHARE, rules=(
                *self.rules, f"{architecture} is a hybrid SWA model (srt/configs/model_config.py "
                "is_hybrid_swa_model): its sliding and chunked layers live in an SWA pool sized at "
                f"swa_full_tokens_ratio {SWA_FULL_TOKENS_RATIO} of the full pool's tokens, whatever the "
                "window (model_executor/pool_configurator.py HybridSWAPoolConfigurator), so each token a "
                f"sequence holds in the full pool costs {SWA_FULL_TOKENS_RATIO} of a token on those layers: "
                "ceil(0.8 x tokens) rows. What a sequence holds there at run time varies (its window, up to "
                "128 decode tokens more, and its prompt's last window until it ends; srt/mem_cache/common.py "
                "free_swa_out_of_window_slots), but the pool is set aside whatever it holds"))
        return replace(self, window_rule=WindowRule.ALL, chunk_rule=WindowRule.ALL, rules=(
            *self.rules, f"{architecture} is not in its hybrid SWA list (srt/configs/model_config.py "
            "is_hybrid_swa_model): one KV pool for every layer, sliding layers hold every token"))

    def _check_compressed(self) -> None:
        if self.compressed is None:
            raise OptionError(f"--engine {self.name}: {self.compressed_refusal} (DeepSeek-V4)")
        if self.page_tokens != 1 and self.compressed is not CompressedCache.VLLM:  # vLLM's V4 pages its own
            raise OptionError(f"--block-size {self.page_tokens}: how pages hold DeepSeek-V4's compressed "
                              "entries and compressor state is not modelled")

    def _check_dsa(self, kv_dtype: str) -> None:
        if self.indexer_keys is None:
            raise OptionError(f"--engine {self.name}: does not run DeepSeek Sparse Attention "
                              "(the DSA indexer)")
        if self.dsa_formats is None or kv_dtype in self.dsa_formats:
            return
        if kv_dtype.startswith("fp8"):
            raise OptionError(
                f"--kv-dtype {kv_dtype}: {self.name} stores a DSA model's fp8 latent as fp8_ds_mla "
                "(656 B) on Hopper and as plain fp8 (576 B) on Blackwell; kvcalc models the first: "
                "--kv-dtype fp8_ds_mla"
            )
        raise OptionError(f"--kv-dtype {kv_dtype}: {self.name} stores a DSA model's latent in "
                          f"{', '.join(self.dsa_formats)} only")

    def for_dsa(self, block_size: int | None) -> Engine:
        """This profile for a DSA model: its indexer's page, and what the indexer caches."""
        if self.dsa_page is None:
            return self
        if block_size is not None and block_size != self.dsa_page:
            raise OptionError(f"--block-size {block_size}: {self.name} runs DSA models with pages of "
                              f"{self.dsa_page} tokens (its indexer kernels take no other)")
        rules = tuple(r for r in self.rules if not r.startswith("pages of"))  # the variant's own page
        return replace(self, page_tokens=self.dsa_page, rules=(
            f"DSA: pages of {self.dsa_page} tokens (the indexer's kernels), latent and indexer keys "
            "in one KV-cache group",
            "DSA indexer keys: 128 fp8 values + one fp32 scale per 128 = 132 B per token and layer, "
            "whatever --kv-dtype; replicated on every TP rank like the latent",
            *rules,
        ))


_VLLM_FORMATS = ("bf16", "fp16", "fp32", "fp8", "fp8_e4m3", "fp8_e5m2", "fp8_ds_mla", "nvfp4_ds_mla")
_SGLANG_FORMATS = ("bf16", "fp16", "fp32", "fp8", "fp8_e4m3", "fp8_e5m2", "fp8_ds_mla")
_LLAMA_CPP_FORMATS = ("fp32", "fp16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1")
_TRANSFORMERS_FORMATS = ("fp32", "bf16", "fp16")

IDEAL = Engine(
    name="ideal",
    recurrent=True,
    compressed=CompressedCache.IDEAL,
    chunk_rule=WindowRule.EXACT,
    kind_shapes=True,
    shares_layers=True,
    mla_cache=None,
    page_tokens=1,
    window_rule=WindowRule.EXACT,
    formats=None,
    source="KV-CACHE-FACTS section 1: exact elements, no paging",
)


def _vllm(variant: str, page: int, mla_cache: MlaCache, rule: str, dsa: bool = True) -> Engine:
    """vLLM runs DSA (DeepSeek-V3.2) on its sparse MLA backends only, pages of 64, latent in bf16,
    fp16, fp8_ds_mla or, on SM100, nvfp4_ds_mla (models/deepseek_v32/attention.py,
    v1/attention/backends/mla/indexer.py, flashmla_sparse.py).
    A layer with ``kv_sharing_target_layer_name`` (Gemma-3n) gets no cache spec and no memory
    (v1/worker/gpu_model_runner.py ``get_kv_cache_spec``). Chunked local attention (Llama-4, the
    hybrid KV-cache manager on by default): ``ChunkedLocalAttentionManager`` frees the pages before
    the current chunk (v1/core/single_type_kv_cache_manager.py)."""
    return Engine(
        recurrent=True,
        compressed=CompressedCache.VLLM,
        shares_layers=True,
        chunk_rule=WindowRule.CHUNK_PAGES,
        kind_shapes=True,
        block_pool=True,
        indexer_keys=IndexerKeys.FP8_SCALED if dsa else None,
        dsa_page=64,
        dsa_formats=("bf16", "fp16", "fp8_ds_mla", "nvfp4_ds_mla"),
        name=f"vllm@{variant}",
        mla_cache=mla_cache,
        page_tokens=page,
        window_rule=WindowRule.PAGE_SPAN,
        formats=_VLLM_FORMATS,
        source="vllm/v1/kv_cache_interface.py (FullAttentionSpec, MLAAttentionSpec, SlidingWindowSpec)",
        mla_rule=rule,
        rules=(
            f"pages of {page} tokens: each sequence rounded up to whole pages",
            "sliding layers keep the pages spanning the last `window` tokens",
            "chunked layers keep the pages of the current chunk: counted at their most, one whole "
            "chunk (a prefill step briefly holds the chunk + the step's tokens; with "
            "--disable-hybrid-kv-cache-manager or EAGLE they hold every token)",
            "layers of different kinds form KV-cache groups of equal size, the thinner kinds padded, all "
            "drawing block ids from one pool (v1/core/kv_cache_planning.py "
            "_get_kv_cache_groups_uniform_page_size)",
            "admission reserves per request, in every group: full layers cdiv(seq, page) pages, sliding "
            "cdiv(min(window - 1 + in-flight, seq), page) + 1, chunked cdiv(min(chunk + in-flight, seq), "
            "page); in-flight = 2 x max_num_batched_tokens (async scheduling) -- request_bytes "
            "(v1/kv_cache_interface.py max_admission_blocks_per_request, v1/core/kv_cache_utils.py "
            "get_max_concurrency_for_kv_cache_config)",
        ),
    )


SGLANG_HYBRID_SWA = frozenset({
    "GptOssForCausalLM", "GraniteSWAForCausalLM", "GraniteMoeSWAForCausalLM", "IQuestQ1ForCausalLM",
    "Llama4ForConditionalGeneration", "DeepseekV4ForCausalLM", "MiMoV2ForCausalLM", "MiMoV2FlashForCausalLM",
    "Step3p5ForCausalLM", "Step3p7ForConditionalGeneration", "Gemma4ForCausalLM",
    "Gemma4ForConditionalGeneration", "Gemma4UnifiedForConditionalGeneration", "BeamForCausalLM",
    "LagunaForCausalLM", "MellumForCausalLM", "MuseGlimmerForCausalLM", "MuseGlimmerForConditionalGeneration",
    "InklingForConditionalGeneration", "UnlimitedOCRForCausalLM",
})
"""SGLang 0.5.23's hybrid SWA architectures (srt/configs/model_config.py ``is_hybrid_swa_model``):
only these get a pool of their own for sliding layers. Gemma-2/3/3n are not among them (and
model_overrides/gemma2_gemma3.py turns hybrid SWA memory off for them besides)."""


def _sglang(variant: str, page: int) -> Engine:
    """SGLang's DSATokenToKVPool: pages forced to 64, latent in bf16 or (Hopper, fp8_e4m3) the
    656-B packing, indexer keys 132 B (mem_cache/memory_pool.py, mem_cache/index_key_cache.py).
    Gemma-3n's shared layers still get buffers there (num_effective_layers) and its sliding layers
    hold every token (hybrid SWA memory off): not modelled, so refused. Layers of different shapes
    get pools of their own widths (MHATokenToKVPool: head_num, head_dim, v_head_dim per pool).
    Hybrid SWA architectures (``for_architecture``) keep sliding and chunked layers in an SWA pool
    sized off the full one; facts in docs/facts/sglang-0.5.23-pools.md."""
    return Engine(
        hybrid_swa=SGLANG_HYBRID_SWA,
        compressed_refusal="SGLang keeps DeepSeek-V4's sliding-window pages in its radix tree, freed or "
        "evicted at run time, in a pool sized at swa_full_tokens_ratio 0.1 of the full one "
        "(mem_cache/deepseek_v4_memory_pool.py, model_overrides/deepseek_v4.py): what one sequence holds "
        "there is no formula kvcalc can state exactly",
        kind_shapes=True,
        recurrent=True,
        state_slots=True,
        dsa_page=64,
        dsa_formats=("bf16", "fp8_ds_mla"),
        name=f"sglang@{variant}",
        mla_cache=MlaCache.LATENT,
        page_tokens=page,
        window_rule=WindowRule.EXACT,
        formats=_SGLANG_FORMATS,
        source="sglang/srt/mem_cache/memory_pool.py (MHATokenToKVPool, MLATokenToKVPool)",
        mla_rule="MLA: the 576-wide latent + rope key per token",
        rules=(f"pages of {page} token{'s' * (page > 1)}",),
    )


def _llama_cpp(era: str, mla_cache: MlaCache, rule: str) -> Engine:
    """Gemma-3n's shared layers get no K/V tensors (``n_layer_kv_from_start``; llama-kv-cache.cpp
    skips layers without ``has_kv`` and maps them to the layer they reuse)."""
    return Engine(
        compressed_refusal="how llama.cpp caches DeepSeek-V4 (LLM_ARCH_DEEPSEEK4) is not modelled",
        shares_layers=True,
        chunk_rule=WindowRule.UBATCH,
        indexer_keys=None,
        name=f"llama.cpp@{era}",
        mla_cache=mla_cache,
        page_tokens=1,
        window_rule=WindowRule.UBATCH,
        formats=_LLAMA_CPP_FORMATS,
        context_pad=256,
        source="llama.cpp src/llama-kv-cache.cpp, src/llama-kv-cache-iswa.cpp",
        mla_rule=rule,
        rules=(
            "one cache for all sequences, padded to 256 cells (flash attention)",
            "SWA layers: pad(min(context, window x sequences + 512), 256) cells",
        ),
    )


def _transformers(version: str, mla_cache: MlaCache, modern: bool) -> Engine:
    """``version`` 5.15 stands for 5.15 and later (``modern``), checked against 5.23's real cache:
    DSA indexer keys in the model dtype; a layer whose kv_sharing_mode is "reuse" is a
    ``DummyLayer``, holding nothing; a chunked layer is a ``DynamicSlidingWindowLayer`` of the
    chunk (the last chunk - 1 tokens, the mask doing the chunking); per-layer shapes as each
    layer's attention builds them. None of it is modelled for 5.14."""
    return Engine(
        recurrent=modern,
        needs_attention=True,
        compressed=CompressedCache.TRANSFORMERS if modern else None,
        compressed_refusal="kvcalc models DeepSeek-V4 as transformers 5.23 caches it: --engine transformers",
        indexer_keys=IndexerKeys.CACHE_DTYPE if modern else None,
        shares_layers=modern,
        chunk_rule=WindowRule.WINDOW_MINUS_ONE if modern else None,
        kind_shapes=modern,
        name=f"transformers@{version}",
        mla_cache=mla_cache,
        page_tokens=1,
        window_rule=WindowRule.WINDOW_MINUS_ONE,
        formats=_TRANSFORMERS_FORMATS,
        source="transformers cache_utils.py (DynamicCache, DynamicSlidingWindowLayer)",
        mla_rule=f"MLA cached {mla_cache} (transformers {version})",
        rules=(
            "DynamicCache: no pages, grows one token at a time",
            "sliding layers keep the last window - 1 tokens; chunked layers the last chunk - 1",
        ),
    )


def _reference(mode: str, mla_cache: MlaCache, indexer: IndexerKeys | None) -> Engine:
    return Engine(
        compressed_refusal="DeepSeek-V3's inference/model.py does not run DeepSeek-V4",
        indexer_keys=indexer,
        name=f"reference@{mode}",
        mla_cache=mla_cache,
        page_tokens=1,
        window_rule=WindowRule.EXACT,
        formats=("bf16",),
        mla_only=True,
        source="DeepSeek-V3 inference/model.py (MLA, attn_impl)",
        mla_rule=f'attn_impl="{mode}": MLA cached {mla_cache}',
        rules=(
            "bf16 buffers preallocated for max_seq_len (taken as --seq) x max_batch_size",
        ),
    )


DEFAULT_BATCHED_TOKENS = 8192
"""``vllm serve``'s max_num_batched_tokens on a GPU of 70 to 160 GiB other than the A100 (H100, H200;
engine/arg_utils.py ``get_batch_defaults``)."""


def vllm_batched_tokens(gpu_name: str, gpu_mem_bytes: int) -> int:
    """``vllm serve``'s default max_num_batched_tokens on a GPU (engine/arg_utils.py
    ``get_batch_defaults``, OPENAI_API_SERVER): 2,048 from 160 GiB, 8,192 from 70 GiB unless an A100,
    2,048 below."""
    gib = 1 << 30
    if gpu_mem_bytes >= 160 * gib:
        return 2048
    if gpu_mem_bytes >= 70 * gib and "a100" not in gpu_name.lower():
        return DEFAULT_BATCHED_TOKENS
    return 2048


def in_flight_batches(pp: int) -> int:
    """Batches vLLM keeps scheduled but not yet settled (config/vllm.py ``max_concurrent_batches``):
    2 with async scheduling (its default) on one stage; pp + 1 across pipeline stages (Model
    Runner V2, the default)."""
    return 2 if pp == 1 else pp + 1


ENGINES: dict[str, Engine] = {
    e.name: e
    for e in [
        _vllm("flashmla", 64, MlaCache.LATENT, "MLA: one 576-wide KV head (FlashMLA backend)"),
        _vllm("default", 16, MlaCache.LATENT, "MLA: one 576-wide KV head"),
        _vllm("cutlass-mla", 128, MlaCache.LATENT, "MLA: one 576-wide KV head (CUTLASS MLA)", dsa=False),
        _vllm(
            "no-mla",
            16,
            MlaCache.DECOMPRESSED_PADDED,
            "VLLM_MLA_DISABLE=1: per-head K and V, V padded to the K width",
            dsa=False,
        ),
        _sglang("default", 1),
        _sglang("flashmla", 64),
        _sglang("cutlass-mla", 128),
        _llama_cpp("2026", MlaCache.LATENT, "MLA: K = latent + rope key (576), V a view of K"),
        _llama_cpp("2025", MlaCache.LATENT_KV, "MLA: K = latent + rope key (576), V = latent (512)"),
        _llama_cpp("2024", MlaCache.DECOMPRESSED, "MLA: per-head K and V (before April 2025)"),
        _transformers("5.15", MlaCache.LATENT, modern=True),
        _transformers("5.14", MlaCache.DECOMPRESSED, modern=False),
        # DeepSeek-V3.2-Exp inference/model.py: the indexer's k_cache in fp8 + k_scale_cache fp32 per
        # 128; the MLA part always latent (no naive mode).
        _reference("absorb", MlaCache.LATENT, IndexerKeys.FP8_SCALED),
        _reference("naive", MlaCache.DECOMPRESSED, None),
    ]
}

DEFAULT_VARIANT = {
    "vllm": "default",
    "sglang": "default",
    "llama.cpp": "2026",
    "transformers": "5.15",
    "reference": "absorb",
}
"""``--engine vllm`` means ``vllm@default`` and so on. vLLM's default for MLA models is
``vllm@flashmla`` (see ``get_engine``)."""


def engine_names() -> list[str]:
    return [*DEFAULT_VARIANT, *ENGINES]


def get_engine(name: str | None, *, is_mla: bool = False, block_size: int | None = None) -> Engine:
    """The profile for ``--engine`` (None: the ideal), with ``--block-size`` applied."""
    if name is None:
        engine = IDEAL
    else:
        key = name.lower()
        if key == "vllm" and is_mla:
            key = "vllm@flashmla"  # vLLM picks FlashMLA for MLA models on Hopper
        elif key in DEFAULT_VARIANT:
            key = f"{key}@{DEFAULT_VARIANT[key]}"
        if key not in ENGINES:
            raise OptionError(
                f"--engine: unknown engine {name!r}; choose one of {', '.join(engine_names())}"
            )
        engine = ENGINES[key]
    if block_size is None:
        return engine
    if block_size < 1:
        raise OptionError(f"--block-size: {block_size} must be at least 1")
    rules = (*engine.rules, f"--block-size {block_size}: pages of {block_size} tokens")
    return Engine(**{**engine.__dict__, "page_tokens": block_size, "rules": rules})
