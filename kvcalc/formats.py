"""Storage formats of a cached value, as exact byte rules.

Every format stores values in blocks along one token's row: ``block_values`` values take
``block_bytes`` bytes, and a row is rounded up to whole blocks once. Plain formats have blocks of
one value. Sources: llama.cpp ``ggml-common.h`` (``block_q8_0`` = fp16 scale + 32 int8 = 34 B;
``block_q4_0`` 18 B, ``q4_1`` 20 B, ``q5_0`` 22 B, ``q5_1`` 24 B, all of 32 values).

``fp8_ds_mla`` is FlashMLA's packed MLA cache (also vLLM's and SGLang's ``fp8_ds_mla``): per token and
layer, 512 fp8 latent values with one fp32 scale per 128 of them, then the 64-value rope key kept in
bf16 -- 512 + 4 x 4 + 64 x 2 = 656 bytes. It exists only for that MLA shape. vLLM's ``nvfp4_ds_mla``
(v1/attention/backends/mla/flashmla_sparse.py; SM100 only, DeepSeek-V3.2's shape): 512 e2m1 latent
values packed two per byte, one fp8 scale per 16 of them, and the rope key in fp8 -- 256 + 32 + 64 =
352 bytes. ``nvfp4`` is NVIDIA's plain block format: 16 e2m1 values and one fp8 scale, 9 bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from kvcalc.errors import OptionError


@dataclass(frozen=True)
class StorageFormat:
    name: str
    block_values: int
    block_bytes: int
    description: str

    def row_bytes(self, values: int) -> int:
        """Bytes of one row of ``values`` cached values, rounded up to whole blocks."""
        return self.blocks(values) * self.block_bytes

    def blocks(self, values: int) -> int:
        return -(-values // self.block_values)

    @property
    def is_blocked(self) -> bool:
        return self.block_values > 1


@dataclass(frozen=True)
class PackedMlaFormat:
    """A format that packs the MLA latent and rope key differently (``fp8_ds_mla``)."""

    name: str
    kv_lora_rank: int
    qk_rope_head_dim: int
    latent_value_bits: int
    scale_group: int
    scale_bytes: int
    rope_value_bytes: int
    description: str
    plain: str
    """The plain format of the same latent precision (the MHA equivalent's)."""

    def latent_bytes(self) -> int:
        scales = self.kv_lora_rank // self.scale_group
        return self.kv_lora_rank * self.latent_value_bits // 8 + scales * self.scale_bytes

    def rope_bytes(self) -> int:
        return self.qk_rope_head_dim * self.rope_value_bytes


Format = StorageFormat | PackedMlaFormat

FP8_DS_MLA = PackedMlaFormat(
    name="fp8_ds_mla",
    kv_lora_rank=512,
    qk_rope_head_dim=64,
    latent_value_bits=8,
    scale_group=128,
    scale_bytes=4,
    rope_value_bytes=2,
    description="FlashMLA packed MLA: fp8 latent + fp32 scale per 128 + bf16 rope key",
    plain="fp8",
)
NVFP4_DS_MLA = PackedMlaFormat(
    name="nvfp4_ds_mla",
    kv_lora_rank=512,
    qk_rope_head_dim=64,
    latent_value_bits=4,
    scale_group=16,
    scale_bytes=1,
    rope_value_bytes=1,
    description="vLLM's NVFP4 packed MLA (SM100 only): e2m1 latent + fp8 scale per 16 + fp8 rope key",
    plain="nvfp4",
)

_PLAIN = [
    StorageFormat("fp32", 1, 4, "IEEE float32"),
    StorageFormat("bf16", 1, 2, "bfloat16"),
    StorageFormat("fp16", 1, 2, "IEEE float16"),
    StorageFormat("fp8", 1, 1, "fp8 e4m3 (per-tensor scale)"),
    StorageFormat("fp8_e4m3", 1, 1, "fp8 e4m3 (per-tensor scale)"),
    StorageFormat("fp8_e5m2", 1, 1, "fp8 e5m2 (per-tensor scale)"),
    StorageFormat("int8", 1, 1, "int8 (per-tensor scale)"),
    StorageFormat("q8_0", 32, 34, "llama.cpp q8_0: 32 int8 + fp16 scale"),
    StorageFormat("q4_0", 32, 18, "llama.cpp q4_0: 32 nibbles + fp16 scale"),
    StorageFormat("q4_1", 32, 20, "llama.cpp q4_1: 32 nibbles + fp16 scale and min"),
    StorageFormat("q5_0", 32, 22, "llama.cpp q5_0: 32 5-bit values + fp16 scale"),
    StorageFormat("q5_1", 32, 24, "llama.cpp q5_1: 32 5-bit values + fp16 scale and min"),
    StorageFormat("nvfp4", 16, 9, "NVFP4: 16 e2m1 values + one fp8 scale"),
]

FORMATS: dict[str, Format] = {f.name: f for f in [*_PLAIN, FP8_DS_MLA, NVFP4_DS_MLA]}


def get_format(name: str) -> Format:
    """Look a format up by name (case-insensitive)."""
    try:
        return FORMATS[name.lower()]
    except KeyError:
        raise OptionError(
            f"--kv-dtype: unknown storage format {name!r}; choose one of {', '.join(FORMATS)}"
        ) from None


WEIGHT_FORMATS: dict[str, tuple[Fraction, str]] = {
    "fp32": (Fraction(4), "4 B per weight"),
    "bf16": (Fraction(2), "2 B per weight"),
    "fp16": (Fraction(2), "2 B per weight"),
    "fp8": (Fraction(1), "1 B per weight, per-tensor scale"),
    "fp8-block": (Fraction(1) + Fraction(4, 128 * 128),
                  "1 B per weight + one fp32 scale per 128x128 block (DeepSeek-V3's fp8)"),
    "int8": (Fraction(1), "1 B per weight, per-channel scale"),
    "int4": (Fraction(1, 2) + Fraction(2, 128), "4 bits + one fp16 scale per group of 128 (AWQ/GPTQ)"),
    "mxfp4": (Fraction(1, 2) + Fraction(1, 32), "4 bits + one e8m0 scale per 32 (gpt-oss)"),
    "nvfp4": (Fraction(1, 2) + Fraction(1, 16), "4 bits + one fp8 scale per 16"),
}
"""Bytes per parameter, exact, scales of block-quantised formats included."""
