"""Sliding-window perplexity on a tiny model: every token scored once, against a direct computation, and
``perplexity()`` giving the number the eval report gives."""

from __future__ import annotations

import math

import pytest
import torch

from ctxext.errors import CtxextError
from ctxext.eval import perplexity
from ctxext.eval.summary import _ppl

from support.models import make_model


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


def test_perplexity_of_one_window_is_the_exp_of_the_model_loss():
    model = make_model("llama")
    ids = torch.randint(3, 128, (61,), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        loss = model(input_ids=ids[None], labels=ids[None]).loss
    assert perplexity.perplexity(model, ids, 60) == pytest.approx(math.exp(loss.item()), rel=1e-5)


def test_sliding_perplexity_scores_each_token_once_and_is_the_report_number():
    model = make_model("llama")
    ids = torch.randint(3, 128, (111,), generator=torch.Generator().manual_seed(4))
    nll = 0.0
    # windows of 40 positions (41 ids) begin at 0, 20, 40, 60 and, the last one ending at the last token, 70
    for begin, new in ((0, 40), (20, 20), (40, 20), (60, 20), (70, 10)):
        nll += float(_direct_nll(model, ids[begin : begin + 41])[-new:].sum())
    value = perplexity.perplexity(model, ids, 40, stride=20)
    assert value == pytest.approx(math.exp(nll / 110), rel=1e-5)
    # what `ctxext eval` reports: its per-window records, summed by the summary
    count = perplexity.window_count(111, 40, 20)
    records = [vars(perplexity.score_window(model, ids, k, 40, 20, 16)) for k in range(count)]
    assert value == _ppl(records)["ppl"]
    assert perplexity.perplexity(model, ids[None], 40, stride=20, max_windows=2) == _ppl(records[:2])["ppl"]
    assert (
        perplexity.perplexity(model, ids, 40)
        == _ppl([vars(perplexity.score_window(model, ids, k, 40, 40, 40)) for k in range(3)])["ppl"]
    )


@pytest.mark.parametrize(
    "ids,kwargs,message",
    [
        (torch.arange(3, 53), {"length": 50}, "a perplexity window of 50 tokens reads 51 token ids .*got 50"),
        (torch.arange(3, 53), {"length": 0}, "length must be a positive integer, got 0"),
        (torch.arange(3, 53), {"length": 8, "stride": 0}, "stride must be a positive integer, got 0"),
        (torch.arange(3, 53), {"length": 8, "max_windows": 0}, "max_windows must be a positive integer, got 0"),
        (torch.arange(3, 53).reshape(2, 25), {"length": 8}, "1-D sequence of token ids"),
        (torch.rand(50), {"length": 8}, "1-D sequence of token ids"),
    ],
)
def test_perplexity_errors(ids, kwargs, message):
    with pytest.raises(CtxextError, match=message):
        perplexity.perplexity(make_model("llama"), ids, **kwargs)


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
