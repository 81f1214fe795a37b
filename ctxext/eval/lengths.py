"""Length strings: '4k' = 4096 tokens, '1500' = 1500 tokens, '1.5k' = 1536."""

from __future__ import annotations

import re

from ..errors import CtxextError


def parse_length(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmM]?)\s*", text)
    if not match:
        raise CtxextError(f"bad length '{text}': expected a token count like 1500, 4k or 1.5k")
    value = float(match.group(1)) * {"": 1, "k": 1024, "m": 1024 * 1024}[match.group(2).lower()]
    if value < 1 or value != int(value):
        raise CtxextError(f"bad length '{text}': not a positive whole number of tokens")
    return int(value)


def parse_lengths(text: str) -> list[int]:
    lengths = [parse_length(part) for part in text.split(",") if part.strip()]
    if not lengths:
        raise CtxextError("no lengths given")
    return sorted(set(lengths))


def format_length(tokens: int) -> str:
    return f"{tokens // 1024}k" if tokens % 1024 == 0 else str(tokens)
