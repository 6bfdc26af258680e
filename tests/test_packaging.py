"""What ``pip install .`` gives a user works: the wheel holds every package and bundled spec, and the
command it installs runs from a fresh environment that cannot see this checkout. ``measure --tp``
runs without numpy, which the ``measure`` extra does not install."""

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

import kvcalc
from kvcalc.catalog import bundled_names

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = sorted(p.parent.relative_to(ROOT).as_posix() for p in (ROOT / "kvcalc").rglob("__init__.py"))
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # nothing of this checkout on the path


def hide_numpy(folder: Path) -> None:
    """Make ``import numpy`` fail, as where it is not installed, for Python with ``folder`` early
    on its path (a spawned rank too)."""
    (folder / "numpy").mkdir()
    (folder / "numpy" / "__init__.py").write_text(
        'raise ModuleNotFoundError("No module named \'numpy\' (hidden by the test)", name="numpy")\n'
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel ``pip install .`` builds, from a copy of the sources (a stale build/ cannot leak in,
    and nothing is written into the checkout)."""
    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("wheel")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source)
    shutil.copytree(ROOT / "kvcalc", source / "kvcalc", ignore=shutil.ignore_patterns("__pycache__"))
    # Offline with this environment's setuptools; without it, pip fetches one (needs the network).
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "--quiet",
                    "-w", str(out), str(source)], check=True, capture_output=True)
    (built,) = out.glob("kvcalc-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh virtual environment with the wheel installed and no extras. It sees this
    environment's dependencies (typer, rich, pydantic, yaml, torch) through a .pth line, which puts
    their folder on sys.path without running the .pth files there -- among them the finder of the
    editable kvcalc, so this checkout stays out of sight. numpy is hidden: torch does not need it."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                    "--no-index", "--quiet", str(wheel)], check=True, capture_output=True)
    site = Path(subprocess.check_output(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], text=True, env=ENV
    ).strip())
    outer = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    (site / "outer-dependencies.pth").write_text("".join(f"{path}\n" for path in sorted(outer)))
    hide_numpy(site)
    return venv


def run(command: list, cwd: Path, env: dict[str, str] = ENV) -> str:
    result = subprocess.run([str(part) for part in command], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def table_rows(out: str, model: str) -> list[str]:
    """The table's rows for ``model`` (its notes say "model: ...")."""
    return [line for line in out.splitlines() if line.split()[:1] == [model]]


def test_wheel_ships_every_package_and_bundled_spec(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "kvcalc/nn" in PACKAGES
    assert {f"{package}/__init__.py" for package in PACKAGES} <= names
    assert {f"kvcalc/model_specs/{n}.yaml" for n in bundled_names()} <= names
    assert "kvcalc/__main__.py" in names
    assert "kvcalc/output.schema.json" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "kvcalc = kvcalc.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_the_fresh_environment_imports_the_installed_wheel(venv, tmp_path):
    code = "import importlib.util, kvcalc.nn; print(kvcalc.__file__); print(importlib.util.find_spec('numpy').origin)"
    kvcalc_file, numpy_file = run([venv / "bin" / "python", "-c", code], tmp_path).splitlines()
    assert Path(kvcalc_file).is_relative_to(venv)
    assert Path(numpy_file).is_relative_to(venv)  # the stub that hides numpy


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (["kvcalc", "list"], ["deepseek-v3", "70,272", "llama-3.1-8b"]),
        (["kvcalc", "show", "deepseek-v3"], ["70,272 B/token"]),
        (["kvcalc", "measure", "llama-3.1-8b", "--seq", "256", "--device", "cpu"], ["1,048,576", "exact"]),
        (["kvcalc", "measure", "deepseek-v3", "--seq", "256", "--tp", "2", "--device", "cpu"],
         ["294,912", "exact"]),
        (["python", "-m", "kvcalc", "--version"], [f"kvcalc {kvcalc.__version__}"]),
        (["kvcalc", "schema"], ['"$schema": "https://json-schema.org/draft/2020-12/schema"']),
    ],
    ids=["list", "show", "measure", "measure-tp", "version", "schema"],
)
def test_the_installed_command_runs(venv, tmp_path, command, expected):
    out = run([venv / "bin" / command[0], *command[1:]], tmp_path)
    for text in expected:
        assert text in out
    if command[1] == "measure":  # every row, one per rank, holds exactly the formula's bytes
        rows = table_rows(out, command[2])
        assert len(rows) == (2 if "--tp" in command else 1)
        assert all(" exact " in row for row in rows)


def test_measure_tp_runs_without_numpy(tmp_path):
    # torch.distributed's object collectives need numpy; kvcalc gathers the rows without them.
    hide_numpy(tmp_path)
    env = {**ENV, "PYTHONPATH": str(tmp_path)}  # inherited by the spawned ranks
    out = run([sys.executable, "-m", "kvcalc", "measure", "llama-3.1-8b", "--tp", "2", "--seq", "256",
               "--device", "cpu"], tmp_path, env)
    rows = table_rows(out, "llama-3.1-8b")
    assert len(rows) == 2 and all(" exact " in row for row in rows)
