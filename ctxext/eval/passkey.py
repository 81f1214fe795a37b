"""Passkey retrieval in the Landmark / PI / YaRN format.

A five-digit key hidden at a given depth in repeated filler text; the model reads the
prompt once and decodes greedily with its KV cache; the answer is right when the first
integer it writes is the key. Prompts are sized with the model's own tokenizer so that
prompt plus answer fit the requested length.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import torch

INTRO = (
    "There is an important info hidden inside a lot of irrelevant text. "
    "Find it and memorize them. I will quiz you about the important information there."
)
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
KEY_LINE = "The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = "What is the pass key? The pass key is"


@dataclass
class PasskeyPrompt:
    text: str
    key: int
    depth: float
    n_tokens: int


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
    parts = [INTRO, " ".join([FILLER] * before), KEY_LINE.format(key=key), " ".join([FILLER] * (n_filler - before))]
    return "\n".join([part for part in parts if part] + [QUESTION])


def build_prompt(tokenizer, length: int, depth: float, key: int, answer_budget: int = 16) -> PasskeyPrompt:
    """The longest prompt with the key at ``depth`` (0..1) whose tokens + answer fit ``length``."""
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}")

    def n_tokens(n_filler: int) -> int:
        return len(tokenizer(_compose(n_filler, depth, key), add_special_tokens=True)["input_ids"])

    budget = length - answer_budget
    if n_tokens(0) > budget:
        raise ValueError(f"length {length} is too short for a passkey prompt")
    low, high = 0, 1
    while n_tokens(high) <= budget:
        low, high = high, high * 2
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if n_tokens(mid) <= budget else (low, mid)
    return PasskeyPrompt(_compose(low, depth, key), key, depth, n_tokens(low))


def first_integer(text: str) -> int | None:
    match = re.search(r"\d+", text)
    return int(match.group()) if match else None


@torch.no_grad()
def run_passkey(model, tokenizer, length: int, depths, seed: int = 0, max_new_tokens: int = 10) -> list[PasskeyResult]:
    """Greedy passkey retrieval at one length over ``depths`` (fractions), one seeded key each."""
    rng = random.Random(seed)
    device = next(model.parameters()).device
    results = []
    for depth in depths:
        key = rng.randint(10000, 99999)
        prompt = build_prompt(tokenizer, length, depth, key)
        inputs = tokenizer(prompt.text, return_tensors="pt").to(device)
        output = model.generate(
            **inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id
        )
        generated = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        results.append(
            PasskeyResult(length, depth, prompt.n_tokens, key, generated, first_integer(generated) == key)
        )
    return results
