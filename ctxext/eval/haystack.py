"""Offline text: RULER's noise sentence and a prose haystack from CPython's own documentation.

RULER's essay haystack is a set of scraped essays; here the prose paragraphs of
``pydoc_data/topics.py`` (the text behind ``help()``, about 465k characters in Python 3.11,
shipped with every CPython) stand in for it. Code blocks (indented lines) and heading
underlines are dropped. Scores on this haystack are not comparable with published RULER
numbers.
"""

from __future__ import annotations

import re
from functools import lru_cache

# RULER's noise haystack sentence, which is also the passkey filler (Landmark / PI / YaRN)
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"(])")


@lru_cache(maxsize=1)
def prose() -> str:
    """The prose paragraphs of the pydoc topics, in topic order, one paragraph per line."""
    from pydoc_data.topics import topics

    paragraphs = []
    for name in sorted(topics):
        for block in topics[name].split("\n\n"):
            lines = block.split("\n")
            if any(line.startswith(" ") for line in lines) or re.fullmatch(r"[*=\-~^]+", lines[-1].strip()):
                continue
            text = " ".join(line.strip() for line in lines).strip()
            if len(text) > 40 and text.endswith("."):
                paragraphs.append(text)
    return "\n".join(paragraphs)


@lru_cache(maxsize=1)
def essay_sentences() -> tuple[str, ...]:
    return tuple(s for line in prose().split("\n") for s in _SENTENCE_END.split(line) if s)


def take_sentences(n: int) -> list[str]:
    """The first ``n`` haystack sentences, starting over from the beginning when it runs out."""
    sentences = essay_sentences()
    return [sentences[i % len(sentences)] for i in range(n)]
