"""GPUs: memory and peak memory bandwidth.

``memory_bytes`` is the capacity the device reports where a report is known (nvidia-smi's total
MiB: read on this project's H200, publicly reported for the others), otherwise the datasheet
capacity in decimal GB; ``source`` says which. ``--gpu-mem`` overrides it.
Bandwidths are datasheet peaks, in bytes per second.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from kvcalc.errors import OptionError

MIB = 1 << 20
GB = 10**9


@dataclass(frozen=True)
class Gpu:
    name: str
    display_name: str
    memory_bytes: int
    bandwidth_bytes_per_s: int
    source: str


GPUS: dict[str, Gpu] = {
    g.name: g
    for g in [
        Gpu("a100-40gb", "A100 40GB", 40960 * MIB, 1555 * GB,
            "nvidia-smi 40960 MiB; datasheet 1,555 GB/s"),
        Gpu("a100-80gb", "A100 80GB SXM", 81920 * MIB, 2039 * GB,
            "nvidia-smi 81920 MiB; datasheet 2,039 GB/s"),
        Gpu("h100-sxm", "H100 SXM 80GB", 81559 * MIB, 3350 * GB,
            "nvidia-smi 81559 MiB; datasheet 3.35 TB/s"),
        Gpu("h100-pcie", "H100 PCIe 80GB", 81559 * MIB, 2000 * GB,
            "nvidia-smi 81559 MiB; datasheet 2.0 TB/s"),
        Gpu("h200", "H200 141GB", 143771 * MIB, 4800 * GB,
            "nvidia-smi 143771 MiB (read on an H200 here); datasheet 4.8 TB/s"),
        Gpu("b200", "B200 180GB", 180 * GB, 8000 * GB, "datasheet 180 GB, 8 TB/s"),
        Gpu("gb200", "GB200 (per GPU) 186GB", 186 * GB, 8000 * GB, "datasheet 186 GB, 8 TB/s per GPU"),
        Gpu("mi300x", "MI300X 192GB", 192 * GB, 5300 * GB, "datasheet 192 GB, 5.3 TB/s"),
        Gpu("mi325x", "MI325X 256GB", 256 * GB, 6000 * GB, "datasheet 256 GB, 6.0 TB/s"),
        Gpu("l40s", "L40S 48GB", 46068 * MIB, 864 * GB,
            "nvidia-smi 46068 MiB (ECC on); datasheet 864 GB/s"),
        Gpu("rtx-4090", "RTX 4090 24GB", 24564 * MIB, 1008 * GB,
            "nvidia-smi 24564 MiB; datasheet 1,008 GB/s"),
        Gpu("rtx-5090", "RTX 5090 32GB", 32607 * MIB, 1792 * GB,
            "nvidia-smi 32607 MiB; datasheet 1,792 GB/s"),
    ]
}

_ALIASES = {"a100": "a100-80gb", "h100": "h100-sxm", "4090": "rtx-4090", "5090": "rtx-5090"}


def get_gpu(name: str) -> Gpu:
    key = name.lower()
    key = _ALIASES.get(key, key)
    if key in GPUS:
        return GPUS[key]
    close = difflib.get_close_matches(key, [*GPUS, *_ALIASES], n=3, cutoff=0.4)
    hint = f"; closest: {', '.join(close)}" if close else ""
    raise OptionError(f"--gpu: unknown GPU {name!r}{hint} (known: {', '.join(GPUS)})")
