"""Bytes per GPU under tensor (tp), pipeline (pp), decode-context (dcp) and data-parallel attention.

KV-CACHE-FACTS section 4:
- tp splits standard attention's KV heads: each rank holds max(1, n_kv // tp), so heads are
  replicated when tp > n_kv (vLLM: ``num_kv_heads // tp_size``, at least 1).
- The MLA latent is not split: every attention-TP rank holds all of it (vLLM reports one KV head on
  every rank). Decompressed MLA splits by heads like MHA.
- dp-attention (SGLang ``--enable-dp-attention``, vLLM DP attention): the tp ranks form groups that
  serve different sequences; attention TP inside a group is tp / dp, and each group holds only its
  own sequences.
- dcp splits the tokens of a sequence: each rank holds ceil(seq_len / dcp) of them.
- pp splits the layers into contiguous stages as vLLM's ``get_pp_indices`` does (the remainder goes to
  the stages just before the last); MTP layers sit on the last stage. The largest stage is reported.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from kvcalc.errors import OptionError
from kvcalc.spec import LayerKind, ModelSpec, RecurrentKind, RecurrentState, StandardAttention


@dataclass(frozen=True)
class Parallel:
    tp: int = 1
    pp: int = 1
    dcp: int = 1
    dp_attention: int = 1

    @property
    def attention_tp(self) -> int:
        """Ranks that share one sequence's attention."""
        return self.tp // self.dp_attention

    @property
    def is_single_gpu(self) -> bool:
        return self == Parallel()

    def check(self, spec: ModelSpec) -> None:
        """Reject combinations no engine runs, naming the option and the values."""
        for option, value in self._options():
            if value < 1:
                raise OptionError(f"{option}: {value} must be at least 1")
        if self.tp % self.dp_attention:
            raise OptionError(
                f"--dp-attention {self.dp_attention}: must divide --tp {self.tp} "
                "(attention data-parallel groups are made of tp ranks)"
            )
        if self.tp % self.dcp:
            raise OptionError(f"--dcp {self.dcp}: must divide --tp {self.tp} (DCP reuses the TP ranks)")
        blocks = spec.num_layers // spec.sublayers
        if self.pp > blocks:
            raise OptionError(f"--pp {self.pp}: more stages than {spec.name}'s {blocks} layers")
        for attention in spec.attentions:
            self._check_heads(spec.name, attention)
        if spec.recurrent is not None:
            self._check_mixer(spec.name, spec.recurrent)

    def _check_heads(self, name: str, attention) -> None:
        heads, tp = attention.num_heads, self.attention_tp
        if heads % tp:
            raise OptionError(f"--tp {self.tp}: attention tp {tp} does not divide {name}'s {heads} "
                              "query heads")
        if isinstance(attention, StandardAttention):
            kv = attention.num_kv_heads
            if (tp > kv and tp % kv) or (tp <= kv and kv % tp):
                raise OptionError(
                    f"--tp {self.tp}: attention tp {tp} and {name}'s {kv} KV heads must "
                    "divide one another"
                )

    def _check_mixer(self, name: str, mixer: RecurrentState) -> None:
        """The engines split a mixer's heads evenly across the attention tp ranks (vLLM's and
        SGLang's mamba_utils ``divide``); Mamba2's groups split too, or are replicated to tp groups
        when they divide tp."""
        tp = self.attention_tp
        heads, field = {
            RecurrentKind.GATED_DELTANET: (mixer.num_k_heads, "key heads (num_k_heads)"),
            RecurrentKind.MAMBA: (mixer.intermediate_size, "inner channels (intermediate_size)"),
        }.get(mixer.kind, (mixer.num_heads, "heads (num_heads)"))
        if heads % tp:
            raise OptionError(f"--tp {self.tp}: attention tp {tp} does not divide {name}'s {heads} "
                              f"{mixer.kind} {field}")
        groups = mixer.n_groups
        if mixer.kind is RecurrentKind.MAMBA2 and groups % tp and tp % groups:
            raise OptionError(f"--tp {self.tp}: attention tp {tp} and {name}'s {groups} Mamba2 groups "
                              "(n_groups) must divide one another")

    def _options(self):
        return [("--tp", self.tp), ("--pp", self.pp), ("--dcp", self.dcp),
                ("--dp-attention", self.dp_attention)]


def stages(num_layers: int, pp: int) -> list[range]:
    """Contiguous layer ranges per pipeline stage, as vLLM's ``get_pp_indices``."""
    sizes = [num_layers // pp] * pp
    for i in range(2, num_layers % pp + 2):
        sizes[-i] += 1
    starts = [sum(sizes[:i]) for i in range(pp)]
    return [range(s, s + n) for s, n in zip(starts, sizes, strict=True)]


def stage_layer_counts(spec: ModelSpec, pp: int, mtp: int) -> list[Counter[LayerKind]]:
    """Layer kinds on each stage; the MTP layers (full attention) on the last."""
    if pp == 1:
        counts = Counter(spec.layer_counts)
        counts[LayerKind.FULL] += mtp
        return [counts]
    kinds, per_block = spec.layer_kinds, spec.sublayers
    blocks = stages(spec.num_layers // per_block, pp)  # stages split decoder layers, sublayers together
    result = [Counter(kinds[i] for i in range(r.start * per_block, r.stop * per_block)) for r in blocks]
    result[-1][LayerKind.FULL] += mtp
    return result


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)
