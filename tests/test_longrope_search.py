"""LongRoPE's factor search (``ctxext.eval.longrope_search``), its ``@FILE`` factors and ``tune --methods longrope``.

The search is tested on a model where positions matter: a one-layer Llama trained for a few seconds,
at native length 64, on blocks of three random tokens each followed by their copy, so that predicting
a copy means attending exactly three tokens back. Interpolating every dimension (PI) at 2x halves
that distance and the copy fails; keeping the high-frequency dimensions, as a searched factor list
can, keeps it. Training is seeded and single-threaded, so the model and every score are the same on
every run.
"""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

import ctxext
from ctxext.cli import main
from ctxext.errors import CtxextError
from ctxext.eval import longrope_search as lrs
from ctxext.eval import perplexity
from ctxext.eval import tune as tune_module
from ctxext.eval.store import RecordStore

from support.cli_harness import assert_refused_before_loading

NATIVE, TARGET, VOCAB = 64, 128, 32
PLAN = dict(population=8, iterations=4)


def copy_stream(length: int, seed: int) -> torch.Tensor:
    """Blocks [a b c a b c] of random tokens a, b, c (ids 3..VOCAB-1), cut to ``length``."""
    generator = torch.Generator().manual_seed(seed)
    blocks = torch.randint(3, VOCAB, (length // 6 + 1, 3), generator=generator)
    return torch.cat([blocks, blocks], dim=1).flatten()[:length]


@pytest.fixture(scope="module")
def trained():
    """(model, ids): the copy model and a held-out stream of it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=128,
        num_hidden_layers=1,
        max_position_embeddings=NATIVE,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    model = AutoModelForCausalLM.from_config(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    stream = copy_stream(300 * 32 * (NATIVE + 6), seed=0).view(300, 32, NATIVE + 6)
    for step, batch in enumerate(stream):
        batch = batch[:, step % 6 : step % 6 + NATIVE]  # every phase of the blocks
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    yield model.eval(), copy_stream(4 * TARGET + 1, seed=1)
    torch.set_num_threads(threads)


def _store(path) -> RecordStore:
    return RecordStore(path, {"model": "copy", "seed": 0})


def _search(trained, path, **kwargs):
    model, ids = trained
    with _store(path) as store:  # closed at the end, as a tune run closes its store: the next run may write
        return lrs.search(model, ids, TARGET, store, windows=2, progress=False, **{**PLAN, **kwargs})


def _ppl(model, ids, method=None, **params) -> float:
    if method is not None:
        ctxext.extend(model, method, target_length=TARGET, **params)
    try:
        return perplexity.perplexity(model, ids, TARGET, max_windows=2)
    finally:
        if method is not None:
            ctxext.restore(model)


def test_the_search_beats_plain_pi_and_its_own_starting_points(trained, tmp_path):
    model, ids = trained
    native = perplexity.perplexity(model, ids, NATIVE, max_windows=4)
    pi, yarn = _ppl(model, ids, "pi"), _ppl(model, ids, "yarn")
    result = _search(trained, tmp_path / "run")
    assert pi > 2 * native  # PI at 2x breaks the copy: the comparison means something
    assert result.perplexity < pi / 2 and result.perplexity < yarn
    assert result.perplexity < min(result.start.values())  # the evolution found better than PI, NTK and YaRN
    assert set(result.start) == {"pi", "ntk", "yarn"} and result.scored == result.plan.candidates == 24
    assert math.isclose(_ppl(model, ids, "longrope", long_factor=result.factors), result.perplexity, rel_tol=1e-6)
    assert not ctxext.is_extended(model)


def test_every_candidate_is_ordered_from_high_to_low_frequency_and_in_range(trained, tmp_path):
    result = _search(trained, tmp_path / "run")
    assert len(result.history) == result.plan.candidates
    for factors, _ in result.history:
        assert len(factors) == 16 and factors == sorted(factors) and 1.0 <= factors[0] and factors[-1] <= 3.0
    rng, top = random.Random(5), lrs.top_factor(4.0)
    parent = lrs.initial_individuals(10000.0, 64, 4096, 16384)["yarn"]
    for _ in range(200):
        child = lrs.mutate(parent, rng, top, {parent})
        assert lrs.is_ordered(child) and child != parent and 100 <= child[0] and child[-1] <= top
        mixed = lrs.crossover(parent, child, rng, top, {parent, child})
        assert lrs.is_ordered(mixed) and mixed not in (parent, child)
        parent = child


def test_the_starting_points_are_pi_ntk_and_yarn():
    starts = lrs.initial_individuals(10000.0, 64, 4096, 16384)
    assert starts["pi"] == (400,) * 32
    assert starts["ntk"][0] == 100 and starts["ntk"][-1] == 400 and lrs.is_ordered(starts["ntk"])
    assert starts["yarn"][0] == 100 and starts["yarn"][-1] == 400 and lrs.is_ordered(starts["yarn"])
    assert len(set(starts.values())) == 3


def test_the_search_is_deterministic_under_a_seed(trained, tmp_path):
    first, again = _search(trained, tmp_path / "a"), _search(trained, tmp_path / "b")
    assert first.history == again.history and first.factors == again.factors
    other = _search(trained, tmp_path / "c", seed=1)
    assert [f for f, _ in other.history] != [f for f, _ in first.history]
    assert other.history[:3] == first.history[:3]  # PI, NTK, YaRN: the same starting points


def test_an_extended_model_is_searched_from_its_native_rope(trained, tmp_path):
    model, _ = trained
    native = _search(trained, tmp_path / "native", population=4, iterations=1)
    ctxext.extend(model, "yarn", factor=4)
    patched = _search(trained, tmp_path / "patched", population=4, iterations=1)
    assert patched.history == native.history and not ctxext.is_extended(model)


def test_a_rerun_scores_only_the_candidates_not_logged(trained, tmp_path, monkeypatch):
    complete = _search(trained, tmp_path / "complete")
    real, calls = perplexity.perplexity, []

    def interrupted(*args, **kwargs):
        if len(calls) == 10:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(perplexity, "perplexity", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _search(trained, tmp_path / "run")
    assert not ctxext.is_extended(trained[0])
    monkeypatch.setattr(perplexity, "perplexity", real)
    resumed = _search(trained, tmp_path / "run")
    assert resumed.scored == complete.plan.candidates - 10 and resumed.history == complete.history
    monkeypatch.setattr(perplexity, "perplexity", lambda *a, **k: pytest.fail("a logged candidate was scored"))
    replayed = _search(trained, tmp_path / "run")
    assert replayed.scored == 0 and replayed.factors == complete.factors and replayed.seconds > 0


def test_the_budget_sizes_the_plan():
    assert lrs.plan_for_budget(1, 10) == lrs.SearchPlan(4, 1)  # 6 candidates: the smallest search
    assert lrs.plan_for_budget(10, 10).candidates <= 60
    full = lrs.plan_for_budget(1000, 1)
    assert (full.population, full.iterations, full.parents, full.mutations) == (64, 40, 32, 16)  # the reference's
    sizes = [lrs.plan_for_budget(m, 1) for m in (1, 2, 5, 10)]
    assert all(p.candidates <= m * 60 for p, m in zip(sizes, (1, 2, 5, 10)))
    assert [p.population for p in sizes] == sorted(p.population for p in sizes)


@pytest.mark.parametrize(
    "minutes, message",
    [
        (0, "--search-minutes must be a positive number of minutes, got 0"),
        (-1, "must be a positive number"),
        (float("nan"), "must be a positive number"),
        ("5", "got '5'"),
        (0.5, "fits 3 candidates of 10.0 s each; it needs at least 6: give --search-minutes 1"),
    ],
)
def test_a_bad_or_too_small_budget_is_one_line(minutes, message):
    with pytest.raises(CtxextError, match=message) as caught:
        lrs.plan_for_budget(minutes, 10)
    assert "\n" not in str(caught.value)


def test_a_search_needs_minutes_or_a_whole_plan(trained, tmp_path):
    model, ids = trained
    with pytest.raises(CtxextError, match="both population and iterations"):
        lrs.search(model, ids, TARGET, _store(tmp_path / "a"), population=8)
    with pytest.raises(CtxextError, match="multiple of 4"):
        lrs.search(model, ids, TARGET, _store(tmp_path / "a"), population=6, iterations=1)
    with pytest.raises(CtxextError, match="not beyond the native length 64"):
        lrs.search(model, ids, NATIVE, _store(tmp_path / "a"), minutes=1)
    assert not (tmp_path / "a").exists()


def test_factors_from_a_file_for_extend_and_patch(tiny_dir, tmp_path, capsys):
    factors = [1.0, 1.0, 1.2, 1.5, 1.8, 2.0, 2.0, 2.5]
    path = tmp_path / "factors.json"
    path.write_text(json.dumps(factors))
    model = ctxext.extend(ctxext.from_pretrained(tiny_dir), "longrope", factor=2, long_factor=f"@{path}")
    assert model.config.ctxext["params"]["long_factor"] == factors  # the record holds the numbers, not the file
    assert main(["patch", str(tiny_dir), "--method", "longrope", "--factor", "2", "--long-factor", f"@{path}"]) == 0
    assert json.loads((tiny_dir / "config.json").read_text())["rope_parameters"]["long_factor"] == factors


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no such JSON file"),
        ("[1, 2", "is not JSON"),
        ('{"long_factor": [1]}', "must hold a JSON list of numbers"),
        ('["a"]', "must hold a JSON list of numbers"),
        ("[]", "must hold a JSON list of numbers"),
        ("[1, -2, 1, 1, 1, 1, 1, 1]", "must be positive numbers"),
    ],
)
def test_a_bad_factor_file_is_one_line(tiny_dir, tmp_path, capsys, content, message):
    path = tmp_path / "factors.json"
    if content is not None:
        path.write_text(content)
    before = (tiny_dir / "config.json").read_bytes()
    assert main(["patch", str(tiny_dir), "--method", "longrope", "--factor", "2", "--long-factor", f"@{path}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ctxext: error: longrope long_factor") and message in err and err.count("\n") == 1, err
    assert (tiny_dir / "config.json").read_bytes() == before
    with pytest.raises(CtxextError, match="must be numbers or '@FILE'"):
        ctxext.extend(ctxext.from_pretrained(tiny_dir), "longrope", factor=2, long_factor="2.0")


def test_tune_searches_longrope_and_auto_takes_it(tiny_eval_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CTXEXT_CACHE", str(tmp_path / "cache"))
    budgets = []  # the budget reaches the plan; a fixed plan keeps the test's time off the machine's speed
    monkeypatch.setattr(
        lrs, "plan_for_budget", lambda minutes, seconds: budgets.append(minutes) or lrs.SearchPlan(8, 2)
    )
    out = tmp_path / "tune"
    assert (
        main(
            [
                "tune",
                str(tiny_eval_dir),
                "--target-length",
                "400",
                "--short-length",
                "300",
                "--methods",
                "longrope,rerope",
                "--tasks",
                "passkey",
                "--depths",
                "0.5",
                "--search-minutes",
                "0.05",
                "--search-windows",
                "1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert budgets == [0.05] and "longrope search at 400 tokens (1 window(s))" in printed
    assert "longrope search: population 8, 2 iterations, 16 candidates" in printed
    factors = json.loads((out / tune_module.FACTORS_FILE).read_text())
    data = json.loads((out / "tune.json").read_text())
    row = next(r for r in data["ranking"] if r["label"] == tune_module.SEARCH_LABEL)
    assert row["params"] == {"long_factor": factors} and len(factors) == 8 and factors == sorted(factors)
    assert row["perplexity"] is not None and row["search"]["perplexity"] <= min(row["search"]["start"].values())
    assert data["config_only_winner"] == {
        "method": "longrope",
        "params": {"long_factor": factors},
        "label": tune_module.SEARCH_LABEL,
    }  # rerope needs ctxext to load
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert sum(r["method"] == lrs.LABEL for r in records) == row["search"]["candidates"]

    # ctxext patch --method auto is config-only: it takes the searched longrope, the tune winner or not
    assert (
        main(
            [
                "patch",
                str(tiny_eval_dir),
                "--method",
                "auto",
                "--target-length",
                "400",
                "--output",
                str(tmp_path / "patched"),
            ]
        )
        == 0
    )
    saved = json.loads((tmp_path / "patched" / "config.json").read_text())
    assert saved["ctxext"]["method"] == "longrope" and saved["rope_parameters"]["long_factor"] == factors
    assert "best config-only candidate" in saved["ctxext"]["auto"]["reason"]

    # a rerun finds everything in the log and the cache, and writes the factors file again
    monkeypatch.setattr(tune_module, "load_model", lambda config: pytest.fail("the model was loaded"))
    again = tune_module.tune(
        tiny_eval_dir,
        400,
        out=tmp_path / "again",
        methods=["longrope", "rerope"],
        short_length=300,
        tasks=["passkey"],
        depths=[0.5],
    )
    assert again.cached and json.loads((tmp_path / "again" / tune_module.FACTORS_FILE).read_text()) == factors


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--methods", "yarn", "--search-minutes", "5"], "--search-minutes is a setting of the longrope search"),
        (["--methods", "yarn", "--search-windows", "1"], "--search-windows is a setting of the longrope search"),
        (["--methods", "longrope", "--search-minutes", "0"], "--search-minutes must be a positive number"),
        (["--methods", "longrope", "--search-windows", "0"], "--search-windows must be a whole number of at least 1"),
    ],
)
def test_bad_search_settings_are_one_line_before_the_model_loads(
    tiny_eval_dir, tmp_path, capsys, monkeypatch, extra, message
):
    out = tmp_path / "tune"
    assert_refused_before_loading(
        monkeypatch,
        capsys,
        tune_module,
        ["tune", str(tiny_eval_dir), "--target-length", "400", "--out", str(out), *extra],
        out,
        message,
    )
