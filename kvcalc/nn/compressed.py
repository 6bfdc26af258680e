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
  A lightning indexer (``indexer.py``) compresses its own keys the same way and picks the
  ``index_topk`` entries each query attends to. HCA: one series, no indexer.

Simplified where the cache is unaffected: a dense output projection (V4's is grouped and low-rank),
no attention sinks, plain RoPE. Every buffer is preallocated for ``max_tokens``, as the ideal
engine counts them: the window, floor(max_tokens / rate) entries (and indexer keys), room for the
longest open window (min(max_tokens, rate - 1) rows) and CSA's last window once one can close.
"""

from __future__ import annotations

import torch
from torch import nn

from kvcalc.nn.cache import TokenCache, attend, positions_of
from kvcalc.nn.indexer import Indexer, quantise
from kvcalc.nn.rope import apply_rope, rope_angles

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
            self.index_state = layer.index_compressor.state(batch, max_tokens, dtype)
            self.parts += [self.index, self.index_state]

    @property
    def nbytes(self) -> int:
        return sum(part.nbytes for part in self.parts)


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
        eps: float = 1e-6,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.num_heads, self.head_dim, self.rope = num_heads, head_dim, rope_dim
        self.window, self.rate = window, rate
        self.rope_theta = rope_theta
        kw = {"bias": False, "device": device, "dtype": dtype}
        self.q_a_proj = nn.Linear(hidden_size, q_lora_rank, **kw)
        self.q_a_norm = nn.RMSNorm(q_lora_rank, eps=eps, device=device, dtype=dtype)
        self.q_b_proj = nn.Linear(q_lora_rank, num_heads * head_dim, **kw)
        self.kv_proj = nn.Linear(hidden_size, head_dim, **kw)
        self.kv_norm = nn.RMSNorm(head_dim, eps=eps, device=device, dtype=dtype)
        self.o_proj = nn.Linear(num_heads * head_dim, hidden_size, **kw)
        csa = index_n_heads is not None
        self.compressor = None if rate is None else Compressor(hidden_size, head_dim, rate, csa, eps=eps,
                                                               device=device, dtype=dtype)
        self.indexer = self.index_compressor = None
        if csa:
            if rate is None or index_head_dim is None:
                raise ValueError("the indexer runs on compressed sparse layers: give rate and index_head_dim")
            self.index_rope = min(rope_dim, index_head_dim) // 2 * 2
            self.indexer = Indexer(hidden_size, q_lora_rank, index_n_heads, index_head_dim, self.index_rope,
                                   index_topk, device=device, dtype=dtype)
            self.index_compressor = Compressor(hidden_size, index_head_dim, rate, True, eps=eps,
                                               device=device, dtype=dtype)
        self.cache: LayerCache | None = None

    def allocate_cache(self, batch: int, max_tokens: int, dtype: torch.dtype) -> LayerCache:
        self.cache = LayerCache(self, batch, max_tokens, dtype)
        return self.cache

    def forward(self, x: torch.Tensor, start_pos: int = 0) -> torch.Tensor:
        """x (B, S, hidden) at positions start_pos .. start_pos + S - 1 -> (B, S, hidden)."""
        b, s, _ = x.shape
        positions = positions_of(self.cache, start_pos, s, x.device)
        cache = self.cache or LayerCache(self, b, s, x.dtype)  # no cache: this call's tokens only
        cos, sin = rope_angles(positions, self.rope, self.rope_theta)
        q_latent = self.q_a_norm(self.q_a_proj(x))
        q = self._rotate(self.q_b_proj(q_latent).view(b, s, self.num_heads, self.head_dim), cos, sin)
        kv = self._rotate(self.kv_norm(self.kv_proj(x))[:, :, None], cos, sin)[:, :, 0]  # (B, S, D)
        if start_pos and s > 1:
            raise ValueError("the window ring takes one token at a time after prefill")
        cache.window.write(start_pos, kv=kv)
        keys, k_pos = (kv, positions) if start_pos == 0 else self._held(cache.window, x.dtype)
        keep = (positions[:, None] - k_pos[None, :] < self.window).expand(b, s, -1)
        in_window = keys.shape[1]
        if self.compressor is not None:
            entries, e_pos, chosen = self._entries(x, q_latent, positions, cache)
            keys, k_pos = torch.cat([keys, entries], dim=1), torch.cat([k_pos, e_pos])
            keep = torch.cat([keep, chosen], dim=-1)
        out = self._attend(q, keys, positions, k_pos, keep, in_window)  # (B, S, H, D)
        out = self._rotate(out, cos, -sin)  # V carried the keys' rotation: undo it at the query's position
        return self.o_proj(out.reshape(b, s, self.num_heads * self.head_dim))

    def _attend(self, q, keys, q_pos, k_pos, keep, in_window: int) -> torch.Tensor:
        """q (B, S, H, D) over one K = V head, keys (B, T, D): the first ``in_window`` from the window,
        then the entries. A block of queries reads only the window keys within its reach and the
        entries, so a prefill costs S x (block + window + entries) scores, not S x (S + entries)."""
        scale = self.head_dim**-0.5
        if q.shape[1] <= QUERY_BLOCK:
            k = keys[:, None]
            return attend(q, k, k, q_pos, k_pos, keep=keep, scale=scale)
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
                               scale=scale))
        return torch.cat(outs, dim=1)

    def _rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """RoPE on the last ``rope`` values of each head: x (B, S, H, D)."""
        nope, pe = x.split([self.head_dim - self.rope, self.rope], dim=-1)
        return torch.cat([nope, apply_rope(pe, cos, sin, interleaved=False)], dim=-1)

    @staticmethod
    def _held(cache: TokenCache, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        held, pos = cache.read(dtype)
        return held["kv"], pos

    def _entries(self, x, q_latent, positions, cache: LayerCache):
        """Every entry made so far (B, E, D), the position from which each is seen ((w + 1) rate - 1),
        and which of them each query attends to (B, S, E): the indexer's choice on CSA layers."""
        b, s = x.shape[:2]
        first = cache.entries.length
        new = self.compressor(x, cache.state)
        if new.shape[1]:
            at = torch.arange(first, first + new.shape[1], device=x.device) * self.rate
            new = self._rotate(new[:, :, None], *rope_angles(at, self.rope, self.rope_theta))[:, :, 0]
            cache.entries.write(first, kv=new)
        entries, index = self._held(cache.entries, x.dtype)
        e_pos = (index + 1) * self.rate - 1
        if self.indexer is None:
            return entries, e_pos, torch.ones(b, s, entries.shape[1], dtype=torch.bool, device=x.device)
        new_keys = self.index_compressor(x, cache.index_state)
        if new_keys.shape[1]:
            at = torch.arange(first, first + new_keys.shape[1], device=x.device) * self.rate
            cos, sin = rope_angles(at, self.index_rope, self.rope_theta)
            pe, rest = new_keys.split([self.index_rope, new_keys.shape[-1] - self.index_rope], dim=-1)
            pe = apply_rope(pe[:, :, None], cos, sin, interleaved=False)[:, :, 0]
            cache.index.write(first, **quantise(torch.cat([pe, rest], dim=-1)))
        stored, _ = cache.index.read(x.dtype)
        cos, sin = rope_angles(positions, self.index_rope, self.rope_theta)
        if entries.shape[1] == 0:
            return entries, e_pos, torch.zeros(b, s, 0, dtype=torch.bool, device=x.device)
        return entries, e_pos, self.indexer.select(x, q_latent, stored, cos, sin, positions, e_pos)
