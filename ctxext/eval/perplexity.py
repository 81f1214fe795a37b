"""Sliding-window perplexity (Press et al.; stride 256 as in PI and YaRN).

Window k covers tokens [k*stride, k*stride + window) of the corpus and scores only the
tokens no earlier window scored (all of them for the first window), so every scored
token sees at least ``window - stride`` tokens of context. Perplexity is exp of the
token-weighted mean NLL. Each window also records the NLL of every position inside it,
summed per position bucket, which shows where in a long window a method starts to fail.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import CtxextError
from ..rope_config import text_config
from .haystack import prose


def load_corpus(text_file: str | Path | None = None, dataset: str | None = None) -> tuple[str, str]:
    """(text, label): a text file, a dataset saved with ``datasets.save_to_disk`` ('DIR' or
    'DIR:column', column 'text' by default), or the pydoc prose shipped with CPython."""
    if text_file is not None:
        path = Path(text_file)
        if not path.is_file():
            raise CtxextError(f"{path}: no such text file")
        return path.read_text(encoding="utf-8", errors="replace"), str(path)
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
    data = load_from_disk(directory)
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
        raise CtxextError(f"the corpus has {n_tokens} tokens, too few for a {window}-token window; "
                          "give a longer --text-file")
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


@torch.no_grad()
def score_window(model, ids: torch.Tensor, index: int, window: int, stride: int, bucket: int) -> WindowResult:
    """Window ``index`` of the token sequence ``ids`` (1-D, with BOS if the model uses one)."""
    begin = min(index * stride, len(ids) - window - 1)
    first_new = 0 if index == 0 else (index - 1) * stride + window - begin  # first position not scored before
    device = next(model.parameters()).device
    chunk = ids[begin : begin + window + 1].to(device)
    nll = token_nll(model, chunk[None, :-1], chunk[1:])
    n_buckets = math.ceil(window / bucket)
    bucket_ids = torch.arange(window) // bucket
    bucket_nll = torch.zeros(n_buckets, dtype=torch.float64).index_add_(0, bucket_ids, nll.double())
    scored = nll[first_new:]
    return WindowResult(index, begin, float(scored.double().sum()), scored.numel(), bucket_nll.tolist(),
                        torch.bincount(bucket_ids, minlength=n_buckets).tolist())


