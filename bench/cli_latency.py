"""Start-up cost of an analytic command against the bare imports it cannot avoid.

Runs, interleaved, ``kvcalc compare deepseek-v3 llama-3.1-70b --seq 4k,32k,128k``,
``python -c "import typer, rich, pydantic, yaml"`` (the issue's baseline) and a two-command typer
app that does nothing (the floor for any typer CLI: typer coerces parameters through pydantic when
the app runs, which the bare import never pays). Prints each median and the ratios.
Target: kvcalc / baseline <= 1.3.

    python bench/cli_latency.py [--runs 20]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMPARE = ["compare", "deepseek-v3", "llama-3.1-70b", "--seq", "4k,32k,128k"]
BASELINE = "import typer, rich, pydantic, yaml"
TYPER_FLOOR = """
from typing import Annotated
import typer
app = typer.Typer()
@app.command()
def compare(models: list[str], seq: Annotated[str, typer.Option("--seq")] = "4k") -> None:
    pass
@app.command()
def other() -> None:
    pass
app(["compare", "a", "--seq", "4k"], standalone_mode=False)
"""


def kvcalc_command() -> list[str]:
    script = Path(sys.executable).with_name("kvcalc")
    found = str(script) if script.exists() else shutil.which("kvcalc")
    return [found, *COMPARE] if found else [sys.executable, "-m", "kvcalc", *COMPARE]


def wall_time(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="runs of each command (>= 10)")
    runs = max(10, parser.parse_args().runs)
    commands = {
        "kvcalc": kvcalc_command(),
        "baseline": [sys.executable, "-c", BASELINE],
        "typer floor": [sys.executable, "-c", TYPER_FLOOR],
    }
    for cmd in commands.values():
        wall_time(cmd)  # warm the file cache
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(runs):
        for name, cmd in commands.items():
            times[name].append(wall_time(cmd))
    k, b, f = (statistics.median(times[name]) for name in commands)
    print(f"kvcalc {' '.join(COMPARE)}: median {k * 1000:.0f} ms over {runs} runs")
    print(f"python -c '{BASELINE}': median {b * 1000:.0f} ms")
    print(f"an empty two-command typer app: median {f * 1000:.0f} ms")
    print(f"ratio to the baseline {k / b:.2f} (target <= 1.3); typer floor / baseline {f / b:.2f};")
    print(f"kvcalc / typer floor {k / f:.2f}")


if __name__ == "__main__":
    main()
