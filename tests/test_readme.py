"""The README's shown outputs stay true: every ``$ kvcalc ...`` block is run and compared
(measure blocks are skipped: their timings differ run to run)."""

import re
import shlex
from pathlib import Path

import pytest

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
EXAMPLES = [(cmd, out) for cmd, out in re.findall(r"```\n\$ (kvcalc [^\n]+)\n(.*?)```", README, re.S)
            if " measure " not in cmd]
BAD_SPEC = """\
name: my-model
display_name: My Model
num_layers: 4
hidden_size: 64
attention: {kind: standard, num_heads: 8, num_kv_heads: 3, head_dim: 8}
"""


def test_the_readme_shows_examples():
    assert len(EXAMPLES) >= 4


@pytest.mark.parametrize(("command", "expected"), EXAMPLES, ids=[c for c, _ in EXAMPLES])
def test_readme_example(cli, tmp_path, monkeypatch, command, expected):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my-model.yaml").write_text(BAD_SPEC)
    _, out, err = cli(*shlex.split(command)[1:])
    assert (out + err).strip() == expected.strip()
