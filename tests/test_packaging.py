"""The wheel ships the catalog inside the package, where importlib.resources finds it."""

import subprocess
import sys
import zipfile
from pathlib import Path

from kvcalc.catalog import bundled_names

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_ships_every_bundled_spec(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("kvcalc-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"kvcalc/model_specs/{n}.yaml" for n in bundled_names()} <= names
    assert "kvcalc/__main__.py" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "kvcalc = kvcalc.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
