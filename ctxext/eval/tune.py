"""``ctxext tune``: a small seeded search over methods and their main parameters for one target length.

Each candidate of :data:`CANDIDATES` (``methods`` restricts them by method name) is applied to the model
with ``extend`` and scored on a few passkey and ``niah_single_1`` prompts at the target length (default
2 depths x 1 key per task), the same prompts at a short length inside the native length L
(min(L/2, 4096)) and, unless ``ppl=False``, one perplexity window at the target length. The unpatched
model answers the short prompts too. Ranking (:func:`rank`):

1. a candidate whose short-context score is below the unpatched model's ranks below every one that is not;
2. then the higher mean retrieval score at the target length;
3. then the lower perplexity at the target length (missing: last);
4. then the candidate's place in :data:`CANDIDATES`.

Candidates run in an order shuffled with ``seed``; the ranking does not depend on it. Every finished
prompt goes to the run's record log in ``out`` (the eval runner's ``RecordStore``), so a rerun resumes.
The result goes to ``out/tune.json`` and to the cache (``ctxext.auto``: ``$CTXEXT_CACHE``, default
``~/.cache/ctxext/tune/<key>.json``, keyed by model path, config.json hash and target length), which
``--method auto`` reads; a cached result is returned without loading the model unless ``refresh``.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


from .. import auto
from ..checkpoint.atomic import write_json
from ..core.plan import plan_extension
from ..core.registry import get_method
from ..core.rope_setup import native_length
from ..core.validate import check_count, check_fraction, check_length
from ..errors import CtxextError
from ..model.loading import load_tokenizer
from . import perplexity
from .constants import BASELINE
from .backend import Setup, TransformersBackend
from .loop import WindowSettings, run_units
from .runner import EvalConfig, build_samples, check_config, load_model
from .store import RecordStore
from .tasks import PPL

TASKS = ("passkey", "niah_single_1")
DEPTHS = (0.25, 0.75)
RESULT = "tune.json"
SHORT_CAP = 4096


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
    Candidate("rerope", lambda L, T: {}, "ReRoPE, w = L/4"),
    Candidate("rerope", lambda L, T: {"log_scaling": True}, "ReRoPE with log-n scaling"),
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


def rank(rows: list[Row], baseline_short: float | None) -> list[Row]:
    """Rows best first (see the module docstring); sets ``short_loss``."""
    for row in rows:
        row.short_loss = row.error is None and baseline_short is not None and row.short_score is not None \
            and row.short_score < baseline_short
    return sorted(rows, key=lambda r: (r.error is not None, r.short_loss, -(r.target_score or 0.0),
                                       r.perplexity if r.perplexity is not None else math.inf, r.index))


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
        known = {c.method for c in CANDIDATES}
        missing = sorted(wanted - known)
        if missing:
            raise CtxextError(f"tune has no candidates for {', '.join(missing)} (tuned: {', '.join(sorted(known))})")
    rows = []
    for index, candidate in enumerate(CANDIDATES):
        if wanted is None or candidate.method in wanted:
            params = candidate.params(native, target)
            rows.append(Row(label(candidate.method, params), candidate.method, params, index))
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

    def to_dict(self) -> dict:
        return {"model": self.model, "target_length": self.target_length, "short_length": self.short_length,
                "native_length": self.native_length, "tasks": self.tasks, "baseline_short_score": self.baseline_short,
                "winner": self.winner, "ranking": [vars(r) for r in self.rows], "cache": str(self.cache)}

    @classmethod
    def from_dict(cls, data: dict, out: Path, cache: Path) -> "TuneResult":
        rows = [Row(**r) for r in data["ranking"]]
        return cls(data["model"], data["target_length"], data["short_length"], data["native_length"], rows,
                   data["baseline_short_score"], data["winner"], True, out, cache, data["tasks"])

    def lines(self) -> list[str]:
        head = ["rank", "method", "parameters", f"retrieval@{self.target_length}", f"short@{self.short_length}",
                "ppl", "seconds"]
        table = [[str(i + 1), r.method, ", ".join(f"{k}={v}" for k, v in sorted(r.params.items())) or "-",
                  _num(r.target_score), _num(r.short_score) + (" (loss)" if r.short_loss else ""),
                  _num(r.perplexity, 2), f"{r.seconds:.1f}" if r.error is None else f"failed: {r.error}"]
                 for i, r in enumerate(self.rows)]
        widths = [max(len(row[i]) for row in [head, *table]) for i in range(len(head))]
        lines = [f"tune of {self.model} for {self.target_length} tokens (native {self.native_length}); unpatched "
                 f"at {self.short_length}: {_num(self.baseline_short)}" + (" (cached)" if self.cached else "")]
        lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [head, *table]]
        best = self.rows[0] if self.rows else None
        lines.append(f"winner: {self.winner['label']}" + (
            "; no candidate retrieved anything at the target length (ranked by short context and perplexity)"
            if best is not None and not best.target_score else ""))
        lines.append(f"written: {self.out / RESULT}; cache: {self.cache}")
        return lines


def _num(value, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def tune(model: str | Path, target_length: int, *, out: str | Path = "tune-report", methods: list[str] | None = None,
         short_length: int | None = None, depths: list[float] = DEPTHS, samples: int = 1, ppl: bool = True,
         tasks: list[str] = TASKS,
         seed: int = 0, dtype: str = "float32", device: str = "cpu", refresh: bool = False) -> TuneResult:
    """Rank the candidate methods for ``model`` at ``target_length``; see the module docstring.

    ``samples`` keys per depth; ``short_length`` defaults to min(L/2, 4096); ``tasks``: a subset of
    passkey and niah_single_1; ``refresh`` ignores a cached result. Every argument is checked before the model loads.
    """
    check_length(target_length)
    if short_length is not None:
        check_length(short_length)
    check_count(samples, "--samples")
    if depths is None or isinstance(depths, str) or not list(depths):
        raise CtxextError("tune needs fixed needle depths (a list of numbers in [0, 1])")
    check_fraction(list(depths), "--depths")
    tasks = [tasks] if isinstance(tasks, str) else list(dict.fromkeys(tasks or []))
    if not tasks or any(t not in TASKS for t in tasks):
        got = ", ".join(map(str, tasks)) or "none"
        raise CtxextError(f"tune scores {' and '.join(TASKS)} (or one of them), got {got}")
    out = Path(out)
    config = EvalConfig(model=str(model), out=out, tasks=[*tasks, *([PPL] if ppl else [])],
                        samples=samples * len(depths), depths=list(depths), seed=seed, dtype=dtype, device=device,
                        lengths=[target_length])
    checked = check_config(config)
    native = native_length(checked.model_config)
    if target_length <= native:
        raise CtxextError(f"--target-length {target_length} is not beyond the native length {native}")
    short = short_length or min(native // 2, SHORT_CAP)
    rows = candidates(methods, native, target_length)
    for row in rows:
        plan_extension(checked.model_config, row.method, target_length=target_length, params=row.params,
                          restore_first=True)
    cache = auto.cache_path(model, checked.location.directory, target_length)
    cached = None if refresh else auto.read_cached(model, checked.location.directory, target_length)
    wanted = {r.label for r in rows}
    if cached is not None and {r["label"] for r in cached["ranking"]} == wanted \
            and cached.get("short_length") == short and cached.get("tasks") == tasks:
        result = TuneResult.from_dict(cached, out, cache)
        _write(out, result)
        return result
    config.lengths = sorted({short, target_length})
    store = RecordStore(out, {**config.settings(), "tune_target_length": target_length, "tune_short_length": short})
    units = _units(rows, config, tasks, short, target_length, ppl, seed)
    todo = [u for u in units if u not in store]
    tokenizer = load_tokenizer(checked.location)
    samples_by_key = build_samples(config, tokenizer, checked.model_config, todo)
    ids = None
    if ppl:
        ids = perplexity.text_ids(tokenizer, perplexity.load_corpus()[0])
        perplexity.window_count(len(ids), target_length, config.ppl_stride)  # a corpus too short fails here
    setups = {BASELINE: Setup(None), **{r.label: Setup(r.method, r.params, target_length=target_length) for r in rows}}
    if todo:
        backend = TransformersBackend(load_model(config), tokenizer)
        windows = WindowSettings(ids, config.ppl_stride, config.ppl_bucket) if ids is not None else None
        failed = run_units(backend, todo, setups, samples_by_key, store, windows=windows, desc="tune",
                           skip_failed=True)
        backend.close()
        for row in rows:
            row.error = failed.get(row.label, row.error)
    store.begin()
    baseline_short = _mean(store, BASELINE, short)
    for row in rows:
        if row.error is None:
            row.target_score, row.short_score = _mean(store, row.label, target_length), _mean(store, row.label, short)
            row.perplexity = _perplexity(store, row.label, target_length) if ppl else None
            row.seconds = round(sum(r["seconds"] for k, r in store.records.items() if k[0] == row.label), 3)
    ranked = rank(rows, baseline_short)
    best = ranked[0]
    result = TuneResult(str(model), target_length, short, native, ranked, baseline_short,
                        {"method": best.method, "params": best.params, "label": best.label}, False, out, cache,
                        tasks)
    auto.write_cached(model, checked.location.directory, target_length, result.to_dict())
    _write(out, result)
    return result


def _units(rows: list[Row], config: EvalConfig, tasks: list[str], short: int, target: int, ppl: bool,
           seed: int) -> list[tuple]:
    count = config.samples
    units = [(BASELINE, task, short, i) for task in tasks for i in range(count)]
    for position in seeded_order(len(rows), seed):
        name = rows[position].label
        for length in (target, short):
            units += [(name, task, length, i) for task in tasks for i in range(count)]
        if ppl:
            units.append((name, PPL, target, 0))
    return units


def _mean(store: RecordStore, name: str, length: int) -> float | None:
    values = [r["score"] for k, r in store.records.items() if k[0] == name and k[2] == length and k[1] in TASKS]
    return round(sum(values) / len(values), 3) if values else None


def _perplexity(store: RecordStore, name: str, length: int) -> float | None:
    record = store.records.get((name, PPL, length, 0))
    if not record or not record["n_scored"]:
        return None
    return round(math.exp(record["nll_sum"] / record["n_scored"]), 4)


def _write(out: Path, result: TuneResult) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / RESULT, result.to_dict(), indent=1)
    except OSError as exc:
        raise CtxextError(f"{out}: cannot write {RESULT} there ({exc.strerror or exc})") from None

