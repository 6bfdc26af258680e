"""kvcalc as a library: the figures the commands print, for notebooks and other tools.

    >>> import kvcalc
    >>> kvcalc.footprint("deepseek-v3", seq_len=131_072).total_bytes
    9210691584

Every function takes a model as the commands do -- a bundled name, a path (spec, config.json, GGUF
file, checkpoint folder), a Hugging Face repo id -- or as data: a spec or config ``dict``, a
transformers ``PretrainedConfig``, or a ``ModelSpec``. Arguments are checked where they enter;
mistakes raise kvcalc's exceptions (``kvcalc.KvcalcError``: ``SpecError``, ``OptionError``,
``UnknownModelError``), never exit the process.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from kvcalc.analytic import Footprint, Layout, Options
from kvcalc.capacity import Fit
from kvcalc.errors import OptionError
from kvcalc.parallel import Parallel
from kvcalc.spec import ModelSpec

Model = str | Path | dict | ModelSpec | Any
"""A bundled name, a path, a repo id, a spec or config mapping, a ``PretrainedConfig``, a spec."""


def load(model: Model) -> ModelSpec:
    """The spec of ``model``: read, checked, with every default it assumed in ``assumptions``."""
    from kvcalc import catalog

    if isinstance(model, ModelSpec):
        return model
    if isinstance(model, Path):
        return catalog.load_path(model)
    if isinstance(model, str):
        return catalog.resolve(model)
    if isinstance(model, dict):
        return catalog.spec_from_data(model, "<dict>", None if "name" in model else "model")
    to_dict = getattr(model, "to_dict", None)
    if callable(to_dict) and hasattr(model, "model_type"):  # a transformers PretrainedConfig
        data = to_dict()
        name = str(getattr(model, "name_or_path", "") or model.model_type).rstrip("/").rsplit("/", 1)[-1]
        from kvcalc.catalog import hf_name

        return catalog.spec_from_data(data, f"<{type(model).__name__}>", hf_name(f"x/{name}"))
    raise OptionError(f"model: {model!r:.60} is not a name, path, repo id, mapping, PretrainedConfig or "
                      "ModelSpec")


def footprint(
    model: Model,
    *,
    seq_len: int,
    batch: int = 1,
    kv_dtype: str = "bf16",
    engine: str | None = None,
    tp: int = 1,
    pp: int = 1,
    dcp: int = 1,
    dp_attention: int = 1,
    layout: str | None = None,
    mtp: bool = False,
    block_size: int | None = None,
    max_num_batched_tokens: int | None = None,
    state_dtype: str | None = None,
) -> Footprint:
    """The exact KV cache of ``batch`` sequences of ``seq_len`` tokens: ``total_bytes``,
    ``bytes_per_token``, ``per_gpu_bytes``, ``state_bytes_per_sequence``, ``request_bytes`` and
    its ``parts`` (``gpu_parts`` per GPU), as ``kvcalc show`` prints them."""
    from kvcalc.analytic import footprint as _footprint

    spec = load(model)
    return _footprint(spec, _options(seq_len, batch, kv_dtype, engine, tp, pp, dcp, dp_attention, layout, mtp,
                                     block_size, max_num_batched_tokens, state_dtype))


def fit(
    model: Model,
    *,
    gpu: str | None = None,
    gpu_mem_bytes: int | None = None,
    seq_len: int = 131_072,
    gpus: int | None = None,
    kv_dtype: str = "bf16",
    weights_dtype: str | None = None,
    engine: str | None = None,
    tp: int = 1,
    pp: int = 1,
    dcp: int = 1,
    dp_attention: int = 1,
    layout: str | None = None,
    mtp: bool = False,
    block_size: int | None = None,
    max_num_batched_tokens: int | None = None,
    state_dtype: str | None = None,
    mem_util: str | None = None,
    reserve_bytes: int | None = None,
    mamba_full_memory_ratio: float | None = None,
) -> Fit:
    """What fits on ``gpu`` (a name from ``kvcalc gpus``, e.g. "h200") or ``gpu_mem_bytes`` per GPU:
    the budget breakdown, ``max_tokens``, ``max_concurrency`` at ``seq_len``, ``max_context``, and the
    engine's own capacity line, as ``kvcalc fit`` prints them. ``gpus`` alone sets tp = gpus / pp."""
    from kvcalc import capacity as _fit
    from kvcalc.hardware import get_gpu

    spec = load(model)
    if gpu_mem_bytes is not None:
        _whole("gpu_mem_bytes", gpu_mem_bytes)
        name = gpu or f"{gpu_mem_bytes:,} B"
    elif gpu is not None:
        card = get_gpu(_text("gpu", gpu))
        name, gpu_mem_bytes = card.display_name, card.memory_bytes
    else:
        raise OptionError("gpu or gpu_mem_bytes: say which GPU (e.g. gpu='h200')")
    options = _options(seq_len, 1, kv_dtype, engine, tp, pp, dcp, dp_attention, layout, mtp, block_size,
                       max_num_batched_tokens, state_dtype)
    if gpus is not None:
        _whole("gpus", gpus)
    options = replace(options, parallel=_fit.check_parallel(options.parallel, gpus))
    if reserve_bytes is not None and (type(reserve_bytes) is not int or reserve_bytes < 0):
        raise OptionError(f"reserve_bytes: {reserve_bytes!r} must be a whole number of bytes, 0 or more")
    if mem_util is not None:
        mem_util = _text("mem_util", str(mem_util) if isinstance(mem_util, float) else mem_util)
    if mamba_full_memory_ratio is not None and (
            isinstance(mamba_full_memory_ratio, bool) or not isinstance(mamba_full_memory_ratio, int | float)
            or not 0 < mamba_full_memory_ratio <= 1000):
        raise OptionError(f"mamba_full_memory_ratio: {mamba_full_memory_ratio!r} must be a number above 0")
    return _fit.fit(spec, options, gpu_name=name, gpu_mem_bytes=gpu_mem_bytes,
                    weights_dtype=None if weights_dtype is None else _text("weights_dtype", weights_dtype),
                    mem_util=mem_util, reserve_bytes=reserve_bytes,
                    state_ratio=None if mamba_full_memory_ratio is None else float(mamba_full_memory_ratio))


def _options(seq_len, batch, kv_dtype, engine, tp, pp, dcp, dp_attention, layout, mtp, block_size,
             max_num_batched_tokens, state_dtype) -> Options:
    """Options from keyword arguments: token counts as ints or text (``"128k"``), the rest checked by
    type here and by range where they are used."""
    if isinstance(seq_len, str):
        from kvcalc.units import parse_tokens

        seq_len = parse_tokens(seq_len)
    for name, value in (("seq_len", seq_len), ("batch", batch), ("tp", tp), ("pp", pp), ("dcp", dcp),
                        ("dp_attention", dp_attention)):
        _whole(name, value)
    if layout is not None:
        try:
            layout = Layout(_text("layout", layout))
        except ValueError:
            raise OptionError(f"layout: {layout!r} is not latent or decompressed") from None
    return Options(seq_len, batch, kv_dtype, layout, mtp, engine, block_size,
                   Parallel(tp=tp, pp=pp, dcp=dcp, dp_attention=dp_attention), max_num_batched_tokens,
                   state_dtype)


def _whole(name: str, value: object) -> None:
    if type(value) is not int or value < 1:
        raise OptionError(f"{name}: {value!r} must be a whole number, at least 1")


def _text(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise OptionError(f"{name}: {value!r} must be a string")
    return value
