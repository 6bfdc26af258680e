"""Specs by name (the bundled ``model_specs/``) or by path (the user's own YAML, or a Hugging Face
or DeepSeek reference config, recognised by content).

YAML is read with safe loading only. Every failure becomes one line naming the file, the field and
the value.
"""

from __future__ import annotations

import difflib
from importlib import resources
from pathlib import Path

import yaml

from kvcalc import hub
from kvcalc.errors import SpecError, UnknownModelError
from kvcalc.files import parse_data, read_text
from kvcalc.spec import MAX_PARAMS, ModelSpec

_SPEC_SUFFIXES = (".yaml", ".yml", ".json")
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def bundled_names() -> list[str]:
    """Names of the bundled models, sorted."""
    return sorted(p.name.removesuffix(".yaml") for p in _specs_dir().iterdir() if _is_spec(p))


def bundled_specs() -> list[ModelSpec]:
    return [load_bundled(name) for name in bundled_names()]


def load_bundled(name: str) -> ModelSpec:
    """A bundled spec. Its file is trusted: the test suite validates every one against the schema,
    so loading skips pydantic (``ModelSpec`` still enforces every invariant)."""
    text = (_specs_dir() / f"{name}.yaml").read_text(encoding="utf-8")
    return ModelSpec.from_dict(yaml.load(text, Loader=_Loader))


STDIN = "-"
"""The MODEL argument that reads a spec or config from standard input."""


def resolve(model: str) -> ModelSpec:
    """A MODEL argument: ``-`` (standard input), a bundled name (case-insensitive; it wins over any
    other reading), a path (a spec or config file, a GGUF file, a checkpoint or cache snapshot
    folder), or a Hugging Face repo id ``org/name[@revision]``."""
    if model == STDIN:
        return _from_stdin()
    names = bundled_names()
    key = model.lower()
    if key in names:
        return load_bundled(key)
    path = Path(model)
    if path.exists() or (_looks_like_path(model) and not hub.is_repo_id(model)):
        return load_path(path)
    if hub.is_repo_id(model):
        return _from_hub(model)
    close = difflib.get_close_matches(key, names, n=3, cutoff=0.5)
    hint = f"; closest: {', '.join(close)}" if close else ""
    raise UnknownModelError(f"unknown model {model!r}{hint} (see `kvcalc list`; a Hugging Face repo id is "
                            "org/name)")


def load_path(path: Path) -> ModelSpec:
    """A spec from a path: a folder's config (``config.json``, or DeepSeek's reference
    ``params.json``), a GGUF file, or a spec or config file."""
    if path.is_dir():
        return _from_folder(path)
    if path.suffix.lower() == ".gguf":
        from kvcalc import gguf  # the gguf package: only for GGUF files

        return gguf.spec_from_gguf(path)
    return load_spec_file(path)


def load_spec_file(path: Path, name: str | None = None) -> ModelSpec:
    """A spec from a file a user gives (size-capped, strictly parsed: see ``files.py``)."""
    return parse_spec(read_text(path), str(path), name)


def parse_spec(text: str, origin: str, name: str | None = None, *, as_json: bool | None = None) -> ModelSpec:
    """A spec from text, by content: a kvcalc spec, a Hugging Face config.json, or a DeepSeek
    reference config. ``origin`` names the file in error messages; ``name`` overrides the name an
    imported config gets from its path; ``as_json`` says how to parse it (None: by the origin's
    suffix)."""
    return spec_from_data(parse_data(text, origin, as_json=as_json), origin, name)


def spec_from_data(data: object, origin: str, name: str | None = None) -> ModelSpec:
    """A spec from parsed data (a mapping): a kvcalc spec, a Hugging Face config or a DeepSeek
    reference config, recognised by content."""
    if not isinstance(data, dict):
        raise SpecError(
            f"{origin}: expected a mapping of spec fields, got {type(data).__name__} {data!r:.40}"
        )
    from kvcalc import hf  # config import and pydantic: only for files a user gives

    if hf.is_hf_config(data):
        return hf.spec_from_hf(data, origin, hf.name_from_origin(origin) if name is None else name)
    if hf.is_reference_config(data):
        return hf.spec_from_reference(data, origin, hf.name_from_origin(origin) if name is None else name)
    if name is not None:
        data = {**data, "name": name}
    from kvcalc.schema import validate_spec

    return validate_spec(data, origin)


_stdin_text: str | None = None


def _from_stdin() -> ModelSpec:
    """Standard input, read once (a command given ``-`` twice reads the same text): JSON when it
    starts with ``{``, else YAML."""
    global _stdin_text
    if _stdin_text is None:
        _stdin_text = read_text(Path("/dev/stdin"))
    if not _stdin_text.strip():
        raise SpecError("stdin: empty (give a spec or config.json on standard input)")
    return parse_spec(_stdin_text, "stdin", "stdin", as_json=_stdin_text.lstrip().startswith("{"))


def _from_folder(folder: Path) -> ModelSpec:
    """A checkpoint or Hugging Face cache snapshot folder: its config.json (or the params.json of
    DeepSeek's reference code), with the weight bytes its safetensors state."""
    for candidate in ("config.json", "params.json"):
        if (folder / candidate).is_file():
            spec = load_spec_file(folder / candidate)
            return _with_weights(spec, _local_weights(folder))
    raise SpecError(f"{folder}: is a folder without a config.json (or DeepSeek's params.json)")


def _from_hub(model: str) -> ModelSpec:
    """A repo id's config.json, from the cache or the Hub (``hub.py``), with the weight bytes its
    safetensors index states."""
    config, index = hub.fetch(model)
    m = hub.REPO_ID.match(model)
    spec = parse_spec(config, f"{model}/{hub.CONFIG}", hf_name(m["repo"]), as_json=True)
    source = f"https://huggingface.co/{m['repo']}/blob/{m['revision'] or 'main'}/{hub.CONFIG}"
    weights = None
    if index is not None:
        origin = f"{model}/{hub.INDEX}"
        weights = _index_total(parse_data(index, origin), origin)
    return _with_weights(spec.replace(source=source), weights)


def hf_name(repo: str) -> str:
    """A catalog-style name for a repo: ``Qwen/Qwen3-8B`` -> qwen3-8b."""
    from kvcalc import hf

    return hf.name_from_origin(repo.split("/")[-1] + ".json")


def _with_weights(spec: ModelSpec, weights: tuple[int, str] | None) -> ModelSpec:
    if weights is None:
        return spec
    total, source = weights
    said = f"weights {total:,} B as the checkpoint states them ({source})"
    return spec.replace(weights_bytes=total, assumptions=(*spec.assumptions, said))


def _local_weights(folder: Path) -> tuple[int, str] | None:
    """The checkpoint's weight bytes: its safetensors index's total, or a single file's tensors."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return _index_total(parse_data(read_text(index), str(index)), str(index))
    single = folder / "model.safetensors"
    if single.is_file():
        return _safetensors_bytes(single)
    return None


def _index_total(data: object, origin: str) -> tuple[int, str]:
    total = data.get("metadata", {}).get("total_size") if isinstance(data, dict) else None
    if isinstance(data, dict) and isinstance(data.get("metadata"), dict) and total is None:
        raise SpecError(f"{origin}: metadata.total_size: missing")
    if type(total) is not int or not 1 <= total <= 8 * MAX_PARAMS:
        raise SpecError(f"{origin}: metadata.total_size: {total!r}: expected the checkpoint's bytes")
    return total, "model.safetensors.index.json metadata.total_size"


def _safetensors_bytes(path: Path) -> tuple[int, str]:
    """The tensor bytes of one safetensors file: the end of its last tensor, from its header (an
    8-byte little-endian length, then a JSON table of dtype, shape and data_offsets)."""
    import json
    import struct

    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise SpecError(f"{path}: not a safetensors file (shorter than its header)")
        (length,) = struct.unpack("<Q", head)
        if not 2 <= length <= 100 << 20:
            raise SpecError(f"{path}: not a safetensors file (a header of {length:,} B)")
        try:
            table = json.loads(f.read(length))
            ends = [t["data_offsets"][1] for k, t in table.items() if k != "__metadata__"]
        except (ValueError, TypeError, KeyError, IndexError):
            raise SpecError(f"{path}: not a safetensors file (its header is not a tensor table)") from None
    if not ends or not all(type(e) is int and e >= 0 for e in ends):
        raise SpecError(f"{path}: not a safetensors file (no tensor offsets)")
    return max(ends), "model.safetensors' tensor table"


def _specs_dir():
    return resources.files("kvcalc") / "model_specs"


def _is_spec(entry) -> bool:
    return entry.name.endswith(".yaml") and entry.is_file()


def _looks_like_path(model: str) -> bool:
    return "/" in model or "\\" in model or model.endswith(_SPEC_SUFFIXES) or Path(model).exists()
