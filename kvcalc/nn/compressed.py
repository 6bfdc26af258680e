"""DeepSeek-V4's attention (transformers' ``DeepseekV4Attention``; the V4 paper, section 2.3), in
plain PyTorch: one K = V head per token on a sliding window, and on compressed layers one entry per
``rate`` tokens beside it.

- Every layer keeps the last ``window`` tokens' K = V (``head_dim`` values, rotary slice last) in a
  ring, and its queries see them.
- A compressed layer's compressor projects each token to kv and gate rows; when ``rate`` tokens
  close a window, the gate (plus a learnt bias per slot) is softmaxed over the window and weighs the
  kv rows into one entry, normed and rotated to the window's first position. Until then the open
  window's rows wait in a buffer. An entry is seen by the queries from its last token on.
- CSA (``overlap``): rows are twice as wide, two series; entry w pools the first series of window
  w - 1 with the second of window w, so the compressor keeps the last closed window's first series.
  Its lightning indexer (``compressor.indexer``, transformers' ``DeepseekV4Indexer``) compresses its
  own keys the same way, caches them in fp8 as DSA's indexer does (``indexer.py``), and picks the
  ``index_topk`` entries each query attends to. HCA: one series, no indexer.

As transformers computes it: queries RMS-normed per head without a weight, interleaved RoPE on the
last ``rope_dim`` values of every head, entry and indexer key (the layer's one ``rope``: the config's
``main`` rope on sliding layers, ``compress`` -- its own base, YaRN -- on compressed ones), the
rotation undone on the output, per-head attention ``sinks`` and the grouped low-rank output
projection (``o_groups``, ``o_lora_rank``). Without ``o_groups`` the output projection is one dense
matrix and without ``sinks`` there are none: neither touches the cache. Every buffer is preallocated
for ``max_tokens``, as the ideal engine counts them: the window, floor(max_tokens / rate) entries
(and indexer keys), room for the longest open window (min(max_tokens, rate - 1) rows) and CSA's
last window once one can close.
"""

from __future__ import annotations

import torch
from torch import nn

from kvcalc.nn.cache import TokenCache, attend, positions_of
from kvcalc.nn.indexer import Fp8Keys, choose, dequantise, quantise
from kvcalc.nn.rope import Rope, apply_rope, config_dict
from kvcalc.rotary import rope_parameters

QUERY_BLOCK = 256
"""Queries per block of a long prefill."""


class CompressorState(nn.Module):
    """A compressor's open window (kv and gate rows, ``series`` x ``width`` each) and, with overlap,
    the last closed window's first series."""

    def __init__(self, batch: int, max_tokens: int, rate: int, width: int, overlap: bool,
                 dtype: torch.dtype, device) -> None:
        super().__init__()
        series = 2 if overlap else 1
        room = min(max_tokens, rate - 1)
        self.names = ["open_kv", "open_gate"]
        for name in self.names:
            self.register_buffer(name, torch.zeros(batch, room, series * width, dtype=dtype, device=device),
                                 persistent=False)
        if overlap and max_tokens >= rate:
            self.names += ["last_kv", "last_gate"]
            for name in self.names[2:]:
                self.register_buffer(name, torch.zeros(batch, rate, width, dtype=dtype, device=device),
                                     persistent=False)
        self.open = 0
        """Rows of the open window held."""
        self.has_last = False

    @property
    def nbytes(self) -> int:
        return sum(getattr(self, n).numel() * getattr(self, n).element_size() for n in self.names)


class Compressor(nn.Module):
    """Turns every ``rate`` tokens into one entry of ``width`` values (CSA's ``overlap``: pooled
    over two overlapping windows)."""

    def __init__(self, hidden_size: int, width: int, rate: int, overlap: bool, *, eps: float = 1e-6,
                 device=None, dtype=None) -> None:
        super().__init__()
        self.width, self.rate, self.overlap = width, rate, overlap
        series = 2 if overlap else 1
        kw = {"bias": False, "device": device, "dtype": dtype}
        self.kv_proj = nn.Linear(hidden_size, series * width, **kw)
        self.gate_proj = nn.Linear(hidden_size, series * width, **kw)
        self.position_bias = nn.Parameter(torch.zeros(rate, series * width, device=device, dtype=dtype))
        self.kv_norm = nn.RMSNorm(width, eps=eps, device=device, dtype=dtype)
        self.indexer: CompressedIndexer | None = None
        """CSA's indexer, here as in transformers' state dict (``compressor.indexer.*``)."""

    def state(self, batch: int, max_tokens: int, dtype: torch.dtype) -> CompressorState:
        return CompressorState(batch, max_tokens, self.rate, self.width, self.overlap, dtype,
                               self.kv_proj.weight.device)

    def forward(self, x: torch.Tensor, state: CompressorState) -> torch.Tensor:
        """The entries (B, n, width) the windows closed by x's tokens make, the state updated."""
        b, r, w = x.shape[0], self.rate, self.width
        kv = torch.cat([state.open_kv[:, : state.open].to(x.dtype), self.kv_proj(x)], dim=1)
        gate = torch.cat([state.open_gate[:, : state.open].to(x.dtype), self.gate_proj(x)], dim=1)
        n = kv.shape[1] // r
        left = kv.shape[1] - n * r
        state.open_kv[:, :left] = kv[:, n * r :]
        state.open_gate[:, :left] = gate[:, n * r :]
        state.open = left
        if n == 0:
            return kv.new_zeros(b, 0, w)
        kv = kv[:, : n * r].view(b, n, r, -1)
        gate = gate[:, : n * r].view(b, n, r, -1) + self.position_bias
        if self.overlap:  # entry j: the first series of window j - 1, then the second of window j
            first_kv, first_gate = kv[..., :w], gate[..., :w]
            prev_kv = torch.zeros_like(first_kv)
            prev_gate = torch.full_like(first_gate, float("-inf"))
            prev_kv[:, 1:], prev_gate[:, 1:] = first_kv[:, :-1], first_gate[:, :-1]
            if state.has_last:
                prev_kv[:, 0], prev_gate[:, 0] = state.last_kv.to(x.dtype), state.last_gate.to(x.dtype)
            state.last_kv.copy_(first_kv[:, -1])
            state.last_gate.copy_(first_gate[:, -1])
            state.has_last = True
            kv = torch.cat([prev_kv, kv[..., w:]], dim=2)  # (B, n, 2r, w)
            gate = torch.cat([prev_gate, gate[..., w:]], dim=2)
        weights = gate.float().softmax(dim=2).to(kv.dtype)
        return self.kv_norm((kv * weights).sum(dim=2))


class Scorer(nn.Module):
    """The indexer's weight per head and query (transformers' ``DeepseekV4IndexerScorer``)."""

    def __init__(self, hidden_size: int, n_heads: int, *, device=None, dtype=None) -> None:
        super().__init__()
        self.weights_proj = nn.Linear(hidden_size, n_heads, bias=False, device=device, dtype=dtype)


class CompressedIndexer(Fp8Keys, Compressor):
    """CSA's lightning indexer (transformers' ``DeepseekV4Indexer``): an overlapping compressor of its
    own at ``head_dim``, whose entries are its keys -- cached as DSA's, fp8 and a scale per 128 --
    scored by ``n_heads`` queries from the query latent (:func:`kvcalc.nn.indexer.choose`)."""

    def __init__(self, hidden_size: int, q_lora_rank: int, n_heads: int, head_dim: int, rate: int, topk: int,
                 *, eps: float = 1e-6, device=None, dtype=None) -> None:
        super().__init__(hidden_size, head_dim, rate, True, eps=eps, device=device, dtype=dtype)
        self.n_heads, self.head_dim, self.topk = n_heads, head_dim, topk
        self.q_b_proj = nn.Linear(q_lora_rank, n_heads * head_dim, bias=False, device=device, dtype=dtype)
        self.scorer = Scorer(hidden_size, n_heads, device=device, dtype=dtype)

    def select(self, x: torch.Tensor, q_latent: torch.Tensor, stored: dict[str, torch.Tensor],
               cos: torch.Tensor, sin: torch.Tensor, q_pos: torch.Tensor, e_pos: torch.Tensor
               ) -> torch.Tensor:
        """(B, S, E) boolean: the ``topk`` entries each query (at q_pos, angles cos / sin) attends to."""
        b, s, _ = x.shape
        q = rotate_tail(self.q_b_proj(q_latent).view(b, s, self.n_heads, self.head_dim), cos, sin)
        return choose(q, dequantise(stored), self.scorer.weights_proj(x), q_pos, e_pos, self.topk)


class GroupedLinear(nn.Module):
    """V4's grouped output projection (transformers' ``DeepseekV4GroupedLinear``): the heads' outputs
    cut into ``groups`` equal groups, each projected by its own block of ``weight``."""

    def __init__(self, in_features: int, out_per_group: int, groups: int, *, device=None, dtype=None) -> None:
        super().__init__()
        self.groups = groups
        self.weight = nn.Parameter(torch.empty(groups * out_per_group, in_features // groups, device=device,
                                               dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, S, in_features) -> (B, S, groups * out_per_group)."""
        w = self.weight.view(self.groups, -1, self.weight.shape[-1])  # (G, out, in / G)
        return torch.einsum("bsgi,goi->bsgo", x.view(*x.shape[:-1], self.groups, -1), w).flatten(-2)


def rotate_tail(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Interleaved RoPE on the last 2 * (cos's width) values of each head of x (B, S, H, D)."""
    rope = 2 * cos.shape[-1]
    nope, pe = x.split([x.shape[-1] - rope, rope], dim=-1)
    return torch.cat([nope, apply_rope(pe, cos, sin, interleaved=True)], dim=-1)


class LayerCache(nn.Module):
    """One layer's buffers: the window ring, the entries, the indexer's keys, compressor state."""

    def __init__(self, layer: CompressedAttentionLayer, batch: int, max_tokens: int,
                 dtype: torch.dtype) -> None:
        super().__init__()
        device = layer.kv_proj.weight.device
        self.window = TokenCache({"kv": (layer.head_dim,)}, batch=batch, dtype=dtype, device=device,
                                 capacity=min(max_tokens, layer.window), ring=True)
        self.parts: list[nn.Module] = [self.window]
        if layer.compressor is None:
            return
        entries = max_tokens // layer.rate
        self.entries = TokenCache({"kv": (layer.head_dim,)}, batch=batch, capacity=entries, dtype=dtype,
                                  device=device)
        self.state = layer.compressor.state(batch, max_tokens, dtype)
        self.parts += [self.entries, self.state]
        if layer.indexer is not None:
            self.index = TokenCache(layer.indexer.widths, batch=batch, capacity=entries, dtype=dtype,
                                    device=device, dtypes=layer.indexer.dtypes)
            self.index_state = layer.indexer.state(batch, max_tokens, dtype)
            self.parts += [self.index, self.index_state]

    @property
    def nbytes(self) -> int:
        return sum(part.nbytes for part in self.parts)


LAYER_TYPES = {"sliding_attention": None, "compressed_sparse_attention": "csa",
               "heavily_compressed_attention": "hca"}
"""transformers' ``DeepseekV4Config.layer_types``."""


class CompressedAttentionLayer(nn.Module):
    """One DeepSeek-V4 layer: sliding only (``rate`` None), HCA, or CSA (``index_n_heads`` given)."""

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        head_dim: int,
        rope_dim: int,
        q_lora_rank: int,
        window: int,
        rate: int | None = None,
        *,
        index_n_heads: int | None = None,
        index_head_dim: int | None = None,
        index_topk: int = 512,
        rope_theta: float = 10000.0,
        rope: Rope | None = None,
        o_groups: int | None = None,
        o_lora_rank: int | None = None,
        sinks: bool = False,
        eps: float = 1e-6,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.num_heads, self.head_dim, self.rope = num_heads, head_dim, rope_dim
        self.window, self.rate, self.eps = window, rate, eps
        self.rotary = rope or Rope(rope_dim, rope_theta, interleaved=True)
        if self.rotary.dim != rope_dim:
            raise ValueError(f"rope dim {self.rotary.dim}: the layer rotates rope_dim {rope_dim}")
        self.rope_theta = self.rotary.theta
        kw = {"bias": False, "device": device, "dtype": dtype}
        self.q_a_proj = nn.Linear(hidden_size, q_lora_rank, **kw)
        self.q_a_norm = nn.RMSNorm(q_lora_rank, eps=eps, device=device, dtype=dtype)
        self.q_b_proj = nn.Linear(q_lora_rank, num_heads * head_dim, **kw)
        self.kv_proj = nn.Linear(hidden_size, head_dim, **kw)
        self.kv_norm = nn.RMSNorm(head_dim, eps=eps, device=device, dtype=dtype)
        if o_groups is None:
            self.o_proj = nn.Linear(num_heads * head_dim, hidden_size, **kw)
        else:
            if o_lora_rank is None:
                raise ValueError("a grouped output projection needs o_lora_rank")
            self.o_a_proj = GroupedLinear(num_heads * head_dim, o_lora_rank, o_groups, device=device,
                                          dtype=dtype)
            self.o_b_proj = nn.Linear(o_groups * o_lora_rank, hidden_size, **kw)
        self.sinks = nn.Parameter(torch.zeros(num_heads, device=device, dtype=dtype)) if sinks else None
        csa = index_n_heads is not None
        self.compressor = None if rate is None else Compressor(hidden_size, head_dim, rate, csa, eps=eps,
                                                               device=device, dtype=dtype)
        if csa:
            if rate is None or index_head_dim is None:
                raise ValueError("the indexer runs on compressed sparse layers: give rate and index_head_dim")
            if index_head_dim < rope_dim:
                raise ValueError(f"index_head_dim {index_head_dim}: the indexer rotates rope_dim {rope_dim}")
            self.compressor.indexer = CompressedIndexer(hidden_size, q_lora_rank, index_n_heads,
                                                        index_head_dim, rate, index_topk, eps=eps,
                                                        device=device, dtype=dtype)
        self.cache: LayerCache | None = None

    @classmethod
    def from_config(cls, config, layer_idx: int, *, device=None, dtype=None) -> CompressedAttentionLayer:
        """Layer ``layer_idx`` of a transformers ``DeepseekV4Config`` (or its ``to_dict()``): its
        ``layer_types`` entry, ``compress_rates``, the ``main`` or ``compress`` entry of
        ``rope_parameters`` (rotating head_dim x partial_rotary_factor values), ``sliding_window``,
        the grouped output projection, sinks and ``rms_norm_eps``, as ``DeepseekV4Attention`` builds."""
        c = config_dict(config)
        layer_types = c.get("layer_types") or []
        if not 0 <= layer_idx < len(layer_types):
            raise ValueError(f"layer_idx {layer_idx}: layer_types has {len(layer_types)} entries")
        layer_type = layer_types[layer_idx]
        if layer_type not in LAYER_TYPES:
            raise ValueError(f"layer_types[{layer_idx}] {layer_type!r}: expected one of "
                             f"{', '.join(LAYER_TYPES)}")
        kind = LAYER_TYPES[layer_type]
        params = rope_parameters(c, "compress" if kind else "main")
        rope = Rope.from_parameters(params, c["head_dim"], interleaved=True,
                                    max_position_embeddings=c.get("max_position_embeddings"))
        index = ({"index_n_heads": c["index_n_heads"], "index_head_dim": c["index_head_dim"],
                  "index_topk": c.get("index_topk", 512)} if kind == "csa" else {})
        return cls(c["hidden_size"], c["num_attention_heads"], c["head_dim"], rope.dim, c["q_lora_rank"],
                   c["sliding_window"], c["compress_rates"][layer_type] if kind else None, rope=rope,
                   o_groups=c["o_groups"], o_lora_rank=c["o_lora_rank"], sinks=True,
                   eps=c.get("rms_norm_eps", 1e-6), **index, device=device, dtype=dtype)

    def load_reference(self, module: nn.Module) -> CompressedAttentionLayer:
        """Load ``DeepseekV4Attention``'s weights: the names are the same, loaded strictly."""
        self.load_state_dict(module.state_dict(), strict=True)
        return self

    @property
    def indexer(self) -> CompressedIndexer | None:
        return None if self.compressor is None else self.compressor.indexer

    def allocate_cache(self, batch: int, max_tokens: int, dtype: torch.dtype) -> LayerCache:
        self.cache = LayerCache(self, batch, max_tokens, dtype)
        return self.cache

    def forward(self, x: torch.Tensor, start_pos: int = 0) -> torch.Tensor:
        """x (B, S, hidden) at positions start_pos .. start_pos + S - 1 -> (B, S, hidden)."""
        b, s, _ = x.shape
        positions = positions_of(self.cache, start_pos, s, x.device)
        cache = self.cache or LayerCache(self, b, s, x.dtype)  # no cache: this call's tokens only
        cos, sin = self.rotary.angles(positions)  # (S, rope / 2)
        q_latent = self.q_a_norm(self.q_a_proj(x))
        q = self.q_b_proj(q_latent).view(b, s, self.num_heads, self.head_dim)
        q = q * torch.rsqrt(q.float().square().mean(-1, keepdim=True) + self.eps).to(q.dtype)  # no weight
        q = rotate_tail(q, cos, sin)
        kv = rotate_tail(self.kv_norm(self.kv_proj(x))[:, :, None], cos, sin)[:, :, 0]  # (B, S, D)
        if start_pos and s > 1:
            raise ValueError("the window ring takes one token at a time after prefill")
        cache.window.write(start_pos, kv=kv)
        keys, k_pos = (kv, positions) if start_pos == 0 else self._held(cache.window, x.dtype)
        keep = (positions[:, None] - k_pos[None, :] < self.window).expand(b, s, -1)
        in_window = keys.shape[1]
        if self.compressor is not None:
            entries, e_pos, chosen = self._entries(x, q_latent, positions, cos, sin, cache)
            keys, k_pos = torch.cat([keys, entries], dim=1), torch.cat([k_pos, e_pos])
            keep = torch.cat([keep, chosen], dim=-1)
        out = self._attend(q, keys, positions, k_pos, keep, in_window)  # (B, S, H, D)
        out = rotate_tail(out, cos, -sin)  # V carried the keys' rotation: undo it at the query's position
        out = out.reshape(b, s, self.num_heads * self.head_dim)
        return self._output(out)

    def _output(self, out: torch.Tensor) -> torch.Tensor:
        """(B, S, H D) -> (B, S, hidden): dense, or V4's grouped low-rank projection."""
        if hasattr(self, "o_proj"):
            return self.o_proj(out)
        return self.o_b_proj(self.o_a_proj(out))

    def _attend(self, q, keys, q_pos, k_pos, keep, in_window: int) -> torch.Tensor:
        """q (B, S, H, D) over one K = V head, keys (B, T, D): the first ``in_window`` from the window,
        then the entries. A block of queries reads only the window keys within its reach and the
        entries, so a prefill costs S x (block + window + entries) scores, not S x (S + entries)."""
        scale = self.head_dim**-0.5
        if q.shape[1] <= QUERY_BLOCK:
            k = keys[:, None]
            return attend(q, k, k, q_pos, k_pos, keep=keep, scale=scale, sinks=self.sinks)
        entries = torch.arange(in_window, keys.shape[1], device=keys.device)
        window_pos = k_pos[:in_window]
        outs = []
        for start in range(0, q.shape[1], QUERY_BLOCK):
            qp = q_pos[start : start + QUERY_BLOCK]
            reach = (window_pos > qp.min() - self.window) & (window_pos <= qp.max())
            index = torch.cat([torch.nonzero(reach).squeeze(-1), entries])
            k = keys[:, index][:, None]
            block_keep = keep[:, start : start + QUERY_BLOCK][:, :, index]
            outs.append(attend(q[:, start : start + QUERY_BLOCK], k, k, qp, k_pos[index], keep=block_keep,
                               scale=scale, sinks=self.sinks))
        return torch.cat(outs, dim=1)

    @staticmethod
    def _held(cache: TokenCache, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        held, pos = cache.read(dtype)
        return held["kv"], pos

    def _entries(self, x, q_latent, positions, cos, sin, cache: LayerCache):
        """Every entry made so far (B, E, D), the position from which each is seen ((w + 1) rate - 1),
        and which of them each query attends to (B, S, E): the indexer's choice on CSA layers."""
        b, s = x.shape[:2]
        first = cache.entries.length
        new = self.compressor(x, cache.state)
        at = torch.arange(first, first + new.shape[1], device=x.device) * self.rate  # each window's start
        if new.shape[1]:
            cache.entries.write(first, kv=rotate_tail(new[:, :, None], *self.rotary.angles(at))[:, :, 0])
        entries, index = self._held(cache.entries, x.dtype)
        e_pos = (index + 1) * self.rate - 1
        if self.indexer is None:
            return entries, e_pos, torch.ones(b, s, entries.shape[1], dtype=torch.bool, device=x.device)
        new_keys = self.indexer(x, cache.index_state)  # the indexer's own compressor
        if new_keys.shape[1]:
            keys = rotate_tail(new_keys[:, :, None], *self.rotary.angles(at))[:, :, 0]
            cache.index.write(first, **quantise(keys))
        stored, _ = cache.index.read(x.dtype)
        if entries.shape[1] == 0:
            return entries, e_pos, torch.zeros(b, s, 0, dtype=torch.bool, device=x.device)
        return entries, e_pos, self.indexer.select(x, q_latent, stored, cos, sin, positions, e_pos)
