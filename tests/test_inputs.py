"""The inputs users have: Hugging Face repo ids (online through a stand-in Hub, and offline from the
cache), checkpoint and cache snapshot folders, standard input, and the weight bytes checkpoints state."""

import hashlib
import http.server
import json
import os
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from kvcalc.catalog import resolve
from kvcalc.errors import SpecError, UnknownModelError

LLAMA = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 4096,
         "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8, "vocab_size": 128256,
         "intermediate_size": 14336, "max_position_embeddings": 131072}
INDEX = {"metadata": {"total_size": 16_060_522_496}, "weight_map": {}}  # Llama-3.1-8B's, as published


class _Hub(http.server.BaseHTTPRequestHandler):
    """The Hub's resolve endpoint as huggingface_hub reads it: the file with X-Repo-Commit and ETag,
    or the X-Error-Code that names the failure."""

    files: dict[tuple[str, str], bytes] = {}

    def log_message(self, *args) -> None:
        pass

    def _answer(self, body: bool) -> None:
        parts = self.path.strip("/").split("/")
        if len(parts) < 5 or parts[2] != "resolve":
            return self._error(404, "EntryNotFound")
        repo, revision, name = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
        if repo == "org/gated":
            return self._error(403, "GatedRepo")
        if not any(r == repo for r, _ in self.files):
            return self._error(404, "RepoNotFound")
        if revision != "main":
            return self._error(404, "RevisionNotFound")
        data = self.files.get((repo, name))
        if data is None:
            return self._error(404, "EntryNotFound")
        self.send_response(200)
        self.send_header("X-Repo-Commit", "b" * 40)
        self.send_header("ETag", f'"{hashlib.sha1(data).hexdigest()}"')
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def _error(self, status: int, code: str) -> None:
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_HEAD(self) -> None:  # noqa: N802 (http.server's names)
        self._answer(False)

    def do_GET(self) -> None:  # noqa: N802
        self._answer(True)


@pytest.fixture(scope="module")
def hub():
    _Hub.files = {("org/llama", "config.json"): json.dumps(LLAMA).encode(),
                  ("org/llama", "model.safetensors.index.json"): json.dumps(INDEX).encode(),
                  ("org/no-config", "README.md"): b"hello"}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def kvcalc(*args: str, env: dict, stdin: str | None = None) -> tuple[int, str, str]:
    """The CLI in a fresh process (huggingface_hub reads its environment when imported)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    done = subprocess.run([sys.executable, "-m", "kvcalc", *args], capture_output=True, text=True, input=stdin,
                          env={**clean, **env}, timeout=60)
    return done.returncode, done.stdout, done.stderr


def test_a_repo_id_fetches_its_config_and_weight_bytes_then_reads_offline(hub, tmp_path):
    cache = {"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_ENDPOINT": hub}
    status, out, err = kvcalc("fit", "org/llama", "--gpu", "h200", "--seq", "8k", "--format", "json", env=cache)
    assert status == 0, err
    (row,) = json.loads(out)["rows"]
    assert row["weights_bytes_per_gpu"] == 16_060_522_496  # the index's total, not params x 2
    assert err == ""  # no progress bars, no client log lines
    assert (tmp_path / "hub" / "models--org--llama").is_dir()  # the standard cache layout
    offline = {**cache, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}
    status, out, err = kvcalc("show", "org/llama", "--format", "json", env=offline)
    assert status == 0, err
    assert json.loads(out)["bytes_per_token"] == 131_072  # 2 x 8 x 128 x 2 B x 32 layers


@pytest.mark.parametrize(("model", "message"), [
    ("org/gated", "org/gated: a gated repo; accept its terms on its page, then give a token (HF_TOKEN"),
    ("org/nothing", "org/nothing: no such repo on http://127.0.0.1:"),
    ("org/llama@v9", "org/llama@v9: org/llama has no revision 'v9'"),
    ("org/no-config", "org/no-config: the repo has no config.json"),
])
def test_hub_failures_are_one_line(hub, tmp_path, model, message):
    status, out, err = kvcalc("show", model, env={"HF_HUB_CACHE": str(tmp_path), "HF_ENDPOINT": hub})
    assert status == 2 and out == "" and err.count("\n") == 1 and message in err


def test_offline_or_unreachable_says_how_to_fetch(tmp_path):
    status, _, err = kvcalc("show", "Qwen/Qwen3-8B", env={"HF_HUB_CACHE": str(tmp_path), "HF_HUB_OFFLINE": "1"})
    assert status == 2 and err.count("\n") == 1
    assert "config.json is not in the Hugging Face cache" in err and "hf download Qwen/Qwen3-8B config.json" in err
    status, _, err = kvcalc("show", "Qwen/Qwen3-8B@v2", env={"HF_HUB_CACHE": str(tmp_path),
                                                              "HF_ENDPOINT": "http://127.0.0.1:9"})
    assert status == 2 and err.count("\n") == 1
    assert "cannot reach http://127.0.0.1:9" in err and "--revision v2" in err and "HF_HUB_OFFLINE=1" in err


def test_a_bundled_name_wins_and_a_bad_name_still_fails_without_the_network():
    assert resolve("Llama-3.1-8B").name == "llama-3.1-8b"
    with pytest.raises(UnknownModelError, match="unknown model 'llama-3.1-8c'; closest: llama-3.1-8b"):
        resolve("llama-3.1-8c")


def safetensors(path: Path, tensors: dict[str, tuple[str, list[int], int]]) -> int:
    """A safetensors file with a header and zeroed data; returns the data bytes."""
    table, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, (dtype, shape, size) in tensors.items():
        table[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    header = json.dumps(table).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(offset))
    return offset


def test_a_checkpoint_folder_reads_its_config_and_states_its_weights(tmp_path):
    folder = tmp_path / "Llama-3.1-8B"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(LLAMA))
    (folder / "model.safetensors.index.json").write_text(json.dumps(INDEX))
    spec = resolve(str(folder))
    assert (spec.name, spec.weights_bytes) == ("llama-3.1-8b", 16_060_522_496)
    assert "model.safetensors.index.json metadata.total_size" in spec.assumptions[-1]
    (folder / "model.safetensors.index.json").unlink()
    data = safetensors(folder / "model.safetensors", {"a": ("BF16", [4, 8], 64), "b": ("F32", [3], 12)})
    assert resolve(str(folder)).weights_bytes == data == 76
    (folder / "model.safetensors").write_bytes(b"\x00" * 4)
    with pytest.raises(SpecError, match="model.safetensors: not a safetensors file"):
        resolve(str(folder))
    (folder / "model.safetensors").unlink()
    (folder / "config.json").unlink()
    with pytest.raises(SpecError, match="is a folder without a config.json"):
        resolve(str(folder))


def test_a_cache_snapshot_folder_is_named_after_its_repo(tmp_path):
    snapshot = tmp_path / "models--meta-llama--Llama-3.1-8B" / "snapshots" / ("c" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps(LLAMA))
    assert resolve(str(snapshot)).name == "llama-3.1-8b"


def test_a_bad_index_is_refused_by_name(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(LLAMA))
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": "big"}}))
    with pytest.raises(SpecError, match=r"model.safetensors.index.json: metadata.total_size: 'big'"):
        resolve(str(tmp_path))


def test_stdin_takes_a_config_or_a_spec():
    status, out, err = kvcalc("show", "-", "--format", "json", env={}, stdin=json.dumps(LLAMA))
    assert status == 0, err
    spec = "name: mine\ndisplay_name: Mine\nnum_layers: 2\nhidden_size: 64\n" \
           "attention: {kind: standard, num_heads: 4, num_kv_heads: 2, head_dim: 16}\n"
    status, out, err = kvcalc("compare", "-", "llama-3.1-8b", "--seq", "1k", "--format", "csv", env={}, stdin=spec)
    assert status == 0, err
    assert "Mine" in out
    status, _, err = kvcalc("show", "-", env={}, stdin="")
    assert status == 2 and "stdin: empty" in err
    status, _, err = kvcalc("show", "-", env={}, stdin="{\"model_type\": ")
    assert status == 2 and err.startswith("kvcalc: error: stdin: line 1") and err.count("\n") == 1


def test_hf_home_holds_the_cache_and_a_token_changes_the_gated_advice(hub, tmp_path):
    """The cache under $HF_HOME/hub, laid out as huggingface_hub lays it out, resolves offline; with
    HF_TOKEN set, a gated repo's refusal says the token has no access rather than asking for one."""
    snapshot = tmp_path / "home" / "hub" / "models--org--cached" / "snapshots" / ("d" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps(LLAMA))
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("d" * 40)
    status, out, err = kvcalc("show", "org/cached", "--format", "json",
                              env={"HF_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1"})
    assert status == 0, err
    assert json.loads(out)["model"] == "cached" and json.loads(out)["bytes_per_token"] == 131_072
    status, _, err = kvcalc("show", "org/gated", env={"HF_HUB_CACHE": str(tmp_path / "c"), "HF_ENDPOINT": hub,
                                                     "HF_TOKEN": "hf_test"})
    assert status == 2 and "org/gated: a gated repo; your token has no access" in err
