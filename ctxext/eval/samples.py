"""One evaluation prompt with everything needed to score it, and the seeding rule.

Every sample is generated from its own random stream, seeded by (seed, task, length,
index), so a prompt never depends on which other samples, methods or lengths are in the
run: methods compared side by side see the same prompts, and a resumed run rebuilds them.
A prompt ends with its answer prefix (the words that start the answer), which a sample
also keeps apart: lm-eval gets it as ``gen_prefix``, placed after a chat template's
assistant start instead of inside the user turn.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Sample:
    task: str
    length: int  # the token budget: prompt + max_new_tokens <= length
    index: int
    prompt: str  # ends with " " + answer_prefix; the model continues it
    references: list[str]
    metric: str  # a name in scoring.METRICS
    max_new_tokens: int
    n_tokens: int = 0  # prompt tokens with the model's tokenizer (special tokens included)
    depth: float | None = None  # needle depth in [0, 1] for single-needle tasks
    meta: dict = field(default_factory=dict)
    answer_prefix: str = ""  # the prompt's closing words that start the answer ("The pass key is")

    def __post_init__(self):
        if self.answer_prefix and not self.prompt.endswith(" " + self.answer_prefix):
            raise ValueError(f"the {self.task} prompt does not end with its answer prefix {self.answer_prefix!r}")

    @property
    def question(self) -> str:
        """The prompt without its answer prefix: ``question + " " + answer_prefix == prompt``."""
        if not self.answer_prefix:
            return self.prompt
        return self.prompt[: -len(" " + self.answer_prefix)]


def sample_rng(seed: int, task: str, length: int, index: int) -> random.Random:
    return random.Random(f"{seed}/{task}/{length}/{index}")


def count_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=True)["input_ids"])


def largest_fitting(build, fits, start: int = 1, limit: int | None = None) -> int:
    """The largest n in [0, limit] with fits(build(n)), fits being monotone (doubling, then bisection)."""
    if not fits(build(0)):
        raise ValueError("even an empty haystack does not fit")
    low, high = 0, max(start, 1)
    while True:
        if limit is not None and high >= limit:
            return limit if fits(build(limit)) else _bisect(build, fits, low, limit)
        if not fits(build(high)):
            return _bisect(build, fits, low, high)
        low, high = high, high * 2


def _bisect(build, fits, low: int, high: int) -> int:
    """The largest n in [low, high) with fits(build(n)), given that low fits and high does not."""
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if fits(build(mid)) else (low, mid)
    return low
