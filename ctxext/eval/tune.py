"""``ctxext tune``: a small seeded search over methods and their main parameters for one target length.

Each candidate of :data:`CANDIDATES` (``methods`` restricts them by method name) is applied to the model
with ``extend`` and scored on a few prompts of two prose retrieval tasks at the target length
(``niah_single_2`` and ``niah_multikey_1``: passkey's one repeated sentence ranks methods wrongly; any
retrieval task can be asked for; default 2 depths x 1 key per task), the same prompts at a short length
inside the native length L (min(L/2, 4096)) and, unless ``ppl=False``, one perplexity window at the
target length. The unpatched model answers the short prompts too. Ranking (:func:`rank`):

1. a candidate whose short-context score is below the unpatched model's ranks below every one that is not;
2. then, with a budget (``budget_minutes``), the more successive-halving rounds survived;
3. then the higher mean retrieval score at the target length;
4. then the lower perplexity at the target length (missing: last);
5. then the candidate's place in :data:`CANDIDATES`.

``longrope`` in ``methods`` adds one more candidate, ``longrope searched``: before the prompts,
LongRoPE's evolutionary search (:mod:`.longrope_search`, ``search_minutes`` of budget, perplexity on
``search_windows`` windows at the target length of ``text_file`` or the offline prose corpus) finds its
``long_factor``, which is written to ``out/longrope_factors.json`` (``ctxext patch --method longrope
--long-factor @FILE`` and ``extend(..., long_factor=...)`` take it) and scored and ranked like every
other candidate. It runs only when asked for, since it costs its budget.

Candidates run in an order shuffled with ``seed``; the ranking does not depend on it. Every finished
prompt, and every candidate the search scored, goes to the run's record log in ``out`` (the eval
runner's ``RecordStore``), so a rerun resumes. Besides the winner, the result names the best
config-only candidate (a method stock transformers and vLLM load from config.json: yarn, ntk, the
searched longrope), which ``ctxext patch --method auto`` takes. The result goes to ``out/tune.json``
and to the cache (``ctxext.auto``: ``$CTXEXT_CACHE``, default ``~/.cache/ctxext/tune/<key>.json``,
keyed by model path, config.json hash and target length), which ``--method auto`` reads; a cached
result is returned without loading the model unless ``refresh`` (also for another search budget).
"""

from __future__ import annotations

import dataclasses
import math
import random
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .. import auto
from ..checkpoint.atomic import write_json
from ..core.plan import plan_extension
from ..core.registry import get_method
from ..core.rope_setup import native_length
from ..core.validate import MAX_SAMPLES, check_count, check_fraction, check_length
from ..errors import CtxextError
from ..model.loading import load_tokenizer
from . import perplexity
from .backend import Setup, TransformersBackend
from .constants import BASELINE
from .longrope_search import check_budget, search
from .loop import WindowSettings, run_units
from .runner import EvalConfig, build_samples, check_config, load_model
from .store import RecordStore
from .tasks import PPL, TASK_NAMES, generation_tasks

TASKS = ("niah_single_2", "niah_multikey_1")  # prose retrieval: passkey ranks methods wrongly
DEPTHS = (0.25, 0.75)
RESULT = "tune.json"
SHORT_CAP = 4096
SEARCHED = "longrope"  # the method whose candidate the search makes
SEARCH_LABEL = "longrope searched"
FACTORS_FILE = "longrope_factors.json"
SEARCH_MINUTES = 10.0
SEARCH_WINDOWS = 2


@dataclass(frozen=True)
class Candidate:
    method: str
    params: Callable[[int, int], dict]  # (native length L, target length T) -> parameters
    note: str


def _self_extend(window_fraction: float) -> Callable[[int, int], dict]:
    def params(native: int, target: int) -> dict:
        window = max(1, int(native * window_fraction))
        return {"window": window, "group_size": max(1, math.ceil((target - window) / (native - window)))}

    return params


CANDIDATES: tuple[Candidate, ...] = (
    Candidate("yarn", lambda L, T: {}, "YaRN, default betas"),
    Candidate("ntk", lambda L, T: {}, "NTK-aware base change"),
    Candidate("dca", lambda L, T: {}, "Dual Chunk Attention"),
    Candidate("dca", lambda L, T: {"temperature": True}, "DCA with its attention temperature"),
    Candidate("self-extend", _self_extend(1 / 4), "SelfExtend, W = L/4, smallest G that reaches T"),
    Candidate("self-extend", _self_extend(1 / 2), "SelfExtend, W = L/2, smallest G that reaches T"),
    Candidate("rerope", lambda L, T: {}, "ReRoPE, w = L/4, with log-n scaling (its default)"),
    Candidate("rerope", lambda L, T: {"log_scaling": False}, "ReRoPE, w = L/4, without log-n scaling"),
    Candidate("lm-infinite", lambda L, T: {"window": L // 2, "top_k": 5}, "LM-Infinite, window L/2, top-5 middle keys"),
    Candidate("string", lambda L, T: {"shifted_fraction": 0.33}, "STRING, shifted fraction 0.33"),
)


def label(method: str, params: dict) -> str:
    """'dca temperature=True': the candidate's name in records and the table."""
    return " ".join([method, *(f"{k}={v}" for k, v in sorted(params.items()))])


@dataclass
class Row:
    label: str
    method: str
    params: dict
    index: int  # place in CANDIDATES
    target_score: float | None = None
    short_score: float | None = None
    perplexity: float | None = None
    seconds: float = 0.0
    short_loss: bool = False
    error: str | None = None
    search: dict | None = None  # the searched longrope: what the search reached (SearchResult.summary)
    rounds: int = 1  # successive-halving rounds the candidate was scored in (all 1 without a budget)


def rank(rows: list[Row], baseline_short: float | None) -> list[Row]:
    """Rows best first (see the module docstring); sets ``short_loss``."""
    for row in rows:
        row.short_loss = (
            row.error is None
            and baseline_short is not None
            and row.short_score is not None
            and row.short_score < baseline_short
        )
    return sorted(
        rows,
        key=lambda r: (
            r.error is not None,
            r.short_loss,
            -r.rounds,
            -(r.target_score or 0.0),
            r.perplexity if r.perplexity is not None else math.inf,
            r.index,
        ),
    )


def seeded_order(count: int, seed: int) -> list[int]:
    """The order candidates run in: 0..count-1 shuffled with ``seed``."""
    order = list(range(count))
    random.Random(seed).shuffle(order)
    return order


def candidates(methods: list[str] | None, native: int, target: int) -> list[Row]:
    wanted = None
    if methods is not None:
        if isinstance(methods, str):
            methods = [m for m in methods.split(",") if m.strip()]
        if not methods:
            raise CtxextError("--methods is empty")
        for name in methods:
            if auto.is_auto(name):
                raise CtxextError("'auto' is what tune feeds, not a candidate; give registered methods")
        wanted = {get_method(m).name for m in methods}
        known = {c.method for c in CANDIDATES} | {SEARCHED}
        missing = sorted(wanted - known)
        if missing:
            raise CtxextError(f"tune has no candidates for {', '.join(missing)} (tuned: {', '.join(sorted(known))})")
    rows = []
    for index, candidate in enumerate(CANDIDATES):
        if wanted is None or candidate.method in wanted:
            params = candidate.params(native, target)
            rows.append(Row(label(candidate.method, params), candidate.method, params, index))
    if wanted is not None and SEARCHED in wanted:
        rows.append(Row(SEARCH_LABEL, SEARCHED, {}, len(CANDIDATES)))  # params: the search's factors
    return rows


@dataclass
class TuneResult:
    model: str
    target_length: int
    short_length: int
    native_length: int
    rows: list[Row]  # ranked, best first
    baseline_short: float | None
    winner: dict  # {"method", "params", "label"}
    cached: bool
    out: Path
    cache: Path
    tasks: list[str]
    config_only_winner: dict | None = None  # the best candidate stock engines load from config.json
    budget_minutes: float | None = None
    plan: list[str] = field(default_factory=list)  # what the successive halving did, round by round

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "target_length": self.target_length,
            "short_length": self.short_length,
            "native_length": self.native_length,
            "tasks": self.tasks,
            "baseline_short_score": self.baseline_short,
            "winner": self.winner,
            "config_only_winner": self.config_only_winner,
            "budget_minutes": self.budget_minutes,
            "plan": self.plan,
            "ranking": [vars(r) for r in self.rows],
            "cache": str(self.cache),
        }

    @classmethod
    def from_dict(cls, data: dict, out: Path, cache: Path) -> TuneResult:
        rows = [Row(**r) for r in data["ranking"]]
        return cls(
            data["model"],
            data["target_length"],
            data["short_length"],
            data["native_length"],
            rows,
            data["baseline_short_score"],
            data["winner"],
            True,
            out,
            cache,
            data["tasks"],
            data.get("config_only_winner"),
            data.get("budget_minutes"),
            data.get("plan", []),
        )

    def lines(self) -> list[str]:
        head = [
            "rank",
            "method",
            "parameters",
            f"retrieval@{self.target_length}",
            f"short@{self.short_length}",
            "ppl",
            "seconds",
        ]
        table = [
            [
                str(i + 1),
                r.method,
                ", ".join(f"{k}={_shown(v)}" for k, v in sorted(r.params.items())) or "-",
                _num(r.target_score),
                _num(r.short_score) + (" (loss)" if r.short_loss else ""),
                _num(r.perplexity, 2),
                f"{r.seconds:.1f}" if r.error is None else f"failed: {r.error}",
            ]
            for i, r in enumerate(self.rows)
        ]
        widths = [max(len(row[i]) for row in [head, *table]) for i in range(len(head))]
        lines = [
            f"tune of {self.model} for {self.target_length} tokens (native {self.native_length}); unpatched "
            f"at {self.short_length}: {_num(self.baseline_short)}" + (" (cached)" if self.cached else "")
        ]
        lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [head, *table]]
        lines += [f"budget: {line}" for line in self.plan]
        best = self.rows[0] if self.rows else None
        lines.append(
            f"winner: {self.winner['label']}"
            + (
                "; no candidate retrieved anything at the target length (ranked by short context and perplexity)"
                if best is not None and not best.target_score
                else ""
            )
        )
        if self.config_only_winner is not None and self.config_only_winner != self.winner:
            lines.append(f"config-only winner (ctxext patch --method auto): {self.config_only_winner['label']}")
        for row in self.rows:
            if row.search is not None:
                found = row.search
                start = ", ".join(f"{k} {v:.3f}" for k, v in found["start"].items())
                lines.append(
                    f"longrope search: population {found['population']}, {found['iterations']} iterations, "
                    f"{found['candidates']} candidates, {found['seconds']:.0f} s; perplexity at "
                    f"{self.target_length} on {found['windows']} window(s): {found['perplexity']:.3f} "
                    f"(start, as longrope factors: {start}); factors: {self.out / FACTORS_FILE}"
                )
        lines.append(f"written: {self.out / RESULT}; cache: {self.cache}")
        return lines


def _num(value, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _shown(value) -> str:
    """A parameter as the table shows it: a factor list by its range and length."""
    if isinstance(value, list):
        return f"[{min(value):g}..{max(value):g}] x{len(value)}"
    return str(value)


def _pick(row: Row) -> dict:
    return {"method": row.method, "params": row.params, "label": row.label}


def tune(
    model: str | Path,
    target_length: int,
    *,
    out: str | Path = "tune-report",
    methods: list[str] | None = None,
    short_length: int | None = None,
    depths: list[float] = DEPTHS,
    samples: int = 1,
    ppl: bool = True,
    tasks: list[str] = TASKS,
    text_file: str | Path | None = None,
    search_minutes: float | None = None,
    search_windows: int | None = None,
    budget_minutes: float | None = None,
    seed: int = 0,
    dtype: str = "float32",
    device: str = "cpu",
    refresh: bool = False,
) -> TuneResult:
    """Rank the candidate methods for ``model`` at ``target_length``; see the module docstring.

    ``samples`` keys per depth; ``short_length`` defaults to min(L/2, 4096); ``tasks``: retrieval tasks
    (default the two prose ones); ``text_file``: the perplexity text (default: the offline prose corpus);
    ``search_minutes`` (default 10) and ``search_windows`` (default 2): the longrope search's budget and
    windows, only for ``methods`` with longrope; ``budget_minutes``: successive halving within that budget
    (:func:`_halve`); ``refresh`` ignores a cached result. Every argument is
    checked before the model loads.
    """
    auto.check_cache_dir(writable=True)
    check_length(target_length)
    if short_length is not None:
        check_length(short_length)
    check_count(samples, "--samples", maximum=MAX_SAMPLES)
    if depths is None or isinstance(depths, str) or not list(depths):
        raise CtxextError("tune needs fixed needle depths (a list of numbers in [0, 1])")
    check_fraction(list(depths), "--depths")
    tasks = [tasks] if isinstance(tasks, str) else list(dict.fromkeys(tasks or []))
    retrieval = generation_tasks(TASK_NAMES)
    if not tasks or any(t not in retrieval for t in tasks):
        got = ", ".join(map(str, tasks)) or "none"
        raise CtxextError(f"tune scores retrieval tasks ({', '.join(retrieval)}), got {got}")
    if budget_minutes is not None and (
        isinstance(budget_minutes, bool)
        or not isinstance(budget_minutes, (int, float))
        or not math.isfinite(budget_minutes)
        or budget_minutes <= 0
    ):
        raise CtxextError(f"--budget-minutes must be a positive number of minutes, got {budget_minutes!r}")
    out = Path(out)
    config = EvalConfig(
        model=str(model),
        out=out,
        tasks=[*tasks, *([PPL] if ppl else [])],
        samples=samples * len(depths),
        depths=list(depths),
        seed=seed,
        dtype=dtype,
        device=device,
        lengths=[target_length],
        text_file=None if text_file is None else str(text_file),
    )
    checked = check_config(config)
    native = native_length(checked.model_config)
    if target_length <= native:
        raise CtxextError(f"--target-length {target_length} is not beyond the native length {native}")
    short = short_length or min(native // 2, SHORT_CAP)
    rows = candidates(methods, native, target_length)
    searched = next((r for r in rows if r.label == SEARCH_LABEL), None)
    for flag, value in (("--search-minutes", search_minutes), ("--search-windows", search_windows)):
        if searched is None and value is not None:
            raise CtxextError(f"{flag} is a setting of the longrope search: add longrope to --methods")
    minutes = check_budget(SEARCH_MINUTES if search_minutes is None else search_minutes)
    search_windows = SEARCH_WINDOWS if search_windows is None else search_windows
    check_count(search_windows, "--search-windows")
    for row in rows:
        params = {"long_factor": 1.0} if row is searched else row.params  # the searched factors come later
        plan_extension(checked.model_config, row.method, target_length=target_length, params=params, restore_first=True)
    corpus = perplexity.load_corpus(text_file)[0] if ppl or searched else None
    cache = auto.cache_path(model, checked.location.directory, target_length)
    cached = None if refresh else auto.read_cached(model, checked.location.directory, target_length)
    if cached is not None:
        _check_cached(cache, cached)
    wanted = {r.label for r in rows}
    if (
        cached is not None
        and {r["label"] for r in cached["ranking"]} == wanted
        and cached.get("short_length") == short
        and cached.get("tasks") == tasks
        and cached.get("budget_minutes") == budget_minutes
    ):
        result = TuneResult.from_dict(cached, out, cache)
        _write(out, result)
        return result
    config.lengths = sorted({short, target_length})
    settings = {**config.settings(), "tune_target_length": target_length, "tune_short_length": short}
    with RecordStore(out, settings) as store:
        units = _units(rows, config, tasks, short, target_length, ppl, seed)
        todo = [u for u in units if u not in store]
        tokenizer = load_tokenizer(checked.location)
        samples_by_key = build_samples(config, tokenizer, checked.model_config, todo)
        ids = None
        if corpus is not None:
            ids = perplexity.text_ids(tokenizer, corpus)
            perplexity.window_count(len(ids), target_length, config.ppl_stride)  # a corpus too short fails here
        loaded = load_model(config) if todo or searched or budget_minutes is not None else None
        if searched is not None:
            found = search(loaded, ids, target_length, store, minutes=minutes, windows=search_windows, seed=seed)
            searched.params = {"long_factor": found.factors}
            searched.search = found.summary()
        setups = {BASELINE: Setup(None)}
        setups.update({r.label: Setup(r.method, r.params, target_length=target_length) for r in rows})
        backend = TransformersBackend(loaded, tokenizer) if loaded is not None else None
        windows = WindowSettings(ids, config.ppl_stride, config.ppl_bucket) if ids is not None else None

        def run(todo: list[tuple]) -> None:
            new = [u for u in todo if (u[1], u[2], u[3]) not in samples_by_key]
            samples_by_key.update(build_samples(config, tokenizer, checked.model_config, new))
            failed = run_units(
                backend, todo, setups, samples_by_key, store, windows=windows, desc="tune", skip_failed=True
            )
            for row in rows:
                row.error = failed.get(row.label, row.error)

        if todo:
            run(todo)
        plan = (
            _halve(rows, store, run, config.samples, tasks, target_length, budget_minutes * 60)
            if budget_minutes is not None
            else []
        )
        if backend is not None:
            backend.close()
        store.begin()
        baseline_short = _mean(store, BASELINE, short, tasks)
        for row in rows:
            if row.error is None:
                row.target_score = _mean(store, row.label, target_length, tasks)
                row.short_score = _mean(store, row.label, short, tasks)
                row.perplexity = _perplexity(store, row.label, target_length) if ppl else None
                row.seconds = round(sum(r["seconds"] for k, r in store.records.items() if k[0] == row.label), 3)
        ranked = rank(rows, baseline_short)
        config_only = next((r for r in ranked if r.error is None and get_method(r.method).stock_loadable), None)
        result = TuneResult(
            str(model),
            target_length,
            short,
            native,
            ranked,
            baseline_short,
            _pick(ranked[0]),
            False,
            out,
            cache,
            tasks,
            None if config_only is None else _pick(config_only),
            budget_minutes,
            plan,
        )
        auto.write_cached(model, checked.location.directory, target_length, result.to_dict())
        _write(out, result)
        return result


CACHED = {  # what a cached result holds besides the winners (``auto`` checks those), each with its type
    "model": str,
    "target_length": int,
    "short_length": int,
    "native_length": int,
    "tasks": list,
    "baseline_short_score": float | None,
    "budget_minutes": float | None,
    "ranking": list,
}
TYPE_NAMES = {str: "text", int: "a whole number", float: "a number", bool: "true or false", list: "a list"}
TYPE_NAMES.update({dict: "an object", type(None): "null"})


def _check_cached(path: Path, data: dict) -> None:
    """The fields ``TuneResult.from_dict`` reads from a cached result, each of its type, the rows' too."""
    fields = [(name, data.get(name, ...), hint) for name, hint in CACHED.items()]
    fields.append(("plan", data.get("plan", []), list))
    row_types = typing.get_type_hints(Row)
    required = {f.name for f in dataclasses.fields(Row) if f.default is dataclasses.MISSING}
    for i, row in enumerate(data["ranking"] if isinstance(data.get("ranking"), list) else []):
        if not isinstance(row, dict):
            raise auto.damaged(path, f"ranking[{i}]", f"must be an object, got {row!r}")
        unknown = sorted(set(row) - set(row_types))
        if unknown:
            raise auto.damaged(path, f"ranking[{i}].{unknown[0]}", "no such field of a ranked candidate")
        fields += [(f"ranking[{i}].{k}", row.get(k, ...), row_types[k]) for k in row_types if k in row or k in required]
    for name, value, hint in fields:
        kinds = typing.get_args(hint) or (hint,)
        if value is ...:
            raise auto.damaged(path, name, "missing")
        if not _of_kinds(value, kinds):
            raise auto.damaged(path, name, f"must be {' or '.join(TYPE_NAMES[k] for k in kinds)}, got {value!r}")


def _of_kinds(value, kinds: tuple) -> bool:
    if isinstance(value, bool):
        return bool in kinds
    return isinstance(value, kinds) or (float in kinds and isinstance(value, int))


def _halve(
    rows: list[Row],
    store: RecordStore,
    run: Callable[[list[tuple]], None],
    per_depths: int,
    tasks: list[str],
    target: int,
    budget_seconds: float,
) -> list[str]:
    """Successive halving after the first round: keep the better half (by retrieval at the target length so
    far), give each survivor ``per_depths`` more prompts per task, while the budget lasts.

    Time is counted from the records' seconds (so a resumed run makes the same decisions); a round is started
    only when its cost, estimated from the mean seconds of the target-length prompts so far, fits what is left.
    Returns the plan, one line per round, for the table.
    """
    alive = [r for r in rows if r.error is None]
    spent = sum(r.get("seconds", 0.0) for r in store.records.values())
    prompts = [r["seconds"] for k, r in store.records.items() if k[2] == target and k[1] in tasks]
    per_prompt = sum(prompts) / len(prompts) if prompts else 0.0
    plan = [
        f"{budget_seconds / 60:g} min; round 1: {len(alive)} candidates x {per_depths * len(tasks)} prompts at "
        f"{target} (+ the short-context guard), {spent:.0f} s, {per_prompt:.1f} s per prompt"
    ]
    scored = 1
    while len(alive) > 1:
        for row in alive:
            row.target_score = _mean(store, row.label, target, tasks)
        keep = sorted(alive, key=lambda r: (-(r.target_score or 0.0), r.index))[: math.ceil(len(alive) / 2)]
        cost = len(keep) * per_depths * len(tasks) * per_prompt
        if spent + cost > budget_seconds:
            plan.append(
                f"round {scored + 1} would take about {cost:.0f} s with {budget_seconds - spent:.0f} s left: "
                f"stopped with {len(alive)} candidates"
            )
            break
        scored += 1
        indices = range((scored - 1) * per_depths, scored * per_depths)
        run([(r.label, task, target, i) for r in keep for task in tasks for i in indices])
        alive = [r for r in keep if r.error is None]
        for row in alive:
            row.rounds = scored
        spent = sum(r.get("seconds", 0.0) for r in store.records.values())
        plan.append(
            f"round {scored}: kept {', '.join(r.label for r in keep)}; {per_depths * len(tasks)} more "
            f"prompts each, {spent:.0f} s spent"
        )
    return plan


def _units(
    rows: list[Row], config: EvalConfig, tasks: list[str], short: int, target: int, ppl: bool, seed: int
) -> list[tuple]:
    count = config.samples
    units = [(BASELINE, task, short, i) for task in tasks for i in range(count)]
    for position in seeded_order(len(rows), seed):
        name = rows[position].label
        for length in (target, short):
            units += [(name, task, length, i) for task in tasks for i in range(count)]
        if ppl:
            units.append((name, PPL, target, 0))
    return units


def _mean(store: RecordStore, name: str, length: int, tasks: list[str]) -> float | None:
    values = [r["score"] for k, r in store.records.items() if k[0] == name and k[2] == length and k[1] in tasks]
    return round(sum(values) / len(values), 3) if values else None


def _perplexity(store: RecordStore, name: str, length: int) -> float | None:
    record = store.records.get((name, PPL, length, 0))
    if not record or not record["n_scored"]:
        return None
    return round(math.exp(record["nll_sum"] / record["n_scored"]), 4)


def _write(out: Path, result: TuneResult) -> None:
    """``tune.json``, and the searched longrope factors as the JSON list ``--long-factor @FILE`` reads."""
    files = {RESULT: result.to_dict()}
    searched = next((r for r in result.rows if r.search is not None), None)
    if searched is not None:
        files[FACTORS_FILE] = searched.params["long_factor"]
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            write_json(out / name, data, indent=1)
    except OSError as exc:
        raise CtxextError(f"{out}: cannot write {RESULT} there ({exc.strerror or exc})") from None
