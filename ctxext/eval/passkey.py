"""Passkey retrieval in the Landmark / PI / YaRN format.

A five-digit key hidden at a given depth in repeated filler text; the model reads the
prompt once and decodes greedily with its KV cache; the answer is right when the first
integer it writes is the key. Prompts are sized with the model's own tokenizer so that
prompt plus answer fit the requested length. Depths come from a grid (one per sample,
cycling) or are drawn at random; keys are seeded per sample.
"""

from __future__ import annotations

from dataclasses import dataclass

from .constants import DEFAULT_DEPTHS
from .generation import greedy_generate
from .haystack import NOISE
from .samples import Sample, count_tokens, largest_fitting, sample_rng
from .scoring import first_integer
from .task import GENERATE, Task

INTRO = (
    "There is an important info hidden inside a lot of irrelevant text. "
    "Find it and memorize them. I will quiz you about the important information there."
)
KEY_LINE = "The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = "What is the pass key?"
ANSWER_PREFIX = "The pass key is"
ANSWER_TOKENS = 10


@dataclass
class PasskeyResult:
    length: int
    depth: float
    n_tokens: int
    expected: int
    generated: str
    correct: bool


def _compose(n_filler: int, depth: float, key: int) -> str:
    before = round(n_filler * depth)
    parts = [INTRO, " ".join([NOISE] * before), KEY_LINE.format(key=key), " ".join([NOISE] * (n_filler - before))]
    return "\n".join([part for part in parts if part] + [f"{QUESTION} {ANSWER_PREFIX}"])


def build_prompt(tokenizer, length: int, depth: float, key: int, answer_budget: int = ANSWER_TOKENS) -> tuple[str, int]:
    """The longest prompt with the key at ``depth`` (0..1) whose tokens + answer fit ``length``."""
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}")
    budget = length - answer_budget
    try:
        n_filler = largest_fitting(lambda n: _compose(n, depth, key), lambda t: count_tokens(tokenizer, t) <= budget)
    except ValueError:
        raise ValueError(f"length {length} is too short for a passkey prompt") from None
    text = _compose(n_filler, depth, key)
    return text, count_tokens(tokenizer, text)


def make_sample(tokenizer, length: int, index: int, seed: int, depths=DEFAULT_DEPTHS) -> Sample:
    """Sample ``index``: depth ``depths[index % len(depths)]``, or a random one when ``depths`` is None."""
    rng = sample_rng(seed, "passkey", length, index)
    key = rng.randint(10000, 99999)
    depth = rng.random() if depths is None else float(depths[index % len(depths)])
    text, n_tokens = build_prompt(tokenizer, length, depth, key)
    return Sample(
        "passkey",
        length,
        index,
        text,
        [str(key)],
        "first_integer",
        ANSWER_TOKENS,
        n_tokens,
        depth,
        answer_prefix=ANSWER_PREFIX,
    )


TASK = Task("passkey", GENERATE, "passkey", ANSWER_TOKENS, "first_integer", has_depths=True, make=make_sample)


def run_passkey(model, tokenizer, length: int, depths, seed: int = 0) -> list[PasskeyResult]:
    """Greedy passkey retrieval at one length, one seeded key at each of ``depths`` (fractions)."""
    samples = [make_sample(tokenizer, length, index, seed, depths) for index in range(len(depths))]
    return run_samples(model, tokenizer, samples)


def run_samples(model, tokenizer, samples: list[Sample]) -> list[PasskeyResult]:
    """Greedy passkey retrieval on samples built beforehand (``ctxext passkey`` builds them before the model loads)."""
    results = []
    for sample in samples:
        generated, _ = greedy_generate(model, tokenizer, sample.prompt, sample.max_new_tokens)
        key = int(sample.references[0])
        results.append(
            PasskeyResult(sample.length, sample.depth, sample.n_tokens, key, generated, first_integer(generated) == key)
        )
    return results
