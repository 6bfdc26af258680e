"""kvcalc: exact KV-cache memory for MHA, GQA, MQA and MLA models, and the recurrent state of
linear-attention and Mamba hybrids.

The library (``kvcalc.api``, loaded on first use so that ``import kvcalc`` stays light)::

    import kvcalc
    spec = kvcalc.files("deepseek-v3")                     # a name, path, repo id, dict, PretrainedConfig
    kvcalc.footprint(spec, seq_len=131_072).total_bytes   # exact bytes
    kvcalc.capacity("llama-3.1-70b", gpu="h200", gpus=2, seq_len=32_768).max_concurrency
"""

__version__ = "0.1.0"

__all__ = ["Fit", "Footprint", "KvcalcError", "ModelSpec", "OptionError", "SpecError", "UnknownModelError",
           "fit", "footprint", "load"]

_WHERE = {"load": "kvcalc.api", "footprint": "kvcalc.api", "fit": "kvcalc.api",
          "Footprint": "kvcalc.analytic", "Fit": "kvcalc.capacity", "ModelSpec": "kvcalc.spec",
          "KvcalcError": "kvcalc.errors",
          "OptionError": "kvcalc.errors", "SpecError": "kvcalc.errors", "UnknownModelError": "kvcalc.errors"}


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'kvcalc' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_WHERE[name]), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
