"""The Python API: the figures the commands print, from any model input, with arguments checked where
they enter and kvcalc's exceptions, never an exit."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

import kvcalc
from kvcalc.analytic import Options, curve

README = Path(__file__).parents[1] / "README.md"


def test_import_kvcalc_stays_light():
    code = "import sys, kvcalc; print(sorted(m for m in sys.modules if m.startswith(('kvcalc.', 'torch', 'numpy'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_footprint_and_fit_give_the_commands_figures():
    fp = kvcalc.footprint("deepseek-v3", seq_len=131_072)
    assert (fp.bytes_per_token, fp.total_bytes) == (70_272, 70_272 * 131_072)
    assert kvcalc.footprint("deepseek-v3", seq_len="128k").total_bytes == fp.total_bytes
    tp8 = kvcalc.footprint("llama-3.1-70b", seq_len=1024, batch=2, tp=8)
    assert (tp8.total_bytes, tp8.per_gpu_bytes) == (327_680 * 2048, 327_680 * 2048 // 8)
    fit = kvcalc.fit("llama-3.1-70b", gpu="h200", gpus=2, seq_len=32_768)
    assert fit.gpus == 2 and fit.max_concurrency == fit.kv_budget_bytes_per_gpu // (32_768 * 327_680 // 2)
    assert kvcalc.fit("llama-3.1-70b", gpu_mem_bytes=fit.gpu_mem_bytes, tp=2, seq_len=32_768).max_concurrency \
        == fit.max_concurrency


def test_load_takes_every_kind_of_model(tmp_path):
    from transformers import AutoConfig

    config = {"model_type": "llama", "hidden_size": 4096, "num_attention_heads": 32, "num_hidden_layers": 32,
              "num_key_value_heads": 8}
    spec = kvcalc.load(config)
    assert kvcalc.load(spec) is spec and kvcalc.footprint(spec, seq_len=1).bytes_per_token == 131_072
    pretrained = AutoConfig.for_model(**config)
    assert kvcalc.footprint(pretrained, seq_len=1).bytes_per_token == 131_072
    path = tmp_path / "config.json"
    path.write_text(__import__("json").dumps(config))
    assert kvcalc.load(path).attention == kvcalc.load(str(path)).attention == spec.attention
    assert kvcalc.load("Llama-3.1-8B").name == "llama-3.1-8b"


@pytest.mark.parametrize(("call", "message"), [
    (lambda: kvcalc.footprint("llama-3.1-8b", seq_len=1.5), "seq_len: 1.5 must be a whole number"),
    (lambda: kvcalc.footprint("llama-3.1-8b", seq_len=True), "seq_len: True must be a whole number"),
    (lambda: kvcalc.footprint("llama-3.1-8b", seq_len=10, kv_dtype=None), "kv_dtype: None must be a string"),
    (lambda: kvcalc.footprint("llama-3.1-8b", seq_len=10, tp=0), "tp: 0 must be a whole number, at least 1"),
    (lambda: kvcalc.footprint("llama-3.1-8b", seq_len=10, layout="flat"), "layout: 'flat' is not latent"),
    (lambda: kvcalc.footprint("llama-3.1-8b", seq_len="lots"), "lots"),
    (lambda: kvcalc.fit("llama-3.1-8b", seq_len=10), "gpu or gpu_mem_bytes: say which GPU"),
    (lambda: kvcalc.fit("llama-3.1-8b", gpu="h200", reserve_bytes=-1), "reserve_bytes: -1"),
    (lambda: kvcalc.load(3), "model: 3 is not a name, path, repo id"),
    (lambda: kvcalc.load("llama-3.1-8c"), "unknown model 'llama-3.1-8c'"),
    (lambda: curve(kvcalc.load("llama-3.1-8b"), Options(1)).total_bytes(-5), "seq_len: -5 must be a whole"),
    (lambda: curve(kvcalc.load("llama-3.1-8b"), Options(1)).per_gpu_bytes(8, 1.0), "batch: 1.0 must be a whole"),
])
def test_mistakes_raise_kvcalc_errors(call, message):
    with pytest.raises(kvcalc.KvcalcError, match=re.escape(message)):
        call()


def test_the_readme_example_runs():
    """The README's Python example, as a user would paste it."""
    text = README.read_text()
    section = text[text.index("## Python API"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 -- the repo's own README
    assert namespace["fp"].total_bytes == 70_272 * 131_072
