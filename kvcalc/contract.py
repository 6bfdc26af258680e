"""What ``--format json`` and ``--format csv`` print, as pydantic models: the output contract.

Every command that computes prints one JSON object::

    {"kvcalc": "0.1.0", "command": "compare", ...command's own keys..., "rows": [...], "notes": [...]}

``rows`` are the command's table as records (``compare``: one per model and length; ``show``: the
cache's parts; ``check``: the figures), ``notes`` what the table prints under it. Numbers are JSON
numbers (bytes and counts exact integers), booleans booleans, a value that does not apply ``null``;
every key is always present. CSV is the same ``rows`` with the keys as header, ``true``/``false`` for
booleans and an empty field for ``null``. ``output.schema.json`` beside this module is the JSON
Schema these models generate (``python -m kvcalc.contract`` writes it); ``kvcalc schema`` prints it.
``import`` (a spec file) and ``plot`` (a picture) print no document.

Imported only by the machine formats: the table path does not pay for pydantic.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

SCHEMA_FILE = "output.schema.json"
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


class _Strict(BaseModel):
    """Frozen, no unknown keys, no coercion (a count given as text is a bug, not a value); every
    field required in the schema, as every key is printed."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, use_attribute_docstrings=True,
                              json_schema_serialization_defaults_required=True)


# --- rows ---------------------------------------------------------------------------------------


class ListRow(_Strict):
    """A bundled model, with its bf16 cache per token (MLA: the latent layout)."""

    name: str
    display_name: str
    attention: str
    """MHA, GQA, MQA, MLA, ..."""
    num_layers: int
    mtp_layers: int
    cache_shape: str
    """What each layer caches, in words (``latent 512 + rope key 64``)."""
    sliding_window: int | None
    """Tokens a sliding layer keeps; null: none slides."""
    sliding_layers: int
    attention_chunk_size: int | None
    chunked_layers: int
    shared_layers: int
    """Layers that reuse another layer's cache and keep none of their own."""
    bytes_per_token: int
    """bf16 bytes one more token adds, over all layers."""
    state_bytes_per_sequence: int
    """Linear-attention and Mamba state one sequence holds at any length (0: none)."""
    params: int | None
    source: str | None
    """The config the spec was read from."""


class PartRow(_Strict):
    """One cached tensor (K, V, latent, rope key, state...) over every layer of one kind."""

    part: str
    layer_kind: str
    span: int | None
    """The window, chunk or compress rate; null: every token."""
    layers: int
    values: int
    """Values per row and layer."""
    bytes_per_token_layer: int
    bytes_per_token: int
    cells: int | None
    """Rows held for all sequences at --seq (tokens after windows and pages); null without --seq."""
    total_bytes: int | None
    """Bytes at --seq and --batch; null without --seq."""


class CompareRow(_Strict):
    """One model at one context length."""

    model: str
    display_name: str
    attention: str
    layout: str
    """kv (standard attention), or the MLA cache layout."""
    kv_dtype: str
    engine: str
    seq_len: int
    batch: int
    mtp_layers: int
    bytes_per_token: int
    total_bytes: int
    """The whole cache for batch sequences of seq_len tokens, one copy."""
    per_gpu_bytes: int
    """What the fullest GPU holds."""
    request_bytes: int
    """What the engine reserves to admit the sequences (vLLM); total_bytes elsewhere."""
    state_bytes_per_sequence: int
    gpus: int
    mha_equivalent_bytes: int


class MeasureRow(_Strict):
    """Real layers built and run: their cache bytes beside the formula's, and timings."""

    model: str
    device: str
    layout: str
    kv_dtype: str
    seq_len: int
    batch: int
    layers: int
    """Real layers measured, all kinds together."""
    tp: int
    rank: int
    analytic_bytes: int
    """The formula's bytes for exactly the layers measured (on this rank)."""
    measured_bytes: int | None
    """Null when the row was not measured (see error)."""
    match: bool | None
    model_bytes: int
    model_bytes_scaled: int | None
    prefill_s: float | None
    decode_s_per_token: float | None
    decode_bytes_per_s: float | None
    error: str | None
    """Why the row was not measured."""
    cuda_allocated_bytes: int | None
    """The CUDA allocator's growth for the caches; null off CUDA."""
    cuda_reserved_bytes: int | None
    cuda_peak_prefill_bytes: int | None


class FitRow(_Strict):
    """The GPU budget and what fits in it."""

    model: str
    display_name: str
    gpu: str
    gpus: int
    engine: str
    kv_dtype: str
    weights_dtype: str
    seq_len: int
    gpu_mem_bytes: int
    mem_util: float
    """vLLM's gpu_memory_utilization or SGLang's mem_fraction_static."""
    usable_bytes: int
    weights_bytes_per_gpu: int
    reserve_bytes: int
    kv_budget_bytes_per_gpu: int
    kv_bytes_per_token_per_gpu: int
    page_tokens: int
    max_tokens: int
    max_concurrency: int
    max_context: int | None
    """Longest context for one sequence; null: any length (every layer slides)."""
    context_capped: bool
    """max_context is the model's max_position_embeddings, not the budget."""
    weights_fit: bool
    smallest_tp: int | None
    """The fewest tensor-parallel GPUs whose weights fit, when these do not."""
    max_num_batched_tokens: int | None
    request_bytes_per_gpu: int
    engine_log: str | None
    """The line the engine logs with these figures."""


class CheckRow(_Strict):
    """One figure an engine's log states, beside kvcalc's from the logged memory."""

    figure: str
    logged: str
    """As the log states it."""
    computed: str
    """The value, or the range the logged memory's rounding allows (``low .. high``)."""
    verdict: Literal["agree", "disagree"]
    source: str
    """The engine source file and function the arithmetic mirrors."""


class VerifyRow(_Strict):
    """One part of one layer kind: transformers' cache (one layer, times the kind's layers) beside
    kvcalc's."""

    part: str
    """kvcalc's part and, in brackets, the transformers cache tensors that hold it (``K (keys)``,
    ``latent (keys)``, ``SSM state (recurrent_states)``; ``no tensor`` when none does); ``TENSOR: no
    kvcalc part`` for a tensor kvcalc has no part for; ``nothing`` for a layer kind that holds nothing
    on either side (KV-shared layers, MLP blocks)."""
    layer_kind: str
    layers: int
    """The full model's layers of this kind."""
    transformers_bytes: int
    kvcalc_bytes: int
    verdict: Literal["agree", "disagree"]


# --- documents ----------------------------------------------------------------------------------


class _Document(_Strict):
    Row: ClassVar[type[BaseModel]]
    kvcalc: str
    """The kvcalc version that printed it."""


class ListDocument(_Document):
    Row = ListRow
    command: Literal["list"]
    rows: list[ListRow]
    notes: list[str]


class ShowDocument(_Document):
    """One model's cache; rows are its parts."""

    Row = PartRow
    command: Literal["show"]
    model: str
    display_name: str
    attention: str
    layout: str
    kv_dtype: str
    engine: str
    mtp_layers: int
    seq_len: int | None
    """--seq; null without it (then every total is null)."""
    batch: int
    gpus: int
    bytes_per_token: int
    state_bytes_per_sequence: int
    mha_equivalent_bytes_per_token: int
    total_bytes: int | None
    request_bytes: int | None
    per_gpu_bytes: int | None
    spec: dict[str, Any]
    """The spec computed with, as a spec file holds it."""
    explain: list[str]
    """The derivation of every figure, as ``show --explain`` prints it."""
    gpu_parts: list[PartRow]
    """What the fullest GPU holds, part by part."""
    rows: list[PartRow]
    notes: list[str]


class CompareDocument(_Document):
    Row = CompareRow
    command: Literal["compare"]
    rows: list[CompareRow]
    notes: list[str]


class MeasureDocument(_Document):
    Row = MeasureRow
    command: Literal["measure"]
    rows: list[MeasureRow]
    notes: list[str]


class FitDocument(_Document):
    """One row: the budget and what fits."""

    Row = FitRow
    command: Literal["fit"]
    rows: list[FitRow]
    notes: list[str]


class CheckDocument(_Document):
    """A start-up log checked; rows are its figures."""

    Row = CheckRow
    command: Literal["check"]
    engine: str
    version: str | None
    """The engine version the log states (SGLang logs none)."""
    model: str
    """The spec kvcalc computed with."""
    logged_model: str
    settings: dict[str, str]
    """What kvcalc read from the log, and assumed where it is silent, in words."""
    agrees: bool
    """Every figure agrees (the exit status is 0)."""
    rows: list[CheckRow]
    notes: list[str]


class VerifyDocument(_Document):
    """kvcalc's --engine transformers figure checked against transformers' own cache; rows are its parts."""

    Row = VerifyRow
    command: Literal["verify"]
    model: str
    model_type: str
    seq_len: int
    built_layers: int
    """Layers of the short model transformers built and ran."""
    agrees: bool
    """Every part agrees (the exit status is 0)."""
    rows: list[VerifyRow]
    notes: list[str]


Document = Annotated[
    ListDocument | ShowDocument | CompareDocument | MeasureDocument | FitDocument | CheckDocument
    | VerifyDocument,
    Field(discriminator="command"),
]
_DOCUMENT = TypeAdapter(Document)


def document(data: dict[str, Any]) -> _Document:
    """``data`` checked against its command's model (a mismatch is a bug: ValidationError)."""
    return _DOCUMENT.validate_python(data)


def schema() -> dict[str, Any]:
    """The JSON Schema of every document, one ``oneOf`` branch per command (keyed by ``command``)."""
    generated = _DOCUMENT.json_schema(mode="serialization")
    return {"$schema": JSON_SCHEMA_DIALECT, "title": "kvcalc --format json output",
            "description": "One object per command run: kvcalc, command, rows, notes and the "
                           "command's own keys.", **generated}


def schema_text() -> str:
    """``schema()`` as the shipped file holds it."""
    return json.dumps(schema(), indent=2) + "\n"


if __name__ == "__main__":  # python -m kvcalc.contract > kvcalc/output.schema.json
    print(schema_text(), end="")
