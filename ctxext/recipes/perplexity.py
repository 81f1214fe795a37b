"""Sliding-window perplexity, small and self-contained.

``perplexity(model, tokenizer_or_ids, length, ...)``: windows of ``length`` tokens move by
``stride``; each window scores only the tokens no earlier window scored, so every token
after the first is scored once, with up to ``length - stride`` tokens of context. Logits
are computed a slice at a time from the last hidden state, so a 16k-token window does not
hold a 16k x vocabulary matrix.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

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
    hidden = model.get_decoder()(input_ids=window, attention_mask=torch.ones_like(window), use_cache=False)
    hidden = hidden.last_hidden_state[0]
    head = model.get_output_embeddings()
    cap = getattr(model.config.get_text_config(), "final_logit_softcapping", None)
    total = 0.0
    for start in range(first - 1, window.shape[1] - 1, SLICE):
        stop = min(start + SLICE, window.shape[1] - 1)
        logits = head(hidden[start:stop]).float()
        if cap:
            logits = torch.tanh(logits / cap) * cap
        total += F.cross_entropy(logits, window[0, start + 1 : stop + 1], reduction="sum").item()
    return total
