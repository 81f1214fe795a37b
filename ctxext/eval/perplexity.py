"""Sliding-window perplexity (Press et al.; stride 256 as in PI and YaRN), the one ctxext has.

Token ids are the text as the model reads it, with its tokenizer's special tokens (BOS for
the models that use one): :func:`text_ids`. A window of ``window`` positions reads
``window + 1`` ids and predicts each of its last ``window``. Window k starts at token
k*stride (the last possible window ends at the last token) and scores only the tokens no
earlier window scored (all of them for the first window), so every scored token sees at
least ``window - stride`` tokens of context. Perplexity is exp of the token-weighted mean
NLL. :func:`perplexity` gives that number over a token sequence; ``ctxext eval`` logs one
:func:`score_window` record per window and its report computes the same number from them,
so the held-out perplexity of ``finetune`` and the report's agree for the same model, ids,
window and stride. Each window also records the NLL of every position inside it, summed
per position bucket, which shows where in a long window a method starts to fail.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ..core.rope_setup import text_config
from ..core.user_files import read_text_file
from ..errors import CtxextError, one_line
from .haystack import prose


def load_corpus(text_file: str | Path | None = None, dataset: str | None = None) -> tuple[str, str]:
    """(text, label): a text file, a dataset saved with ``datasets.save_to_disk`` ('DIR' or
    'DIR:column', column 'text' by default), or the pydoc prose shipped with CPython."""
    if text_file is not None:
        path = Path(text_file)
        return read_text_file(path), str(path)
    if dataset is not None:
        return _dataset_text(dataset), dataset
    return prose(), "pydoc_data.topics prose (CPython)"


def _dataset_text(spec: str) -> str:
    try:
        from datasets import load_from_disk
    except ImportError:
        raise CtxextError("--text-dataset needs the 'datasets' package: pip install 'ctxext[eval]'") from None
    directory, _, column = spec.partition(":")
    if not Path(directory).is_dir():
        raise CtxextError(f"{directory}: no such dataset directory (expected one written by save_to_disk)")
    try:
        data = load_from_disk(directory)
    except Exception as exc:  # datasets raises FileNotFoundError, ValueError, ... for other folders
        raise CtxextError(f"{directory}: not a dataset written by save_to_disk ({one_line(exc)})") from None
    if hasattr(data, "keys"):  # a DatasetDict: the first split
        data = data[next(iter(data.keys()))]
    column = column or "text"
    if column not in data.column_names:
        raise CtxextError(f"{spec}: no column '{column}' (columns: {', '.join(data.column_names)})")
    return "\n\n".join(data[column])


@dataclass
class WindowResult:
    index: int
    begin: int
    nll_sum: float  # over the scored tokens
    n_scored: int
    bucket_nll: list[float]  # NLL summed over every position of the window, per bucket
    bucket_count: list[int]


def window_count(n_tokens: int, window: int, stride: int) -> int:
    """How many windows cover a corpus of ``n_tokens`` (the last one ends at the corpus end)."""
    if n_tokens < window + 1:
        raise CtxextError(
            f"the corpus has {n_tokens} tokens, too few for a {window}-token window; give a longer --text-file"
        )
    return math.ceil((n_tokens - 1 - window) / stride) + 1


@torch.no_grad()
def token_nll(model, input_ids: torch.Tensor, targets: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """Per-position NLL of ``targets``; the LM head runs on ``chunk`` positions at a time, so a
    long window never holds its full (length x vocabulary) logits at once."""
    hidden = model.get_decoder()(input_ids=input_ids, use_cache=False).last_hidden_state[0]
    head = model.get_output_embeddings()
    cap = getattr(text_config(model.config), "final_logit_softcapping", None)
    parts = []
    for start in range(0, hidden.shape[0], chunk):
        logits = head(hidden[start : start + chunk]).float()
        if cap:
            logits = torch.tanh(logits / cap) * cap
        parts.append(torch.nn.functional.cross_entropy(logits, targets[start : start + chunk], reduction="none"))
    return torch.cat(parts).cpu()


@dataclass(frozen=True)
class WindowSpan:
    """Window ``index`` of a token sequence: its ``window + 1`` ids (the last one only a target), where it begins
    in the sequence, and its first position that no earlier window scored."""

    index: int
    begin: int
    first_new: int
    ids: torch.Tensor


def window_span(ids: torch.Tensor, index: int, window: int, stride: int) -> WindowSpan:
    begin = min(index * stride, len(ids) - window - 1)
    first_new = 0 if index == 0 else (index - 1) * stride + window - begin
    return WindowSpan(index, begin, first_new, ids[begin : begin + window + 1])


def window_result(span: WindowSpan, nll: torch.Tensor, bucket: int) -> WindowResult:
    """The record of a window from the NLL of each of its positions (``len(span.ids) - 1`` of them)."""
    window = len(span.ids) - 1
    n_buckets = math.ceil(window / bucket)
    bucket_ids = torch.arange(window) // bucket
    bucket_nll = torch.zeros(n_buckets, dtype=torch.float64).index_add_(0, bucket_ids, nll.double())
    scored = nll[span.first_new :]
    return WindowResult(
        span.index,
        span.begin,
        float(scored.double().sum()),
        scored.numel(),
        bucket_nll.tolist(),
        torch.bincount(bucket_ids, minlength=n_buckets).tolist(),
    )


@torch.no_grad()
def score_window(model, ids: torch.Tensor, index: int, window: int, stride: int, bucket: int) -> WindowResult:
    """Window ``index`` of the token sequence ``ids`` (1-D, with BOS if the model uses one)."""
    span = window_span(ids, index, window, stride)
    chunk = span.ids.to(next(model.parameters()).device)
    return window_result(span, token_nll(model, chunk[None, :-1], chunk[1:]), bucket)


def text_ids(tokenizer, text: str) -> torch.Tensor:
    """``text`` as the token ids perplexity is measured on: with the tokenizer's special tokens, as the model reads
    the start of a text (``ctxext eval`` tokenizes its corpus this way)."""
    return torch.tensor(tokenizer(text, add_special_tokens=True)["input_ids"], dtype=torch.long)


def perplexity(model, ids, length: int, *, stride: int | None = None, max_windows: int | None = None) -> float:
    """Perplexity of ``model`` on the token ids ``ids`` (1-D, e.g. from :func:`text_ids`; at least ``length + 1``)
    in windows of ``length`` positions moving by ``stride`` (default ``length``: windows side by side; above
    ``length`` they leave tokens unscored), the first ``max_windows`` windows (default: all, to the end of ``ids``).
    The windows are :func:`score_window`'s: this is the number an eval report gives for the same ids, ``length``
    and ``--ppl-stride``."""
    ids = torch.as_tensor(ids)
    if ids.dim() == 2 and ids.shape[0] == 1:
        ids = ids[0]
    if ids.dim() != 1 or ids.dtype.is_floating_point:
        raise CtxextError(
            f"perplexity needs a 1-D sequence of token ids, got a {ids.dtype} tensor of shape {tuple(ids.shape)}"
        )
    for name, value, optional in (
        ("length", length, False),
        ("stride", stride, True),
        ("max_windows", max_windows, True),
    ):
        if not (optional and value is None) and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise CtxextError(f"perplexity {name} must be a positive integer, got {value!r}")
    stride = stride or length
    if ids.numel() < length + 1:
        raise CtxextError(
            f"a perplexity window of {length} tokens reads {length + 1} token ids (each position "
            f"predicts the next one); got {ids.numel()}"
        )
    count = window_count(ids.numel(), length, stride)
    if max_windows is not None:
        count = min(count, max_windows)
    was_training = model.training
    model.eval()
    try:
        windows = [score_window(model, ids.long(), k, length, stride, length) for k in range(count)]
    finally:
        model.train(was_training)
    return math.exp(sum(w.nll_sum for w in windows) / sum(w.n_scored for w in windows))
