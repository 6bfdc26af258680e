"""Specs by name (the bundled ``model_specs/``) or by path (the user's own YAML).

YAML is read with safe loading only. Every failure becomes one line naming the file, the field and
the value.
"""

from __future__ import annotations

import difflib
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from kvcalc.errors import SpecError, UnknownModelError
from kvcalc.spec import ModelSpec

_SPEC_SUFFIXES = (".yaml", ".yml", ".json")
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def bundled_names() -> list[str]:
    """Names of the bundled models, sorted."""
    return sorted(p.name.removesuffix(".yaml") for p in _specs_dir().iterdir() if _is_spec(p))


def bundled_specs() -> list[ModelSpec]:
    return [load_bundled(name) for name in bundled_names()]


def load_bundled(name: str) -> ModelSpec:
    entry = _specs_dir() / f"{name}.yaml"
    return parse_spec(entry.read_text(encoding="utf-8"), f"model_specs/{name}.yaml")


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


def load_spec_file(path: Path) -> ModelSpec:
    if path.is_dir():
        raise SpecError(f"{path}: is a folder, not a spec file")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UnknownModelError(f"{path}: no such file") from None
    except UnicodeDecodeError:
        raise SpecError(f"{path}: not a text file (it is not valid UTF-8)") from None
    except OSError as e:
        raise SpecError(f"{path}: cannot read ({e.strerror})") from None
    return parse_spec(text, str(path))


def parse_spec(text: str, origin: str) -> ModelSpec:
    """Validate spec text (YAML or JSON); ``origin`` names it in error messages."""
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        raise SpecError(f"{origin}: {_yaml_problem(e)}") from None
    if not isinstance(data, dict):
        raise SpecError(
            f"{origin}: expected a mapping of spec fields, got {type(data).__name__} {data!r:.40}"
        )
    try:
        return ModelSpec.model_validate(data)
    except ValidationError as e:
        raise SpecError(f"{origin}: {_first_problem(e)}") from None


def _specs_dir():
    return resources.files("kvcalc") / "model_specs"


def _is_spec(entry) -> bool:
    return entry.name.endswith(".yaml") and entry.is_file()


def _looks_like_path(model: str) -> bool:
    return "/" in model or "\\" in model or model.endswith(_SPEC_SUFFIXES) or Path(model).exists()


def _yaml_problem(e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    return f"{where}malformed YAML ({problem})"


def _first_problem(e: ValidationError) -> str:
    errors = e.errors()
    first = errors[0]
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    field = _field_name(first["loc"])
    kind = first["type"]
    if kind == "missing":
        return f"{field}: required field is missing{more}"
    if kind == "union_tag_invalid":
        tags = first["ctx"]["expected_tags"]
        return f"{field}.kind: {first['ctx']['tag']!r} is not one of {tags}{more}"
    if kind == "union_tag_not_found":
        return f"{field}.kind: required field is missing (standard or mla){more}"
    if kind == "extra_forbidden":
        return f"{field}: unknown field (value {_show(first['input'])}){more}"
    message = first["msg"].removeprefix("Value error, ")
    if kind == "value_error":
        return f"{field}: {message}{more}"
    return f"{field}: {_show(first['input'])}: {message}{more}"


def _field_name(loc: tuple) -> str:
    """Dotted field path, without pydantic's union tags (``attention.mla.x`` -> ``attention.x``)."""
    parts = [str(p) for i, p in enumerate(loc) if not (i and loc[i - 1] == "attention")]
    return ".".join(parts) or "spec"


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
