"""Footprint evaluations per second, on one core: the fit solver and the plots evaluate many.

A ``Curve`` holds everything about a cache but its length (rows per layer kind, per GPU stage), so
one evaluation costs the same for 4 layers or 400. Timed: ``curve.per_gpu_bytes(seq_len)`` over
200,000 lengths, for DeepSeek-V3 (one layer kind, MLA), Gemma-3-27B (full + sliding layers),
Llama-4-Scout (full + chunked layers) and DeepSeek-V4-Flash (windows, compressed entries and
compressor state; under vLLM in fp8_ds_mla, packed blocks), engine-neutral and under vLLM's pages.
Also shown: the full ``footprint()``, which builds every named part for display. Target: >= 100,000
evaluations per second.

    taskset -c 0 python bench/footprint_speed.py
"""

from __future__ import annotations

import time

from kvcalc.analytic import Options, curve, footprint
from kvcalc.catalog import load_bundled

N = 200_000


def rate(fn, n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        fn(1024 + i)
    return n / (time.perf_counter() - start)


def main() -> None:
    for name in ("deepseek-v3", "gemma-3-27b", "llama-4-scout", "deepseek-v4-flash"):
        spec = load_bundled(name)
        kv_dtype = "fp8_ds_mla" if name == "deepseek-v4-flash" else "bf16"
        for engine in (None, "vllm"):
            options = Options(1, engine=engine, kv_dtype=kv_dtype if engine else "bf16")
            c = curve(spec, options)
            evals = rate(c.per_gpu_bytes, N)
            def build(s: int, o: Options = options) -> None:
                footprint(spec, Options(s, engine=o.engine, kv_dtype=o.kv_dtype))

            full = rate(build, N // 20)
            print(f"{name:<14} {engine or 'ideal':<6} curve {evals:>10,.0f}/s   footprint() {full:>8,.0f}/s")


if __name__ == "__main__":
    main()
