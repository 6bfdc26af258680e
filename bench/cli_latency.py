"""Start-up cost of an analytic command against the bare imports it cannot avoid.

Runs, interleaved, ``kvcalc compare deepseek-v3 llama-3.1-70b --seq 4k,32k,128k`` and
``python -c "import typer, rich, pydantic, yaml"``, and prints each median and their ratio.
Target: ratio <= 1.3 (kvcalc adds at most 30% to the libraries' own import time; no torch).

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
BASELINE = [sys.executable, "-c", "import typer, rich, pydantic, yaml"]
# `import pydantic` is lazy: a program that defines a model also loads pydantic.main and
# pydantic-core's schema machinery. This is the floor for any CLI that validates with pydantic.
FLOOR = [sys.executable, "-c", "import typer, rich, yaml; from pydantic import BaseModel"]


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
    kvcalc = kvcalc_command()
    commands = {"kvcalc": kvcalc, "imports": BASELINE, "floor": FLOOR}
    for cmd in commands.values():
        wall_time(cmd)  # warm the file cache
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(runs):
        for name, cmd in commands.items():
            times[name].append(wall_time(cmd))
    k, b, f = (statistics.median(times[name]) for name in commands)
    print(f"kvcalc {' '.join(COMPARE)}: median {k * 1000:.0f} ms over {runs} runs")
    print(f"python -c 'import typer, rich, pydantic, yaml': median {b * 1000:.0f} ms")
    print(f"python -c 'import typer, rich, yaml; from pydantic import BaseModel': median {f * 1000:.0f} ms")
    print(f"ratio to the imports {k / b:.2f} (target <= 1.3); to the pydantic floor {k / f:.2f}")


if __name__ == "__main__":
    main()
