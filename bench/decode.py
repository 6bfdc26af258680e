"""Decode step time against context length: one DeepSeek-V3 layer (latent and decompressed MLA)
and one Llama-3.1-70B layer, built as ``kvcalc measure`` builds them (the models' own rope: YaRN,
llama3). Run by hand; results go in docs/benchmarks.md and bench/results/.

For each context T the cache is allocated for T + 1 tokens and filled with T random tokens (no
T-token prefill: decode is what is timed), then single-token decode steps at position T are timed
(median). Each is paired with the same step over a 1-token cache, which costs what does not depend
on the context (projections: reading the layer's weights); "attention" is the median difference,
the part that reads the cache.

    python bench/decode.py [--device auto|cpu|cuda] [--batch 1] [--contexts 1k,2k,...,64k]

Targets (issue 4): on CPU at 16k tokens, absorbed (latent) decode >= 10x faster than decompressed;
on a GPU at batch >= 32, absorbed decode >= 50% of the card's peak memory bandwidth.
"""

from __future__ import annotations

import argparse
import statistics

import torch  # noqa: E402

from kvcalc.analytic import Layout  # noqa: E402
from kvcalc.catalog import load_bundled  # noqa: E402
from kvcalc.measure import build_layer, built_as, resolve_device, timed  # first: quiets numpy's warning
from kvcalc.spec import LayerKind  # noqa: E402
from kvcalc.units import humanize_bytes, parse_token_list  # noqa: E402

NOISE = 0.05
"""An attention time under 5% of the step is not told apart from run-to-run variation."""

CASES = [
    ("deepseek-v3", Layout.LATENT),
    ("deepseek-v3", Layout.DECOMPRESSED),
    ("llama-3.1-70b", Layout.LATENT),
]


def decode_times(layer, batch: int, tokens: int, steps: int, device) -> tuple[float, float, int]:
    """Median step seconds over a cache of ``tokens`` tokens; median of that step minus the same
    step over a 1-token cache, timed in pairs (the part that reads the cache); the cache's bytes."""
    long = layer.allocate_cache(batch, tokens + 1, torch.bfloat16)
    long.fill(tokens)
    short = layer.allocate_cache(batch, 2, torch.bfloat16)
    short.fill(1)
    x = torch.randn(batch, 1, layer.o_proj.out_features, device=device, dtype=torch.bfloat16)
    steps_s, differences = [], []
    with torch.inference_mode():
        for i in range(steps + 2):  # two warm-up pairs
            layer.cache = long
            full = timed(lambda: layer(x, start_pos=tokens), device)
            layer.cache = short
            base = timed(lambda: layer(x, start_pos=1), device)
            if i >= 2:
                steps_s.append(full)
                differences.append(full - base)
    layer.cache = None
    return statistics.median(steps_s), max(statistics.median(differences), 1e-9), long.nbytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--contexts", default="1k,2k,4k,8k,16k,32k,64k")
    parser.add_argument("--steps", type=int, default=9)
    args = parser.parse_args()
    device = resolve_device(args.device)
    contexts = parse_token_list(args.contexts)
    print(f"device {device}, batch {args.batch}, bf16, median of {args.steps} paired steps")
    print(f"{'layer':<28}{'tokens':>8}{'cache':>11}{'step ms':>10}{'attn ms':>10}"
          f"{'GB/s step':>11}{'GB/s attn':>11}")
    for name in dict.fromkeys(name for name, _ in CASES):
        print(f"# {name}: {built_as(load_bundled(name))}")
    results = {}
    for name, layout in CASES:
        spec = load_bundled(name)
        layer = build_layer(spec, LayerKind.FULL, layout, device, torch.bfloat16)
        label = f"{name} {layout if spec.attention.kind == 'mla' else 'kv'}"
        for tokens in contexts:
            try:
                step, attn, nbytes = decode_times(layer, args.batch, tokens, args.steps, device)
            except (torch.cuda.OutOfMemoryError, RuntimeError) as e:
                print(f"{label:<28}{tokens:>8}  skipped: {str(e).splitlines()[0][:60]}")
                continue
            resolved = attn > NOISE * step  # a difference smaller than that is timing noise
            results[(label, tokens)] = (step, attn if resolved else None)
            attn_ms = f"{attn * 1e3:>10.2f}" if resolved else f"{'noise':>10}"
            attn_bw = f"{nbytes / attn / 1e9:>11.2f}" if resolved else f"{'-':>11}"
            print(f"{label:<28}{tokens:>8}{humanize_bytes(nbytes):>11}{step * 1e3:>10.2f}"
                  f"{attn_ms}{nbytes / step / 1e9:>11.2f}{attn_bw}")
        del layer
    for tokens in contexts:
        latent = results.get(("deepseek-v3 latent", tokens))
        naive = results.get(("deepseek-v3 decompressed", tokens))
        if latent and naive:
            in_attention = (f"{naive[1] / latent[1]:.1f}x in attention" if latent[1] and naive[1]
                            else "attention below timing noise")
            print(f"{tokens:>6} tokens: absorbed decode {naive[0] / latent[0]:.1f}x faster per step, "
                  f"{in_attention}")


if __name__ == "__main__":
    main()
