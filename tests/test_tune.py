"""``ctxext tune`` (ranking, an end-to-end run on a tiny model, the cache) and ``--method auto``."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM

import ctxext
from ctxext import auto
from ctxext.auto import RULE_LOADED
from ctxext.cli import main
from ctxext.core.record import ExtensionRecord
from ctxext.errors import CtxextError
from ctxext.eval import tune as tune_module
from ctxext.eval.backend import TransformersBackend
from ctxext.eval.runner import EvalConfig, check_config
from ctxext.eval.tune import Row, rank, seeded_order, tune

from support.cli_harness import assert_refused_before_loading, snapshot
from support.models import make_model, yarn_checkpoint

SMALL = dict(methods=["yarn", "ntk"], short_length=300, tasks=["passkey"], depths=[0.5])  # passkey fits 300 bytes


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """Each test its own tune cache (CTXEXT_CACHE), and one thread for the 2-layer models."""
    monkeypatch.setenv("CTXEXT_CACHE", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tmp_path / "cache"
    torch.set_num_threads(threads)


def _row(name, index, target, short, ppl=None):
    return Row(name, name, {}, index, target_score=target, short_score=short, perplexity=ppl)


def test_a_short_context_loss_ranks_below_every_candidate_without_one():
    rows = [_row("a", 0, 100.0, 50.0), _row("b", 1, 0.0, 100.0), _row("c", 2, 10.0, 100.0)]
    ranked = rank(rows, baseline_short=100.0)
    assert [r.label for r in ranked] == ["c", "b", "a"]
    assert [r.short_loss for r in ranked] == [False, False, True]


def test_perplexity_breaks_ties_then_the_candidate_list_order():
    rows = [
        _row("a", 0, 50.0, 100.0, 9.0),
        _row("b", 1, 50.0, 100.0, 3.0),
        _row("c", 2, 50.0, 100.0, None),
        _row("d", 3, 50.0, 100.0, 3.0),
    ]
    assert [r.label for r in rank(rows, 100.0)] == ["b", "d", "a", "c"]
    errored = _row("e", 4, None, None)
    errored.error = "boom"
    assert rank([errored, _row("f", 5, 0.0, 0.0)], None)[-1].label == "e"


def test_the_seeded_order_is_deterministic():
    assert seeded_order(9, 0) == seeded_order(9, 0)
    assert sorted(seeded_order(9, 3)) == list(range(9))
    assert any(seeded_order(9, s) != seeded_order(9, 0) for s in range(1, 5))


def test_help(capsys):
    assert main(["tune", "--help"]) == 0
    assert "usage: ctxext tune" in capsys.readouterr().out


def test_candidates_and_auto_are_not_a_method():
    labels = [r.label for r in tune_module.candidates(None, 4096, 16384)]
    assert "dca temperature=True" in labels and "string shifted_fraction=0.33" in labels
    assert "rerope" in labels and "rerope log_scaling=False" in labels  # log-n scaling is rerope's default
    assert "lm-infinite top_k=5 window=2048" in labels and sum(lab.startswith("self-extend") for lab in labels) == 2
    assert "auto" not in ctxext.list_methods()


def test_tune_end_to_end_on_a_tiny_model_then_the_cache_answers(tiny_eval_dir, tmp_path, cache, monkeypatch, capsys):
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
                "yarn,ntk",
                "--tasks",
                "passkey",
                "--depths",
                "0.5",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "tune of " in printed and "retrieval@400" in printed and "winner: " in printed
    result = tune_module.TuneResult.from_dict(json.loads((out / "tune.json").read_text()), out, None)
    result.cached = False
    result.cache = next(cache.glob("*.json"))
    assert not result.cached and {r.label for r in result.rows} == {"yarn", "ntk"}
    for row in result.rows:  # random weights retrieve nothing: the table says so
        assert row.target_score == 0.0 and row.short_score == 0.0 and not row.short_loss
        assert row.perplexity is not None and row.perplexity > 1 and row.seconds > 0
    assert result.baseline_short == 0.0
    assert result.rows[0].perplexity <= result.rows[1].perplexity  # the tie-breaker decided
    lines = result.lines()
    assert lines[1].split() == ["rank", "method", "parameters", "retrieval@400", "short@300", "ppl", "seconds"]
    assert "no candidate retrieved anything at the target length" in lines[-2]
    data = json.loads((out / "tune.json").read_text())
    assert data["winner"] == {"method": result.rows[0].method, "params": {}, "label": result.rows[0].label}
    assert [r["target_score"] for r in data["ranking"]] == [0.0, 0.0]
    assert result.cache.parent == cache and json.loads(result.cache.read_text())["winner"] == data["winner"]

    def fail(*args, **kwargs):
        pytest.fail("the cached result was measured again")

    monkeypatch.setattr(TransformersBackend, "generate", fail)
    monkeypatch.setattr(tune_module, "load_model", fail)
    again = tune(tiny_eval_dir, 400, out=tmp_path / "elsewhere", **SMALL)
    assert again.cached and again.winner == result.winner and "(cached)" in again.lines()[0]
    assert json.loads((tmp_path / "elsewhere" / "tune.json").read_text())["winner"] == result.winner

    # auto reads the cached winner: extend on the loaded checkpoint, and the eval runner's resolution
    model = AutoModelForCausalLM.from_pretrained(tiny_eval_dir)
    ctxext.extend(model, "auto", target_length=400)
    assert model.config.ctxext["method"] == result.winner["method"]
    assert "ctxext tune result" in model.config.ctxext["auto"]["reason"]
    config = EvalConfig(model=str(tiny_eval_dir), out=tmp_path / "eval", methods=["auto"], target_length=400)
    check_config(config)
    assert config.methods == [result.winner["method"]] and "ctxext tune result" in config.auto["reason"]


def test_auto_without_a_cache_uses_the_rule_and_records_it(tiny_dir, tmp_path, capsys):
    model = make_model()
    ctxext.extend(model, "auto", factor=4)
    record = ExtensionRecord.of(model.config)
    method, params = RULE_LOADED
    assert record.method == method and record.params.items() >= params.items() and record.target_length == 256
    assert record.auto["chose"] == method and "rule" in record.auto["reason"]
    ctxext.restore(model)
    with pytest.raises(CtxextError, match="chooses its parameters"):
        ctxext.extend(model, "auto", factor=4, beta_fast=16)

    config = EvalConfig(model=str(tiny_dir), out=tmp_path / "eval", methods=["auto"], factor=2)
    check_config(config)
    assert config.methods == [method] and config.params == params
    with pytest.raises(CtxextError, match="stands alone"):
        check_config(EvalConfig(model=str(tiny_dir), out=tmp_path / "e", methods=["auto", "yarn"], factor=2))

    # ctxext patch --method auto: config-only, so yarn; the choice is in config.json's record
    assert main(["patch", str(tiny_dir), "--method", "auto", "--target-length", "256"]) == 0
    assert "auto chose yarn" in capsys.readouterr().out
    saved = json.loads((tiny_dir / "config.json").read_text())
    assert saved["ctxext"]["method"] == "yarn" and saved["ctxext"]["auto"]["chose"] == "yarn"
    assert ExtensionRecord.of(saved).auto["chose"] == "yarn"
    loaded = ctxext.from_pretrained(tiny_dir)
    assert loaded.config.ctxext["auto"]["chose"] == "yarn"  # reapply keeps it


def test_patch_auto_uses_a_cached_winner_and_old_records_still_load(tiny_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_dir, copy)
    auto.write_cached(str(copy), copy, 256, {"winner": {"method": "ntk", "params": {}, "label": "ntk"}})
    result = ctxext.patch(copy, "auto", target_length=256)
    assert result.record.method == "ntk" and "ctxext tune result" in result.record.auto["reason"]
    assert json.loads((copy / "config.json").read_text())["ctxext"]["auto"]["chose"] == "ntk"
    old = {k: v for k, v in result.record.to_dict().items() if k != "auto"}
    assert ExtensionRecord.from_dict(old).auto is None and "auto" not in ExtensionRecord.from_dict(old).to_dict()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--target-length", "64"], "is not beyond the native length 64"),
        (["--target-length", "400", "--methods", "bogus"], "unknown method 'bogus'"),
        (["--target-length", "400", "--methods", "auto"], "'auto' is what tune feeds"),
        (["--target-length", "400", "--methods", "pi"], "tune has no candidates for pi"),
        (["--target-length", "400", "--depths", "2"], "--depths"),
        (["--target-length", "400", "--samples", "0"], "--samples must be a whole number of at least 1"),
        (["--target-length", "400", "--short-length", "10"], "too short"),
    ],
)
def test_bad_input_is_one_line_before_the_model_loads(tiny_eval_dir, tmp_path, capsys, monkeypatch, extra, message):
    out = tmp_path / "tune"
    assert_refused_before_loading(
        monkeypatch, capsys, tune_module, ["tune", str(tiny_eval_dir), "--out", str(out), *extra], out, message
    )


def test_auto_on_a_checkpoint_with_its_own_attention_factor_leaves_log_scaling_off(monkeypatch, tmp_path):
    monkeypatch.setenv("CTXEXT_CACHE", str(tmp_path))
    model = ctxext.extend(yarn_checkpoint(), "auto", factor=2)
    record = model.config.ctxext
    assert record["method"] == "rerope" and record["params"]["log_scaling"] is False
    assert "stack" in record["auto"]["reason"]


def test_budget_halves_the_candidates_round_by_round(tiny_eval_dir, tmp_path):
    """A budget that never runs out: 3 candidates, then the better 2 with one more key each, then the best."""
    small = {**SMALL, "methods": ["yarn", "ntk", "string"]}
    result = tune(tiny_eval_dir, 400, out=tmp_path / "tune", ppl=False, budget_minutes=10_000, **small)
    assert sorted(r.rounds for r in result.rows) == [1, 2, 3] and [r.rounds for r in result.rows] == [3, 2, 1]
    assert result.winner["label"] == result.rows[0].label and len(result.plan) == 3
    assert result.plan[1].startswith("round 2: kept ") and result.plan[2].startswith("round 3: kept ")
    records = [json.loads(line) for line in (tmp_path / "tune" / "records.jsonl").read_text().splitlines()]
    target = [r for r in records if r["length"] == 400]
    assert len(target) == 3 + 2 + 1  # one passkey prompt per candidate and round
    assert {r["sample"] for r in target if r["method"] == result.rows[0].label} == {0, 1, 2}
    assert any(line.startswith("budget: round 3") for line in result.lines())


def test_a_spent_budget_stops_after_the_first_round(tiny_eval_dir, tmp_path):
    result = tune(tiny_eval_dir, 400, out=tmp_path / "tune", ppl=False, budget_minutes=1e-9, **SMALL)
    assert [r.rounds for r in result.rows] == [1, 1]
    assert "stopped with 2 candidates" in result.plan[-1]


@pytest.mark.parametrize("budget", [0, -1, float("nan"), True])
def test_a_bad_budget_is_refused(tiny_eval_dir, tmp_path, budget):
    with pytest.raises(CtxextError, match="--budget-minutes must be a positive number"):
        tune(tiny_eval_dir, 400, out=tmp_path / "tune", budget_minutes=budget, **SMALL)


def _file_at(path):
    path.write_text("not a folder")


def _read_only_folder(path):
    path.mkdir()
    path.chmod(0o555)


@pytest.mark.parametrize(
    "make, at, message",
    [
        (_file_at, "cache", "CTXEXT_CACHE={cache}: is a file, not a folder for the tune cache"),
        (_file_at, "cache/sub", "CTXEXT_CACHE={cache}/sub: {cache} is a file, not a folder for the tune cache"),
        (_read_only_folder, "cache", "CTXEXT_CACHE={cache}: the tune cache folder is not writable"),
    ],
    ids=["a-file", "below-a-file", "read-only"],
)
def test_a_bad_cache_folder_is_refused_before_tune_works(
    tiny_eval_dir, tmp_path, cache, capsys, monkeypatch, make, at, message
):
    make(cache)
    monkeypatch.setenv("CTXEXT_CACHE", str(tmp_path / at))
    out = tmp_path / "tune"
    args = ["tune", str(tiny_eval_dir), "--target-length", "400", "--out", str(out)]
    assert_refused_before_loading(monkeypatch, capsys, tune_module, args, out, message.format(cache=cache))


def test_auto_refuses_a_cache_folder_that_is_a_file_before_any_model_work(tiny_dir, tmp_path, cache, capsys):
    """Readers of the cache (eval --method auto, extend, patch) need a folder they can read, not a writable one."""
    _file_at(cache)
    message = f"CTXEXT_CACHE={cache}: is a file, not a folder for the tune cache"
    with pytest.raises(CtxextError, match=message):
        ctxext.extend(make_model(), "auto", factor=2)
    with pytest.raises(CtxextError, match=message):
        check_config(EvalConfig(model=str(tiny_dir), out=tmp_path / "eval", methods=["auto"], factor=2))
    cache.unlink()
    _read_only_folder(cache)
    check_config(EvalConfig(model=str(tiny_dir), out=tmp_path / "eval", methods=["auto"], factor=2))
    before = snapshot(tmp_path)
    assert main(["patch", str(tiny_dir), "--method", "auto", "--factor", "2", "--dry-run"]) == 0
    assert snapshot(tmp_path) == before and '"yarn"' in capsys.readouterr().out


WINNER = {"method": "yarn", "params": {}, "label": "yarn"}


@pytest.mark.parametrize(
    "content, field",
    [
        ("{not json", "the file: not JSON"),
        ("[1, 2]", "the file: not a JSON object"),
        ({"winner": "yarn"}, "winner: must be an object"),
        ({"winner": {**WINNER, "method": "rm -rf /"}}, "winner.method: 'rm -rf /' is not a ctxext method"),
        ({"winner": {**WINNER, "method": 7}}, "winner.method: must be a method name, got 7"),
        ({"winner": {**WINNER, "method": "auto"}}, "winner.method: must be a method name"),
        ({"winner": {**WINNER, "params": ["x"]}}, "winner.params: must be an object"),
        ({"winner": {**WINNER, "params": {"beta_fast": "x"}}}, "winner.params: parameter beta_fast must be a number"),
        ({"winner": {**WINNER, "params": {"rm": 1}}}, "winner.params: method 'yarn' has no parameter rm"),
        ({"winner": {**WINNER, "label": 3}}, "winner.label: must be text"),
        ({"winner": WINNER, "config_only_winner": {"method": "dca", "params": {}}}, "config_only_winner.method"),
    ],
    ids=[
        "bad-json",
        "a-list",
        "winner-text",
        "shell-command",
        "method-number",
        "method-auto",
        "params-list",
        "param-type",
        "unknown-param",
        "label-number",
        "config-only-not-stock",
    ],
)
def test_a_tampered_cache_file_is_refused_in_one_line_naming_the_file_and_the_field(
    tiny_dir, tmp_path, content, field, capsys
):
    path = auto.cache_path(str(tiny_dir), tiny_dir, 256)
    path.parent.mkdir(parents=True)
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    before = snapshot(tmp_path)
    assert main(["patch", str(tiny_dir), "--method", "auto", "--target-length", "256"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ctxext: error: {path}: damaged tune cache, {field}"), err
    assert err.count("\n") == 1 and err.rstrip().endswith("delete the file or run 'ctxext tune --refresh'"), err
    assert snapshot(tmp_path) == before
    with pytest.raises(CtxextError, match="damaged tune cache"):
        check_config(EvalConfig(model=str(tiny_dir), out=tmp_path / "eval", methods=["auto"], target_length=256))


@pytest.mark.parametrize(
    "change, field",
    [
        (lambda d: d.pop("ranking"), "ranking: missing"),
        (lambda d: d.update(short_length="300"), "short_length: must be a whole number, got '300'"),
        (lambda d: d.update(tasks=None), "tasks: must be a list"),
        (lambda d: d["ranking"][0].update(target_score="high"), "ranking[0].target_score: must be a number or null"),
        (lambda d: d["ranking"][0].update(short_loss=1), "ranking[0].short_loss: must be true or false"),
        (lambda d: d["ranking"][1].update(extra=1), "ranking[1].extra: no such field"),
        (lambda d: d["ranking"][1].pop("label"), "ranking[1].label: missing"),
        (lambda d: d["ranking"].append(3), "ranking[2]: must be an object"),
    ],
    ids=[
        "no-ranking",
        "length-text",
        "tasks-null",
        "score-text",
        "flag-number",
        "extra-field",
        "no-label",
        "row-number",
    ],
)
def test_tune_refuses_a_tampered_cached_result_before_the_model_loads(
    tiny_eval_dir, tmp_path, capsys, monkeypatch, change, field
):
    rows = [vars(Row(label=m, method=m, params={}, index=i)) for i, m in enumerate(("yarn", "ntk"))]
    data = {"model": str(tiny_eval_dir), "target_length": 400, "short_length": 300, "native_length": 64}
    data.update(tasks=["passkey"], baseline_short_score=None, budget_minutes=None, ranking=rows, winner=WINNER)
    change(data)
    path = auto.cache_path(str(tiny_eval_dir), tiny_eval_dir, 400)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(data))
    out = tmp_path / "tune"
    args = ["tune", str(tiny_eval_dir), "--target-length", "400", "--out", str(out), "--methods", "yarn,ntk"]
    args += ["--short-length", "300", "--tasks", "passkey", "--depths", "0.5"]
    assert_refused_before_loading(monkeypatch, capsys, tune_module, args, out, f"{path}: damaged tune cache, {field}")
