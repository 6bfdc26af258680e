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

from kvcalc.errors import SpecError, UnknownModelError
from kvcalc.load import parse_data, read_text
from kvcalc.spec import ModelSpec

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


def resolve(model: str) -> ModelSpec:
    """A MODEL argument: a bundled name (case-insensitive) or a path to a spec file."""
    if _looks_like_path(model):
        return load_spec_file(Path(model))
    names = bundled_names()
    key = model.lower()
    if key in names:
        return load_bundled(key)
    close = difflib.get_close_matches(key, names, n=3, cutoff=0.5)
    hint = f"; closest: {', '.join(close)}" if close else ""
    raise UnknownModelError(f"unknown model {model!r}{hint} (see `kvcalc list`)")


def load_spec_file(path: Path, name: str | None = None) -> ModelSpec:
    """A spec from a file a user gives (size-capped, strictly parsed: see ``load.py``)."""
    return parse_spec(read_text(path), str(path), name)


def parse_spec(text: str, origin: str, name: str | None = None) -> ModelSpec:
    """A spec from text, by content: a kvcalc spec, a Hugging Face config.json, or a DeepSeek
    reference config. ``origin`` names the file in error messages; ``name`` overrides the name an
    imported config gets from its path."""
    data = parse_data(text, origin)
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


def _specs_dir():
    return resources.files("kvcalc") / "model_specs"


def _is_spec(entry) -> bool:
    return entry.name.endswith(".yaml") and entry.is_file()


def _looks_like_path(model: str) -> bool:
    return "/" in model or "\\" in model or model.endswith(_SPEC_SUFFIXES) or Path(model).exists()
