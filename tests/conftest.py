from __future__ import annotations

import pytest

from kvcalc.cli import main


@pytest.fixture(autouse=True)
def offline_hub(monkeypatch, tmp_path_factory):
    """No test reaches the Hugging Face Hub: in-process, huggingface_hub is offline with an empty
    cache of its own (tests of the Hub run the CLI in a process of their own, with their own
    environment: tests/test_inputs.py)."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path_factory.mktemp("hub")))


@pytest.fixture
def cli(capsys):
    """Run ``kvcalc ARGS...`` in-process through its entry point; returns (status, out, err)."""

    def run(*args: str) -> tuple[int, str, str]:
        with pytest.raises(SystemExit) as exit_info:
            main(list(args))
        out, err = capsys.readouterr()
        return exit_info.value.code, out, err

    return run


MINIMAL_SPEC = """\
name: tiny
display_name: Tiny
num_layers: 4
hidden_size: 64
attention:
  kind: standard
  num_heads: 8
  num_kv_heads: 2
  head_dim: 8
"""


@pytest.fixture
def spec_file(tmp_path):
    """Write spec text to a file and return its path."""

    def write(text: str = MINIMAL_SPEC, name: str = "model.yaml"):
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


@pytest.fixture(autouse=True)
def _no_terminal_width(monkeypatch):
    """Golden tables are unwrapped: a COLUMNS exported by the developer's shell must not wrap them."""
    monkeypatch.delenv("COLUMNS", raising=False)
