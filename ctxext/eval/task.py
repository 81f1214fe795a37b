"""What an evaluation task is: :class:`Task`, one record in the task registry (``tasks.py``).

A task is of one of two kinds: ``generate`` (a prompt, a greedy answer of at most ``max_new_tokens``,
scored by ``metric``) or ``nll`` (sliding windows of a corpus, scored by their token-weighted negative
log-likelihood: perplexity). The report, the summary and the run loop branch on the kind, never on a
task's name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .samples import Sample

GENERATE = "generate"
NLL = "nll"


@dataclass(frozen=True)
class Task:
    name: str
    kind: str  # GENERATE or NLL
    family: str  # "passkey", "ruler" or "perplexity": the report section the task belongs to
    max_new_tokens: int = 0  # the generation budget (generate tasks)
    metric: str | None = None  # a scorer in scoring.METRICS (generate tasks)
    has_depths: bool = False  # one needle at the sample's depth: the task fills a depth x length heatmap
    comparable: bool = True  # False: the haystack differs from the published task's, scores are not comparable
    # (tokenizer, length, index, seed, depths) -> Sample, for generate tasks; raises ValueError for a length too short
    make: Callable[..., Sample] | None = None

    @property
    def generates(self) -> bool:
        return self.kind == GENERATE
