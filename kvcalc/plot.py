"""KV cache against context, one line per model, with each model's KV budget on a GPU. Under vLLM a
line is what it reserves to admit the sequences (``Curve.request_per_gpu_bytes``), as ``fit`` counts.

matplotlib is an optional extra (``pip install 'kvcalc[plot]'``), imported only here; plotting
never imports torch. Curves are evaluated exactly at every plotted length (``analytic.Curve``).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from kvcalc.analytic import Curve
from kvcalc.capacity import longest_context
from kvcalc.errors import KvcalcError, OptionError
from kvcalc.units import humanize_tokens

GIB = 1 << 30
FIRST_TOKENS = 1024
POINTS = 160
FORMATS = {".png": "png", ".svg": "svg"}


@dataclass(frozen=True)
class Series:
    label: str
    curve: Curve
    budget_bytes: int | None
    """The model's KV budget per GPU, when a GPU was given (negative: the weights do not fit)."""
    in_flight: int = 0
    """vLLM's tokens in flight, which its reservation counts (``analytic.in_flight_tokens``)."""

    def bytes_at(self, seq_len: int, batch: int) -> int:
        """What one GPU needs for ``batch`` sequences: vLLM's reservation, else the cache held."""
        if self.curve.block_bytes is not None:
            return self.curve.request_per_gpu_bytes(seq_len, batch, self.in_flight)
        return self.curve.per_gpu_bytes(seq_len, batch)


def lengths(seq_max: int) -> list[int]:
    """Token counts from 1k to ``seq_max``, evenly spaced on a log scale, ends included."""
    if seq_max <= FIRST_TOKENS:
        raise OptionError(f"--seq-max: {seq_max} must be above {FIRST_TOKENS}")
    ratio = (seq_max / FIRST_TOKENS) ** (1 / (POINTS - 1))
    return sorted({round(FIRST_TOKENS * ratio**i) for i in range(POINTS)} | {seq_max})


def render_plot(series: list[Series], seq_max: int, path: Path, title: str, batch: int = 1) -> bytes:
    """The chart as PNG or SVG bytes, chosen by ``path``'s extension."""
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise OptionError(f"--output: {path.name}: the extension picks the format: .png or .svg")
    plt = _pyplot()
    xs = lengths(seq_max)
    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=100)
    for i, s in enumerate(series):
        color = f"C{i}"
        label = s.label
        if s.budget_bytes is not None and s.budget_bytes <= 0:
            label += " (weights alone do not fit)"
        ax.plot(xs, [s.bytes_at(x, batch) / GIB for x in xs], color=color, label=label)
        if s.budget_bytes is None or s.budget_bytes <= 0:
            continue
        ax.axhline(s.budget_bytes / GIB, color=color, linestyle="--", linewidth=1)
        crossing = longest_context(s.curve, s.budget_bytes, batch=batch, limit=seq_max, in_flight=s.in_flight)
        if crossing is not None and crossing < seq_max:  # the budget is reached inside the chart
            y = s.bytes_at(crossing, batch) / GIB
            ax.plot([crossing], [y], "o", color=color)
            ax.annotate(f"{crossing:,} tokens fit", (crossing, y), textcoords="offset points",
                        xytext=(-10, 8), ha="right", color=color, fontsize=8)
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda x, _: humanize_tokens(int(x))))
    ax.set_yscale("log")
    ax.set_xlabel("context (tokens per sequence)")
    ax.set_ylabel(f"KV cache per GPU (GiB), batch {batch}")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    buffer = io.BytesIO()
    fig.savefig(buffer, format=kind, bbox_inches=None)
    plt.close(fig)
    return buffer.getvalue()


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise KvcalcError(
            "kvcalc plot needs matplotlib: pip install 'kvcalc[plot]' (or pip install matplotlib)"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
