"""A KV cache as a small module: one preallocated, non-persistent buffer per cached tensor.

The same module serves every layout -- K and V per head, the MLA latent and rope key -- so the
layer and the measurement both know exactly which tensors are cache. A sliding-window layer's cache
is a ring of ``window`` slots: position p lives in slot p % window.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TokenCache(nn.Module):
    """Buffers for ``capacity`` tokens, written by absolute token position.

    A width of (heads, dim) is stored head-major, (B, heads, capacity, dim), so that each head's keys
    are one contiguous matrix for the decode matmul; a width of (dim,) is stored (B, capacity, dim).
    """

    def __init__(
        self,
        widths: dict[str, tuple[int, ...]],
        *,
        batch: int,
        capacity: int,
        dtype: torch.dtype,
        device: torch.device | str,
        ring: bool = False,
        dtypes: dict[str, torch.dtype] | None = None,
    ) -> None:
        """``dtypes`` stores some tensors in a format of their own (the DSA indexer's fp8 keys and
        fp32 scales), read back as stored."""
        super().__init__()
        self.names = tuple(widths)
        self.own_dtype = set(dtypes or ())
        self.per_head = {name: len(width) == 2 for name, width in widths.items()}
        self.capacity = capacity
        self.ring = ring
        for name, width in widths.items():
            shape = (batch, width[0], capacity, width[1]) if len(width) == 2 else (batch, capacity, *width)
            own = (dtypes or {}).get(name, dtype)
            self.register_buffer(name, torch.zeros(shape, dtype=own, device=device), persistent=False)
        self.length = 0
        """Tokens written so far (positions 0 .. length - 1)."""

    def write(self, start_pos: int, **tensors: torch.Tensor) -> None:
        """Store tensors (B, S, *width) for positions start_pos .. start_pos + S - 1."""
        seq = next(iter(tensors.values())).shape[1]
        first = max(start_pos, start_pos + seq - self.capacity) if self.ring else start_pos
        if not self.ring and start_pos + seq > self.capacity:
            raise ValueError(f"cache holds {self.capacity} tokens; writing up to {start_pos + seq}")
        positions = torch.arange(first, start_pos + seq, device=self.slot_device)
        slots = positions % self.capacity if self.ring else positions
        for name, value in tensors.items():
            buffer, value = getattr(self, name), value[:, first - start_pos :]
            if self.per_head[name]:
                buffer[:, :, slots] = value.transpose(1, 2).to(buffer.dtype)
            else:
                buffer[:, slots] = value.to(buffer.dtype)
        self.length = max(self.length, start_pos + seq)

    def read(self, dtype: torch.dtype) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Every held token's tensors in ``dtype`` -- (B, H, T, D) per head, (B, T, D) shared --
        and their absolute positions (T,)."""
        held = min(self.length, self.capacity)
        slots = torch.arange(held, device=self.slot_device)
        positions = slots
        if self.ring and self.length > self.capacity:
            oldest = self.length - self.capacity
            positions = oldest + (slots - oldest % self.capacity) % self.capacity
        tensors = {}
        for name in self.names:
            buffer = getattr(self, name)
            view = buffer[:, :, :held] if self.per_head[name] else buffer[:, :held]
            tensors[name] = view if name in self.own_dtype else view.to(dtype)
        return tensors, positions

    def fill(self, tokens: int) -> None:
        """Mark ``tokens`` positions as written, with random contents (for decode benchmarks)."""
        held = min(tokens, self.capacity)
        for name in self.names:
            buffer = getattr(self, name)
            view = buffer[:, :, :held] if self.per_head[name] else buffer[:, :held]
            if view.dtype.is_floating_point and view.element_size() >= 2:
                view.normal_()  # in place: no full-size temporary
            else:
                view.copy_(torch.randn(view.shape, device=view.device))
        self.length = tokens

    @property
    def slot_device(self) -> torch.device:
        return getattr(self, self.names[0]).device

    @property
    def nbytes(self) -> int:
        """Bytes the cache holds: numel x element_size of every buffer."""
        return sum(getattr(self, n).numel() * getattr(self, n).element_size() for n in self.names)


def positions_of(cache: TokenCache | None, start_pos: int, seq: int, device) -> torch.Tensor:
    """Absolute positions of a step's tokens; decoding (start_pos > 0) needs a cache to read."""
    if start_pos and cache is None:
        raise ValueError(f"start_pos {start_pos}: decoding needs allocate_cache() first")
    return torch.arange(start_pos, start_pos + seq, device=device)


def attention_mask(
    q_pos: torch.Tensor, k_pos: torch.Tensor, window: int | None, chunk: int | None = None
) -> torch.Tensor:
    """(S, T) boolean: key t is visible to query s (causal; within ``window`` tokens, self
    included; in the same ``chunk`` -- positions c*chunk .. (c+1)*chunk - 1 -- for chunked local
    attention)."""
    delta = q_pos[:, None] - k_pos[None, :]
    visible = delta >= 0
    if window is not None:
        visible &= delta < window
    if chunk is not None:
        visible &= q_pos[:, None] // chunk == k_pos[None, :] // chunk
    return visible


SCORE_BUDGET = 1 << 26
"""Attention scores computed at once (elements): bounds prefill memory at long contexts."""


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_pos: torch.Tensor,
    k_pos: torch.Tensor,
    *,
    window: int | None = None,
    chunk: int | None = None,
    keep: torch.Tensor | None = None,
    scale: float | None = None,
    sinks: torch.Tensor | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """Masked attention, q (B, S, H, D), k (B, Hk, T, D), v (B, Hk, T, Dv) -> (B, S, H, Dv).

    Query head h reads KV head h // (H / Hk), as ``repeat_interleave`` would pair them. When the
    queries are the keys (a prefill) and no window cuts in, it is one causal flash call. Otherwise
    (decode, windows) each KV head's group of query heads is folded into rows of one matmul -- as
    FlashMLA folds heads -- so K and V are read once, never expanded or upcast; query blocks keep at
    most ``SCORE_BUDGET`` scores alive; the softmax runs in fp32. ``keep`` (B, S, T) narrows each
    query to the keys a sparse-attention indexer chose. ``sinks`` (H,): one more logit per query
    head in the softmax, whose share is dropped (gpt-oss); ``softcap``: scores become
    softcap * tanh(scores / softcap) before the mask (Gemma-2). Both take the explicit path.
    """
    spans = (window is None or window >= q.shape[1]) and (chunk is None or chunk >= q.shape[1])
    plain = keep is None and sinks is None and softcap is None
    if q_pos is k_pos and spans and plain:
        return _causal(q, k, v, scale)
    b, s, h, d = q.shape
    hk = k.shape[1]
    group = h // hk
    if k.shape[-1] == v.shape[-1] and plain and _all_visible(q_pos, k_pos, window, chunk):
        rows = q.reshape(b, s, hk, group, d).permute(0, 2, 3, 1, 4).reshape(b, hk, group * s, d)
        out = _unmasked(rows, k, v, scale)  # (B, Hk, group * s, Dv)
        return out.reshape(b, hk, group, s, -1).permute(0, 3, 1, 2, 4).reshape(b, s, h, -1)
    scale = d**-0.5 if scale is None else scale
    keys = k.transpose(-1, -2)  # (B, Hk, D, T): a column-major view, no copy
    block = max(1, SCORE_BUDGET // max(1, b * h * k.shape[2]))
    outs = []
    for start in range(0, s, block):
        qb = q[:, start : start + block]
        sb = qb.shape[1]
        rows = qb.reshape(b, sb, hk, group, d).permute(0, 2, 3, 1, 4).reshape(b, hk, group * sb, d)
        scores = torch.matmul(rows, keys).float() * scale  # (B, Hk, group * sb, T)
        if softcap is not None:
            scores = torch.tanh(scores / softcap) * softcap
        visible = attention_mask(q_pos[start : start + sb], k_pos, window, chunk).repeat(group, 1)
        if keep is not None:  # (B, sb, T) -> (B, 1, group * sb, T), rows ordered (group, query)
            chosen = keep[:, start : start + sb].unsqueeze(1).expand(b, group, sb, keep.shape[-1])
            visible = visible & chosen.reshape(b, 1, group * sb, keep.shape[-1])
        scores = scores.masked_fill(~visible, float("-inf"))
        if sinks is None:
            probs = scores.softmax(dim=-1).to(v.dtype)
        else:  # rows (group, query) of each KV head: query head hk * group + g's sink, as a last column
            sink = sinks.float().reshape(1, hk, group, 1, 1).expand(b, hk, group, sb, 1)
            probs = torch.cat([scores, sink.reshape(b, hk, group * sb, 1)], dim=-1).softmax(dim=-1)
            probs = probs[..., :-1].to(v.dtype)
        out = torch.matmul(probs, v)  # (B, Hk, group * sb, Dv)
        outs.append(out.reshape(b, hk, group, sb, -1).permute(0, 3, 1, 2, 4).reshape(b, sb, h, -1))
    return torch.cat(outs, dim=1)


ROW_BLOCK = 32
"""Query rows per block of the CPU flash kernel for short queries."""


def _unmasked(rows: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale) -> torch.Tensor:
    """rows (B, Hk, R, D) over k, v (B, Hk, T, D) with no mask: the flash kernel.

    With one shared KV head (MQA, absorbed MLA) all R rows would be one task for the kernel; they
    are cut into blocks of ``ROW_BLOCK`` over a stride-0 view of the same K and V (no copy), so
    every core works -- 2.8x faster decode for DeepSeek-V3 on two cores at 16k tokens.
    """
    b, hk, r, d = rows.shape
    if hk > 1 or r <= ROW_BLOCK:
        return F.scaled_dot_product_attention(rows, k, v, scale=scale)
    blocks = -(-r // ROW_BLOCK)
    padded = F.pad(rows, (0, 0, 0, blocks * ROW_BLOCK - r)).reshape(b, blocks, ROW_BLOCK, d)
    shape = (b, blocks, k.shape[2])
    out = F.scaled_dot_product_attention(
        padded, k.expand(*shape, k.shape[-1]), v.expand(*shape, v.shape[-1]), scale=scale
    )
    return out.reshape(b, 1, blocks * ROW_BLOCK, -1)[:, :, :r]


def _all_visible(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int | None, chunk: int | None) -> bool:
    """Every key visible to every query: the usual decode step over a cache (or a full ring)."""
    newest_key, oldest_query = int(k_pos.max()), int(q_pos.min())
    if chunk is not None and int(k_pos.min()) // chunk != int(q_pos.max()) // chunk:
        return False
    return newest_key <= oldest_query and (window is None or int(q_pos.max() - k_pos.min()) < window)


def _causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None) -> torch.Tensor:
    """Prefill: queries and keys are the same tokens, so a plain causal mask; the flash kernel
    wants V as wide as K, so V is zero-padded (as vLLM does for MLA prefill) and cut back after."""
    dv, dk = v.shape[-1], k.shape[-1]
    if dv < dk:
        v = F.pad(v, (0, dk - dv))
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k, v, is_causal=True, scale=scale, enable_gqa=True
    )
    return out.transpose(1, 2)[..., :dv]
