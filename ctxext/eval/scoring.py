"""Scorers, each mapping (generated text, references) to a score in 0..100.

``first_integer`` is the passkey rule (Landmark / PI / YaRN). ``string_match_all`` and
``string_match_part`` are RULER's case-insensitive substring matches, applied to the
prediction after RULER's post-processing (strip, control characters to newlines).
"""

from __future__ import annotations

import re


def first_integer(text: str) -> int | None:
    match = re.search(r"\d+", text)
    return int(match.group()) if match else None


def postprocess_pred(text: str) -> str:
    return re.sub(r"[\x00-\x1f]", "\n", text.strip()).strip()


def passkey_score(generated: str, references: list[str]) -> float:
    return 100.0 if first_integer(generated) == int(references[0]) else 0.0


def string_match_all(generated: str, references: list[str]) -> float:
    """The fraction of references found in the prediction."""
    pred = postprocess_pred(generated).lower()
    return 100.0 * sum(ref.lower() in pred for ref in references) / len(references)


def string_match_part(generated: str, references: list[str]) -> float:
    """100 when any reference is found in the prediction."""
    pred = postprocess_pred(generated).lower()
    return 100.0 if any(ref.lower() in pred for ref in references) else 0.0


METRICS = {"first_integer": passkey_score, "string_match_all": string_match_all, "string_match_part": string_match_part}


def score(metric: str, generated: str, references: list[str]) -> float:
    return METRICS[metric](generated, references)
