"""Fuzz the input gate: a spec or config with one field deleted or set to a hostile value makes
``kvcalc show`` exit 0 with a figure, or exit 2 with one line on stderr naming the file and the
field -- never a traceback, a hang, or silent acceptance of a value that cannot be right.

The mutations run in-process under a 5 s alarm. Hostile YAML text runs as a real process with a
time and memory cap: a loop in C (an alias bomb's repr, a billion-layer tuple) ignores the alarm.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import io
import json
import math
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

import kvcalc
from kvcalc.cli import main
from tests.conftest import MINIMAL_SPEC
from tests.test_hf import DEEPSEEK_V3, FAMILIES, LLAMA_31_8B, MIXTRAL, QWEN25_7B
from tests.test_recurrent import QWEN3_NEXT

REPO = Path(__file__).resolve().parents[1]
SPEC_FILES = sorted((Path(kvcalc.__file__).parent / "model_specs").glob("*.yaml"))
SPECS = {p.stem: yaml.safe_load(p.read_text()) for p in SPEC_FILES}
CONFIGS: dict[str, dict] = {}
for _name, _config in [*((f, c) for f, (c, _) in FAMILIES.items()), ("llama-3.1-8b", LLAMA_31_8B),
                       ("deepseek-v3", DEEPSEEK_V3), ("mixtral", MIXTRAL), ("qwen2.5-7b", QWEN25_7B)]:
    if all(_config is not seen for seen in CONFIGS.values()):  # each document once
        CONFIGS[_name] = _config
for _path in sorted((REPO / "tests" / "data" / "published").glob("*.json")):
    if _path.stem != "deepseek-v4-flash":  # refused whole, by model_type
        CONFIGS[_path.stem] = json.loads(_path.read_text())
CONFIGS["qwen3-next"] = QWEN3_NEXT  # recurrent families: their mixer fields mutated too
CONFIGS["kimi-linear"] = {"model_type": "kimi_linear", "num_hidden_layers": 8, "hidden_size": 2304,
                          "num_attention_heads": 32, "linear_attn_config": {"full_attn_layers": [4, 8],
                          "kda_layers": [1, 2, 3, 5, 6, 7], "num_heads": 32, "head_dim": 128}}
CONFIGS["nemotron-h"] = {"model_type": "nemotron_h", "num_hidden_layers": 9, "hidden_size": 4096,
                         "num_attention_heads": 32, "hybrid_override_pattern": "M-M-M*-M-", "mamba_num_heads": 128}
SPECS["hybrid-spec"] = {
    "name": "hybrid", "display_name": "Hybrid", "num_layers": 8, "hidden_size": 64,
    "attention": {"kind": "standard", "num_heads": 4, "num_kv_heads": 2, "head_dim": 16},
    "layer_pattern": ["recurrent", "mlp", "recurrent", "full"],
    "recurrent": {"kind": "mamba2", "num_heads": 4, "head_dim": 8, "d_state": 16, "n_groups": 2, "conv_kernel": 4}}
DOCS = {"spec": SPECS, "hf": CONFIGS}
OPTIONAL = {"nemotron_h": {"num_hidden_layers"}}
"""Fields a family (by model_type) derives, where others require them (Nemotron-H's layer count: its
layer list)."""


class _Delete:
    def __repr__(self) -> str:
        return "<deleted>"


DELETE = _Delete()
MUTATIONS = (DELETE, 0, -1, 1.5, "64", None, True, [], {}, 10**30, math.nan)

# What each field holds. A value among MUTATIONS is valid only where listed here; null or absent
# only for a field that is not required.
TEXT = {"name", "display_name", "source", "model_type", "topk_method"}  # any string, "64" included
FLAGS = {"use_sliding_window", "tie_word_embeddings", "multi_query", "attention_bias",  # True only
         "attention_k_eq_v", "truncate"}
# A spec's rope settings (rotary.py): positive numbers, 1.5 and 10**30 included (a rope_theta, a factor).
ROPE_NUMBERS = {"rope_theta", "factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim", "attention_factor",
                "low_freq_factor", "high_freq_factor", "partial_rotary_factor"}
# Counts where 0 is a real value, not a missing one: no MTP layer, no shared expert, no leading
# dense layer, no full-attention layer below the window; q_lora_rank 0 (like null) is a plain
# query projection.
ZERO_OK = {"mtp_layers", "num_nextn_predict_layers", "n_shared_experts", "first_k_dense_replace",
           "max_window_layers", "q_lora_rank", "num_kv_shared_layers", "index_skip_topk_offset"}
# schema.py's required fields (v_head_dim only for MLA: standard attention's defaults to head_dim).
SPEC_REQUIRED = {"name", "display_name", "num_layers", "hidden_size", "attention", "kind", "num_heads",
                 "num_kv_heads", "head_dim", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim",
                 "v_head_dim", "rope_theta"}
# Every field hf.py reads (first_int, optional_int, flag, raw.get), aliases included.
HF_COUNTS = {"num_hidden_layers", "n_layer", "num_layers", "hidden_size", "n_embd", "d_model",
             "num_attention_heads", "n_head", "num_heads", "num_key_value_heads", "num_kv_heads",
             "n_head_kv", "head_dim", "kv_lora_rank", "q_lora_rank", "qk_nope_head_dim",
             "qk_rope_head_dim", "v_head_dim", "sliding_window", "sliding_window_pattern",
             "max_window_layers", "max_position_embeddings", "n_positions", "num_nextn_predict_layers",
             "vocab_size", "intermediate_size", "moe_intermediate_size", "shared_expert_intermediate_size",
             "n_routed_experts", "num_local_experts", "num_experts", "n_shared_experts",
             "first_k_dense_replace", "attention_chunk_size", "no_rope_layer_interval", "global_head_dim",
             "num_global_key_value_heads", "sliding_window_size", "swa_num_key_value_heads", "swa_head_dim",
             "swa_v_head_dim", "index_topk_freq", "index_skip_topk_offset", "index_head_dim", "index_n_heads",
             "index_topk", "num_kv_shared_layers", "compress_rate_csa", "compress_rate_hca",
             # recurrent mixers and layouts
             "linear_num_key_heads", "linear_num_value_heads", "linear_key_head_dim", "linear_value_head_dim",
             "linear_conv_kernel_dim", "linear_num_heads", "linear_head_dim", "full_attention_interval",
             "mamba_num_heads", "mamba_head_dim", "ssm_state_size", "n_groups", "conv_kernel", "mamba_n_heads",
             "mamba_n_groups", "mamba_d_state", "mamba_d_conv", "mamba_expand", "attn_layer_period",
             "attn_layer_offset"}
# Fields of structure (lists, mappings, modes) where several of the mutations are real values
# ([] no_rope_layers: the default layout; {} per_layer_config: no override): any outcome that is a
# figure or a one-line error naming the field is right.
HF_STRUCTURED = {"no_rope_layers", "per_layer_config", "indexer_types", "index_topk_pattern",
                 "use_bidirectional_attention", "compress_ratios", "compress_rates", "architectures",
                 "linear_attn_config", "hybrid_override_pattern", "layers_block_type", "mamba_d_head",
                 "mamba_d_ssm", "attn_type_list"}
HF_READ = HF_COUNTS | FLAGS | HF_STRUCTURED | {"model_type", "topk_method", "layer_types", "text_config"}
HF_REQUIRED = {"num_hidden_layers", "n_layer", "hidden_size", "num_attention_heads", "n_head", "text_config"}
# Fields that change the parameter count or a label, never bytes_per_token.
SPEC_NO_CACHE = {"name", "display_name", "source", "params", "max_position_embeddings", "attention_bias", "rope",
                 "rope_type", "original_max_position_embeddings", "truncate", *ROPE_NUMBERS}
HF_NO_CACHE = {"vocab_size", "intermediate_size", "moe_intermediate_size", "shared_expert_intermediate_size",
               "n_routed_experts", "num_local_experts", "num_experts", "n_shared_experts",
               "first_k_dense_replace", "tie_word_embeddings", "attention_bias", "topk_method",
               "max_position_embeddings", "n_positions"}
# Deleted (or null), these fields make another one the wrong one, and that one is reported:
SPEC_BLAME = {
    # without its layer kinds a spec's sliding_window applies to no layer
    "layer_pattern": "sliding_window", "layer_types": "sliding_window",
    # the only kind in layer_attention: deleting it leaves an empty mapping
    "full": "layer_attention", "sliding": "layer_attention",
}
HF_BLAME = {
    # an alias's canonical name, which the config lacks too
    "n_layer": "num_hidden_layers", "num_layers": "num_hidden_layers", "n_head": "num_attention_heads",
    "num_heads": "num_attention_heads", "n_embd": "hidden_size", "d_model": "hidden_size",
    # without text_config the top level holds no language model: its first missing field
    "text_config": "num_hidden_layers",
}
RULES = {"spec": (SPEC_REQUIRED, SPEC_BLAME, SPEC_NO_CACHE), "hf": (HF_REQUIRED, HF_BLAME, HF_NO_CACHE)}

FUZZ = settings(
    max_examples=40, deadline=None, derandomize=True, database=None,
    # No shrinking: one path and one value is already minimal, and a hang would replay at 5 s a try.
    phases=(Phase.explicit, Phase.generate),
)


def key_paths(doc: dict, prefix: tuple = ()) -> list[tuple]:
    """Every mapping key of ``doc``, nested ones included, as a path from the top."""
    paths = []
    for key, value in doc.items():
        paths.append((*prefix, key))
        if isinstance(value, dict):
            paths += key_paths(value, (*prefix, key))
    return paths


def mutate(doc: dict, path: tuple, value) -> dict:
    doc = copy.deepcopy(doc)
    *parents, key = path
    target = functools.reduce(lambda d, k: d[k], parents, doc)
    if value is DELETE:
        del target[key]
    else:
        target[key] = copy.deepcopy(value)
    return doc


class Hang(BaseException):
    """Raised by SIGALRM: not an Exception, so no ``except Exception`` in kvcalc swallows it."""


def run_show(path: Path, seconds: float = 5) -> tuple[int, str, str]:
    """``kvcalc show PATH -f json`` in-process: (exit status, stdout, stderr)."""

    def expire(signum, frame):
        raise Hang

    out, err = io.StringIO(), io.StringIO()
    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main(["show", str(path), "-f", "json"])
    except SystemExit as e:
        return e.code, out.getvalue(), err.getvalue()
    except Hang:
        raise AssertionError(f"hang: no exit within {seconds} s") from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    raise AssertionError("main returned without SystemExit")


def must_fail(field: str | None, value, required: set[str]) -> bool:
    """Whether a field kvcalc reads, set to ``value``, can only be refused."""
    if field is None:
        return False
    if value is DELETE or value is None:
        return field in required
    valid = ((field in ZERO_OK and type(value) is int and value == 0)
             or (field in TEXT and value == "64") or (field in FLAGS and value is True)
             or (field in ROPE_NUMBERS and value in (1.5, 10**30) and type(value) is not bool))
    return not valid and field not in HF_STRUCTURED


def spelling(value) -> str | None:
    """How a scalar bad value shows in a message (the first digits of a long one)."""
    if value is True:
        return "true"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    if isinstance(value, int | float | str):
        return str(value)[:12]
    return None


def check(result, path: Path, key: str, value, refuse: bool, blame: str | None, figure: int | None):
    code, out, err = result
    assert code in (0, 2), f"exit {code}; stderr: {err!r}"
    if code == 0:
        assert not refuse, f"accepted {key}: {value!r}"
        bytes_per_token = json.loads(out)["bytes_per_token"]
        assert type(bytes_per_token) is int and bytes_per_token > 0
        assert figure in (None, bytes_per_token), f"{key}: {value!r} changed bytes_per_token"
        return
    line = err.removesuffix("\n")
    assert err.endswith("\n") and "\n" not in line, f"not one line: {err!r}"
    assert line.startswith("kvcalc: error: "), line
    assert str(path) in line, f"file not named: {line}"
    rest = line.replace(str(path), "")
    names = [key] + ([blame] if blame and (value is DELETE or value is None) else [])
    assert any(re.search(rf"(?<!\w){re.escape(n)}(?!\w)", rest) for n in names), f"{key} not named: {line}"
    shown = spelling(value)
    assert shown is None or shown in rest.lower(), f"value {value!r} not named: {line}"


@functools.cache
def baseline(kind: str, name: str) -> int:
    """bytes_per_token of an unmutated document."""
    with tempfile.TemporaryDirectory() as tmp:
        path = write(kind, DOCS[kind][name], Path(tmp))
        code, out, err = run_show(path)
    assert code == 0, err
    return json.loads(out)["bytes_per_token"]


def write(kind: str, doc: dict, folder: Path) -> Path:
    if kind == "spec":
        path = folder / "spec.yaml"
        path.write_text(yaml.safe_dump(doc))
    else:
        path = folder / "model" / "config.json"
        path.parent.mkdir()
        path.write_text(json.dumps(doc))  # NaN goes out as a bare NaN: hostile input is the point
    return path


@pytest.mark.parametrize(("kind", "name"), [(kind, name) for kind in DOCS for name in DOCS[kind]])
def test_unmutated_documents_pass(kind, name):
    assert baseline(kind, name) > 0


def hf_field(doc: dict, path: tuple) -> str | None:
    """The field kvcalc reads at ``path``, or None (vision_config, markers, unknown keys)."""
    if path in (("text_config",), ("model_type",)):
        return path[0]
    inner = ("text_config",) if isinstance(doc.get("text_config"), dict) else ()
    if path[: len(inner)] == inner and len(path) > len(inner) + 1 and path[len(inner)] in HF_STRUCTURED:
        return path[len(inner)]  # inside a structured field (linear_attn_config's lists)
    return path[-1] if path[:-1] == inner and path[-1] in HF_READ else None


def fuzz_one(kind: str, name: str, data) -> None:
    doc = DOCS[kind][name]
    path = data.draw(st.sampled_from(key_paths(doc)), label="path")
    value = data.draw(st.sampled_from(MUTATIONS), label="value")
    fuzz_case(kind, name, path, value)


def fuzz_case(kind: str, name: str, path: tuple, value) -> None:
    """One mutation of one document, run and checked (an exhaustive run calls this directly)."""
    doc = DOCS[kind][name]
    # Every key of a bundled spec is a schema field; a config holds keys kvcalc never reads.
    field = path[-1] if kind == "spec" else hf_field(doc, path)
    required, blame, no_cache = RULES[kind]
    required = required - OPTIONAL.get(doc.get("model_type"), set())
    if kind == "spec" and _parent(doc, path).get("kind") == "standard":
        required = required - {"v_head_dim"}  # standard attention's V defaults to head_dim
    figure = baseline(kind, name) if field is None or field in no_cache else None
    if field in HF_STRUCTURED:
        figure = None
    with tempfile.TemporaryDirectory() as tmp:
        file = write(kind, mutate(doc, path, value), Path(tmp))
        result = run_show(file)
    check(result, file, path[-1], value, must_fail(field, value, required), blame.get(path[-1]), figure)


def _parent(doc: dict, path: tuple) -> dict:
    for key in path[:-1]:
        doc = doc[key]
    return doc


@pytest.mark.parametrize("model", SPECS)
@FUZZ
@given(data=st.data())
def test_bundled_spec_mutation(model, data):
    fuzz_one("spec", model, data)


@pytest.mark.parametrize("family", CONFIGS)
@FUZZ
@given(data=st.data())
def test_hf_config_mutation(family, data):
    fuzz_one("hf", family, data)


SMALL = MINIMAL_SPEC
LAUGHS = 'l0: &l0 "lol"\n' + "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 10))


def layers(text: str) -> str:
    return SMALL.replace("num_layers: 4", f"num_layers: {text}")


HOSTILE = {
    "alias_bomb": LAUGHS + layers("*l9"),
    "binary": SMALL.replace("Tiny", "!!binary VGlueQ=="),
    "set": SMALL + "sliding_window: 16\nlayer_pattern: !!set {sliding, full}\n",
    "python_object": SMALL.replace("Tiny", "!!python/object/apply:os.getcwd []"),
    "duplicate_key": SMALL + "num_layers: 8\n",
    "leading_zero": layers("061"),  # YAML 1.1 octal 49
    "sexagesimal": layers("1:01"),  # YAML 1.1 base 60: 61
    "exponent": layers("1e9"),
    "10000_digits": layers("9" * 10_000),
    "over_4_MiB": SMALL + ("#" + " padding" * 9 + "\n") * (4 * 2**20 // 74 + 1),
    "billion_layers": layers("1000000000"),
}


def run_process(path: Path, seconds: float = 10) -> tuple[int, str, str]:
    """``python -m kvcalc show PATH -f json`` with a time limit and a 2 GiB address-space cap."""

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (2 * 2**30, 2 * 2**30))

    command = [sys.executable, "-m", "kvcalc", "show", str(path), "-f", "json"]
    try:
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=seconds,
                              preexec_fn=cap)
    except subprocess.TimeoutExpired:
        pytest.fail(f"hang: no exit within {seconds} s")
    return done.returncode, done.stdout, done.stderr


def assert_refused(result, path: Path):
    code, out, err = result
    assert code == 2, f"exit {code}; stdout {out[:200]!r}; stderr {err[-600:]!r}"
    line = err.removesuffix("\n")
    assert "\n" not in line and line.startswith("kvcalc: error: ") and str(path) in line, err


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_yaml_is_refused(tmp_path, case):
    path = tmp_path / "spec.yaml"
    path.write_text(HOSTILE[case])
    assert_refused(run_process(path), path)


@pytest.mark.parametrize("make", [os.mkfifo, os.mkdir], ids=["fifo_without_writer", "folder"])
def test_special_file_is_refused(tmp_path, make):
    path = tmp_path / "spec.yaml"
    make(path)
    assert_refused(run_process(path), path)
