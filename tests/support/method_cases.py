"""The one table of example parameters per method, for the tests.

Every method in ``ctxext.list_methods()`` has exactly one :class:`MethodCase` in
:data:`CASES` (``test_method_table.py`` checks this both ways, and that each ``kind`` matches
the registry). Test files take their method lists and parameters from here (filtered by kind
or by a named variant) instead of keeping lists of their own. The values suit the tiny models
of ``support/models.py`` (native length 64).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from support.models import NATIVE


@dataclass(frozen=True)
class MethodCase:
    """Example parameters of one method for the tiny test models.

    ``params``: what tests use by default; windows and chunks are well below the native length,
    so they act on the tiny models. ``roundtrip_params``: what save/reload tests use; a
    non-default value where the method has a knob that the reload must carry (left out, it is
    ``params``). ``identity_params``: parameters under which the method changes nothing;
    for rope methods once the factor is forced to 1, for attention methods on inputs up to
    ``identity_length`` tokens. ``blends_frequencies``: the rope method mixes interpolated
    and original frequencies, so at factor 1 it is the identity only to within fp32 rounding.
    """

    method: str
    kind: str  # "rope" or "attention", as ctxext.get_method(method).kind
    factor: float
    params: dict[str, Any] = field(default_factory=dict)
    roundtrip_params: dict[str, Any] | None = None  # left out: the same as params
    identity_params: dict[str, Any] = field(default_factory=dict)
    identity_length: int | None = None
    blends_frequencies: bool = False

    def __post_init__(self):
        if self.kind not in ("rope", "attention"):
            raise ValueError(f"{self.method}: kind must be 'rope' or 'attention', not {self.kind!r}")
        if (self.identity_length is None) != (self.kind == "rope"):
            raise ValueError(f"{self.method}: identity_length is for attention methods (and needed by them)")
        if self.roundtrip_params is None:
            object.__setattr__(self, "roundtrip_params", self.params)


ROPE_FACTOR = 4
ATTENTION_FACTOR = 3

CASES: dict[str, MethodCase] = {
    case.method: case
    for case in [
        # ---- rope methods ----
        MethodCase("pi", "rope", ROPE_FACTOR),
        MethodCase("ntk", "rope", ROPE_FACTOR),
        MethodCase("yarn", "rope", ROPE_FACTOR, roundtrip_params={"beta_fast": 16.0}, blends_frequencies=True),
        MethodCase("llama3", "rope", ROPE_FACTOR, blends_frequencies=True),
        # long_factor has no default; 1.0 rescales nothing
        MethodCase("longrope", "rope", ROPE_FACTOR, params={"long_factor": 2.0}, identity_params={"long_factor": 1.0}),
        MethodCase("dynamic-ntk", "rope", ROPE_FACTOR, roundtrip_params={"alpha": 2.0}),
        MethodCase("dynamic-yarn", "rope", ROPE_FACTOR, blends_frequencies=True),
        # ---- attention methods: identity_params cannot act on inputs up to identity_length ----
        MethodCase(
            "string",
            "attention",
            ATTENTION_FACTOR,
            params=dict(shifted_offset=21, local_value=5),
            identity_params=dict(shifted_offset=200, local_value=5),
            identity_length=150,
        ),
        # top-k middle tokens from layer 1 of the 2 (layer 0 keeps the plain Lambda mask); with a window of L
        # there is no middle token up to L tokens, so top_k cannot act there
        MethodCase(
            "lm-infinite",
            "attention",
            ATTENTION_FACTOR,
            params=dict(n_global=3, window=16, top_k=3, top_k_from_layer=1),
            roundtrip_params=dict(n_global=3, window=16, top_k=3, top_k_from_layer=1, top_k_distance=40),
            identity_params=dict(window=NATIVE, n_global=0, top_k=3, top_k_from_layer=0),
            identity_length=NATIVE,
        ),
        # 3 sinks, window 12, blocks of 4, 2 retrieved: a span of 26 positions. Up to the span every candidate block is
        # kept at its true place (plain causal attention): with top_k 10 that is 58 tokens and 10 retrieved blocks
        MethodCase(
            "block-retrieval",
            "attention",
            ATTENTION_FACTOR,
            params=dict(n_sink=3, window=12, block_size=4, top_k=2),
            identity_params=dict(n_sink=3, window=12, block_size=4, top_k=10),
            identity_length=58,
        ),
        MethodCase(
            "self-extend",
            "attention",
            ATTENTION_FACTOR,
            params=dict(group_size=3, window=12),
            identity_params=dict(group_size=1, window=12),
            identity_length=150,
        ),
        MethodCase(
            "dca",
            "attention",
            ATTENTION_FACTOR,
            params=dict(chunk_size=48, local_window=8, temperature=True),
            identity_params=dict(chunk_size=NATIVE, local_window=1),
            identity_length=NATIVE - 1,
        ),
        MethodCase(
            "ms-poe",
            "attention",
            ATTENTION_FACTOR,
            params=dict(min_ratio=1.2, max_ratio=1.8, start_layer=1),
            identity_params=dict(min_ratio=1.0, max_ratio=1.0),
            identity_length=150,
        ),
        # leaky (fractional cached positions) by default; plain ReRoPE is the identity up to window + 1 tokens
        # (distance w scores as w), and log_scaling changes nothing up to L tokens
        MethodCase(
            "rerope",
            "attention",
            ATTENTION_FACTOR,
            params=dict(window=12, leaky=2.5),
            roundtrip_params=dict(window=12, leaky=2.5, log_scaling=True),
            identity_params=dict(window=NATIVE - 1, log_scaling=True),
            identity_length=NATIVE,
        ),
        # noise on (the default); positions change only beyond L tokens, so GALI is the identity up to L
        MethodCase(
            "gali",
            "attention",
            ATTENTION_FACTOR,
            params=dict(local_window=8),
            roundtrip_params=dict(local_window=8, std_base=0.5, noise_seed=3),
            identity_params=dict(local_window=8),
            identity_length=NATIVE,
        ),
    ]
}


def methods_of_kind(kind: str) -> list[str]:
    """Sorted names of the table's methods of one kind ("rope" or "attention")."""
    return sorted(name for name, case in CASES.items() if case.kind == kind)


ROPE_METHODS = methods_of_kind("rope")
ATTENTION_METHODS = methods_of_kind("attention")
