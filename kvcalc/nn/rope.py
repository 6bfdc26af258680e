"""Rotary position embeddings as models define them: both layouts, partial rotary, and the
frequency scalings of transformers' ``modeling_rope_utils.py`` (v5.23): default, ``linear``,
``dynamic`` (NTK), ``yarn`` and ``llama3``.

- half-split (Llama, ``rotate_half``): dimension i pairs with i + d/2;
- interleaved (DeepSeek's reference ``apply_rotary_emb`` on a complex view, transformers'
  ``rope_interleave``): dimension 2i pairs with 2i + 1.

A config's rope settings live in ``rope_parameters`` (transformers >= 5) or in ``rope_theta`` plus
``rope_scaling`` (older configs, whose ``type`` key is the old name of ``rope_type``);
``kvcalc.rotary.rope_parameters`` reads either into one dict, and :meth:`Rope.from_parameters` turns it into
the frequencies and the attention factor.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch


def rope_angles(positions: torch.Tensor, dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of each position's angles: (S,) -> two (S, dim / 2) float32 tensors."""
    inv_freq = theta ** (-torch.arange(0, dim, 2, device=positions.device, dtype=torch.float32) / dim)
    angles = positions.to(torch.float32)[:, None] * inv_freq[None, :]  # (S, dim/2)
    return angles.cos(), angles.sin()


def apply_rope(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, interleaved: bool
) -> torch.Tensor:
    """Rotate ``x`` (B, S, H, D) by per-position angles (S, D/2); returns x's dtype."""
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]  # (1, S, 1, D/2)
    xf = x.to(torch.float32)
    if interleaved:
        x1, x2 = xf[..., 0::2], xf[..., 1::2]
        out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)
    else:
        half = x.shape[-1] // 2
        x1, x2 = xf[..., :half], xf[..., half:]
        out = torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return out.to(x.dtype)


def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    """YaRN's attention temperature: 0.1 * mscale * ln(factor) + 1, or 1 when not extending."""
    return 0.1 * mscale * math.log(factor) + 1.0 if factor > 1 else 1.0


def softmax_scale(qk_head_dim: int, *, yarn_factor: float = 1.0, mscale: float = 1.0) -> float:
    """1 / sqrt(qk_head_dim), times mscale² under YaRN (DeepSeek-V3: factor 40, mscale 1.0)."""
    return qk_head_dim**-0.5 * yarn_mscale(yarn_factor, mscale) ** 2


def config_dict(config: Any) -> dict[str, Any]:
    """A transformers config as a plain dict: a ``PretrainedConfig`` by ``to_dict()``, a dict as is."""
    return dict(config) if isinstance(config, Mapping) else config.to_dict()


@dataclass(frozen=True)
class Rope:
    """The rotary embedding of one layer: ``dim`` rotated values per head (the first ``dim`` of
    each head when rotary is partial), base ``theta``, and ``scaling`` -- the ``rope_type`` and its
    fields exactly as a config's ``rope_parameters`` gives them.

    ``max_position_embeddings`` is the config's: ``dynamic`` grows its base past it, and ``yarn``
    derives a missing ``factor`` from it. ``dynamic`` is computed from the current step's largest
    position (transformers keeps the largest seen; the same for a prefill followed by decode).
    """

    dim: int
    theta: float = 10000.0
    interleaved: bool = False
    scaling: Mapping[str, Any] = field(default_factory=dict)
    max_position_embeddings: int | None = None

    @classmethod
    def from_parameters(cls, params: Mapping[str, Any], head_dim: int, *, interleaved: bool = False,
                        max_position_embeddings: int | None = None) -> Rope:
        """From :func:`rope_parameters`' dict; ``partial_rotary_factor`` rotates int(head_dim * f)."""
        dim = int(head_dim * params.get("partial_rotary_factor", 1.0))
        return cls(dim, float(params["rope_theta"]), interleaved, dict(params), max_position_embeddings)

    @property
    def rope_type(self) -> str:
        return self.scaling.get("rope_type", "default")

    def _field(self, name: str) -> Any:
        if self.scaling.get(name) is None:
            raise ValueError(f"rope_type {self.rope_type!r} needs rope_parameters.{name}")
        return self.scaling[name]

    def _factor(self) -> float:
        factor = self.scaling.get("factor")
        if factor is None and self.rope_type == "yarn":  # DeepSeek-V3's rule
            return self._max_positions() / self._field("original_max_position_embeddings")
        return self._field("factor")

    def _max_positions(self) -> int:
        if self.max_position_embeddings is None:
            raise ValueError(f"rope_type {self.rope_type!r} needs max_position_embeddings")
        return self.max_position_embeddings

    def inv_freq(self, seq_len: int | None = None, device=None) -> torch.Tensor:
        """(dim / 2,) float32 inverse frequencies; ``seq_len`` (tokens so far) matters to dynamic only."""
        exponents = torch.arange(0, self.dim, 2, dtype=torch.int64, device=device).float() / self.dim
        base = self.theta
        if self.rope_type == "dynamic":  # NTK: the base grows once the sequence passes the trained length
            trained, factor = self._max_positions(), self._factor()
            longest = max(seq_len or 0, trained)
            base = base * (factor * longest / trained - (factor - 1)) ** (self.dim / (self.dim - 2))
        inv_freq = 1.0 / base**exponents
        if self.rope_type == "linear":
            return inv_freq / self._factor()
        if self.rope_type == "yarn":
            return self._yarn(inv_freq)
        if self.rope_type == "llama3":
            return self._llama3(inv_freq)
        return inv_freq

    def _yarn(self, inv_freq: torch.Tensor) -> torch.Tensor:
        """YaRN (arXiv 2309.00071, section 3.2): interpolate the slow dimensions by ``factor``, keep
        the fast ones, ramp linearly between the dimensions turning beta_fast and beta_slow times
        over ``original_max_position_embeddings``."""
        original = self._field("original_max_position_embeddings")
        beta_fast, beta_slow = self.scaling.get("beta_fast") or 32, self.scaling.get("beta_slow") or 1

        def dim_of(rotations: float) -> float:  # the dimension that turns ``rotations`` times
            return self.dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(self.theta))

        low, high = dim_of(beta_fast), dim_of(beta_slow)
        if self.scaling.get("truncate", True):
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, self.dim - 1)
        if low == high:
            high += 0.001  # as transformers: no zero-width ramp
        dims = torch.arange(self.dim // 2, dtype=torch.float32, device=inv_freq.device)
        keep = 1 - ((dims - low) / (high - low)).clamp(0, 1)  # 1: extrapolate (fast dims), 0: interpolate
        return inv_freq / self._factor() * (1 - keep) + inv_freq * keep

    def _llama3(self, inv_freq: torch.Tensor) -> torch.Tensor:
        """Llama 3.1: wavelengths longer than original / low_freq_factor are divided by ``factor``,
        shorter than original / high_freq_factor kept, and smoothly blended between."""
        factor, original = self._factor(), self._field("original_max_position_embeddings")
        low, high = self._field("low_freq_factor"), self._field("high_freq_factor")
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > original / low, inv_freq / factor, inv_freq)
        smooth = (original / wavelen - low) / (high - low)
        blended = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= original / high) & (wavelen <= original / low)
        return torch.where(medium, blended, scaled)

    @property
    def attention_factor(self) -> float:
        """The factor on cos and sin (so on q·k, squared): YaRN's mscale, 1 for the others.
        ``attention_factor`` if given; else mscale(factor, mscale) / mscale(factor, mscale_all_dim)
        when both are set (DeepSeek), else mscale(factor)."""
        if self.rope_type != "yarn":
            return 1.0
        if self.scaling.get("attention_factor") is not None:
            return float(self.scaling["attention_factor"])
        factor = self._factor()
        mscale, all_dim = self.scaling.get("mscale"), self.scaling.get("mscale_all_dim")
        if mscale and all_dim:
            return yarn_mscale(factor, mscale) / yarn_mscale(factor, all_dim)
        return yarn_mscale(factor)

    def angles(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin (S, dim / 2) float32 of positions (S,), times the attention factor."""
        # only dynamic reads the length: skip the device sync for the others
        seq_len = int(positions.max()) + 1 if self.rope_type == "dynamic" and positions.numel() else None
        inv_freq = self.inv_freq(seq_len, device=positions.device)
        angles = positions.to(torch.float32)[:, None] * inv_freq[None, :]  # (S, dim/2)
        return angles.cos() * self.attention_factor, angles.sin() * self.attention_factor

    def rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """RoPE on the first ``dim`` values of each head of x (B, S, H, D); the rest pass through."""
        if self.dim == x.shape[-1]:
            return apply_rope(x, cos, sin, interleaved=self.interleaved)
        rot, rest = x.split([self.dim, x.shape[-1] - self.dim], dim=-1)
        return torch.cat([apply_rope(rot, cos, sin, interleaved=self.interleaved), rest], dim=-1)
