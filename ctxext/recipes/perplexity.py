"""Held-out sliding-window perplexity for the fine-tune recipes (before and after training).

``perplexity(model, tokenizer_or_ids, length, ...)``: windows of ``length`` tokens move by
``stride``; each window scores only the tokens no earlier window scored, so every token
after the first is scored once, with up to ``length - stride`` tokens of context. The
per-token losses come from :func:`ctxext.eval.perplexity.token_nll` (logits a slice at a
time, so a 16k-token window does not hold a 16k x vocabulary matrix).
"""

from __future__ import annotations

import math

import torch

from ..eval.perplexity import token_nll

SLICE = 1024  # positions whose logits are materialised at once


@torch.no_grad()
def perplexity(model, tokenizer_or_ids, length: int, *, text: str | None = None, stride: int | None = None,
               max_windows: int | None = None) -> float:
    """Perplexity of ``model`` on token ids (or on ``text`` with a tokenizer) in windows of ``length``."""
    if text is not None:
        ids = torch.tensor(tokenizer_or_ids(text, add_special_tokens=False)["input_ids"])
    else:
        ids = torch.as_tensor(tokenizer_or_ids).flatten()
    if ids.numel() < 2:
        raise ValueError("perplexity needs at least two tokens")
    stride = stride or length
    if not 0 < stride <= length:
        raise ValueError(f"stride must be in (0, length], got {stride}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count, scored_until, windows = 0.0, 0, 1, 0
    try:
        for end in range(min(length, ids.numel()), ids.numel() + stride, stride):
            end = min(end, ids.numel())
            if end <= scored_until or (max_windows is not None and windows == max_windows):
                break
            window = ids[max(0, end - length) : end].to(device)[None]
            # the first position of a window has no context in it and is never scored
            first = max(1, scored_until - (end - window.shape[1]))
            total += _summed_nll(model, window, first)
            count += window.shape[1] - first
            scored_until, windows = end, windows + 1
    finally:
        model.train(was_training)
    return math.exp(total / count)


def _summed_nll(model, window: torch.Tensor, first: int) -> float:
    """Summed negative log-likelihood of ``window[first:]`` given everything before it."""
    return float(token_nll(model, window[:, :-1], window[0, 1:], chunk=SLICE)[first - 1 :].double().sum())
