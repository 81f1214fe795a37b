"""``ctxext.recipes.perplexity``, the public name the recipes have for the evaluation's perplexity.

The measurement itself is :func:`ctxext.eval.perplexity.perplexity` (one implementation:
``finetune``'s before/after numbers and an eval report's are the same number for the same
model, ids, length and stride); this only keeps the recipes' signature, which also takes text.
"""

from __future__ import annotations

from ..eval import perplexity as _eval


def perplexity(
    model,
    tokenizer_or_ids,
    length: int,
    *,
    text: str | None = None,
    stride: int | None = None,
    max_windows: int | None = None,
) -> float:
    """Perplexity of ``model`` on token ids, or on ``text`` tokenized by the tokenizer given in their place (with
    its special tokens, as ``ctxext eval`` does), in windows of ``length`` positions; see
    :func:`ctxext.eval.perplexity.perplexity`."""
    ids = _eval.text_ids(tokenizer_or_ids, text) if text is not None else tokenizer_or_ids
    return _eval.perplexity(model, ids, length, stride=stride, max_windows=max_windows)
