"""kvcalc plot writes a real PNG or SVG of the expected size, without torch."""

import struct
import subprocess
import sys

import pytest

pytest.importorskip("matplotlib")


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_png(cli, tmp_path):
    target = tmp_path / "kv.png"
    status, _, err = cli("plot", "deepseek-v3", "gemma-3-27b", "--seq-max", "64k", "--gpu", "h200",
                         "-o", str(target))
    assert (status, err) == (0, f"kvcalc: wrote {target}\n")
    assert png_size(target.read_bytes()) == (900, 550)  # 9 x 5.5 inches at 100 dpi


def test_svg(cli, tmp_path):
    target = tmp_path / "kv.svg"
    status, _, _ = cli("plot", "llama-3.1-8b", "--seq-max", "32k", "-o", str(target))
    assert status == 0
    text = target.read_text()
    assert "<svg" in text and "Llama-3.1-8B" in text


def test_unknown_extension_writes_nothing(cli, tmp_path):
    status, _, err = cli("plot", "llama-3.1-8b", "-o", str(tmp_path / "kv.jpg"))
    assert status == 2 and "the extension picks the format: .png or .svg" in err
    assert list(tmp_path.iterdir()) == []


def test_plot_does_not_import_torch(tmp_path):
    code = (
        "import sys\nfrom kvcalc.cli import main\n"
        f"try: main(['plot', 'llama-3.1-8b', '--seq-max', '8k', '-o', r'{tmp_path / 'a.png'}'])\n"
        "except SystemExit as e: assert e.code == 0\n"
        "assert 'torch' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_without_matplotlib_it_says_how_to_get_it(cli, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    status, _, err = cli("plot", "llama-3.1-8b", "-o", str(tmp_path / "kv.png"))
    assert status == 2
    assert err == "kvcalc: error: kvcalc plot needs matplotlib: pip install 'kvcalc[plot]' (or pip install matplotlib)\n"
