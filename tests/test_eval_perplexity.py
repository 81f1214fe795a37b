"""Sliding-window perplexity on a tiny model: every token scored once, against a direct computation."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import make_model
from ctxext.errors import CtxextError
from ctxext.eval import perplexity
from ctxext.eval.summary import _ppl


def _direct_nll(model, ids):
    with torch.no_grad():
        logits = model(input_ids=ids[None, :-1]).logits[0]
    return torch.nn.functional.cross_entropy(logits, ids[1:], reduction="none")


@pytest.mark.parametrize("family", ["llama", "gemma3_text"])
def test_chunked_head_matches_the_full_logits(family):
    model = make_model(family)
    ids = torch.randint(3, 128, (150,), generator=torch.Generator().manual_seed(0))
    chunked = perplexity.token_nll(model, ids[None, :-1], ids[1:], chunk=16)
    torch.testing.assert_close(chunked, _direct_nll(model, ids), rtol=1e-5, atol=1e-5)


def test_every_token_is_scored_once_with_at_least_window_minus_stride_context():
    model = make_model("llama")
    ids = torch.randint(3, 128, (301,), generator=torch.Generator().manual_seed(1))
    window, stride = 64, 24
    count = perplexity.window_count(len(ids), window, stride)
    windows = [perplexity.score_window(model, ids, k, window, stride, 16) for k in range(count)]
    assert sum(w.n_scored for w in windows) == len(ids) - 1
    assert windows[-1].begin + window + 1 == len(ids)
    # the last stride tokens of window 1 are exactly what a direct forward over it gives
    direct = _direct_nll(model, ids[stride : stride + window + 1])
    assert windows[1].nll_sum == pytest.approx(float(direct[-stride:].sum()), rel=1e-5)


def test_one_window_is_the_plain_perplexity_and_buckets_cover_every_position():
    model = make_model("llama")
    ids = torch.randint(3, 128, (65,), generator=torch.Generator().manual_seed(2))
    window = perplexity.score_window(model, ids, 0, 64, 256, 16)
    summary = _ppl([vars(window)])
    direct = _direct_nll(model, ids)
    assert summary["ppl"] == pytest.approx(math.exp(float(direct.mean())), rel=1e-5)
    assert window.bucket_count == [16, 16, 16, 16]
    assert summary["bucket_nll"][0] == pytest.approx(float(direct[:16].mean()), rel=1e-5)


def test_corpus_sources(tmp_path):
    text, label = perplexity.load_corpus()
    assert len(text) > 100_000 and "pydoc" in label
    path = tmp_path / "book.txt"
    path.write_text("Call me Ishmael.")
    assert perplexity.load_corpus(path) == ("Call me Ishmael.", str(path))
    with pytest.raises(CtxextError, match="no such text file"):
        perplexity.load_corpus(tmp_path / "missing.txt")
    with pytest.raises(CtxextError, match="too few"):
        perplexity.window_count(100, 128, 16)


def test_saved_dataset_corpus(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"text": ["first doc.", "second doc."], "id": [1, 2]}).save_to_disk(tmp_path / "ds")
    assert perplexity.load_corpus(dataset=str(tmp_path / "ds"))[0] == "first doc.\n\nsecond doc."
    with pytest.raises(CtxextError, match="no column 'body'"):
        perplexity.load_corpus(dataset=f"{tmp_path / 'ds'}:body")
