"""Why an answer missed: each generated answer sorted into one kind of miss, from the answer text alone.

The kinds, in the order they are tested: ``empty``; ``repeats the question`` (the answer restates the
task's question or answer prefix instead of answering); ``loop`` (a phrase of three or more words repeated
three times or more); ``wrong value`` (an answer of the needle's shape, a number or an id, but not the one
asked for); ``partial`` (some of several references found); ``other text`` (prose that answers nothing).
A correct answer is ``hit``. Reports count the kinds per configuration, so a table says how a method fails.
"""

from __future__ import annotations

import re
from collections import Counter

from .scoring import postprocess_pred

HIT, EMPTY, QUESTION, LOOP, WRONG, PARTIAL, OTHER = (
    "hit",
    "empty",
    "repeats the question",
    "loop",
    "wrong value",
    "partial",
    "other text",
)
# phrases of the tasks' questions (passkey.QUESTION, the RULER templates): an answer made of them restates the task
QUESTION_PHRASES = (
    "what is the pass key",
    "special magic",
    "mentioned in the provided text",
    "what are all the",
    "memorize",
    "hidden within the following text",
    "find all variables",
    "i will quiz you",
)


def _repeats_a_phrase(text: str, size: int = 3, times: int = 3) -> bool:
    words = re.findall(r"\w+", text.lower())
    grams = Counter(tuple(words[i : i + size]) for i in range(len(words) - size + 1))
    return any(count >= times for count in grams.values())


def _value_shaped(text: str, references: list[str]) -> bool:
    """The answer holds a value of the references' shape (digits of their length, or a uuid) that is not one."""
    found = re.findall(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|\d+", text.lower())
    lengths = {len(ref) for ref in references}
    return any(len(value) in lengths or len(value) >= 4 for value in found if value not in references)


def classify(generated: str, references: list[str], score: float) -> str:
    """The kind of answer ``generated`` is, given its ``score`` (0-100) against ``references``."""
    if score >= 100.0:
        return HIT
    text = postprocess_pred(generated)
    if not text:
        return EMPTY
    if score > 0:
        return PARTIAL
    lowered = text.lower()
    if any(phrase in lowered for phrase in QUESTION_PHRASES):
        return QUESTION
    if _repeats_a_phrase(text):
        return LOOP
    if _value_shaped(text, [ref.lower() for ref in references]):
        return WRONG
    return OTHER


def miss_counts(records: list[dict]) -> dict[str, int]:
    """{kind: count} over the records that missed (score below 100), most frequent first."""
    kinds = Counter(classify(r["generated"], r["expected"], r["score"]) for r in records if r["score"] < 100.0)
    return dict(kinds.most_common())
