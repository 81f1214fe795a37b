"""``ctxext probe``: a model's effective retrieval length E, on a ladder of lengths up to its context length.

Passkey and single-needle retrieval (``niah_single_1``) at each length of a ladder built from the
model's context length L (its native length, or the extended length of a ctxext-patched checkpoint):
L/8, L/4, L/2, 3L/4 and L, without the lengths too short for the prompts; ``beyond`` continues it
past L in steps of L/2. Each task and length gets every needle depth with a few keys. E is the
longest ladder length up to which the mean score over the tasks stays above the threshold: the eval
summary's effective-length rule (``summary.effective_length``), read from the summary of the run.

The probe is a ``ctxext eval`` run without methods, of the model as it loads (a checkpoint's ctxext
patch kept): the same checks before the model loads, the same records (so a rerun with the same
``out`` resumes), prompts and greedy generation, and its report. It adds ``probe.json``, a depth x
length heatmap ``probe.png`` (one panel per task) and, with ``record``, stores E in the patched
directory's record (``patching.record_effective_length``), where ``ctxext info`` shows it.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..checkpoint.atomic import write_json
from ..checkpoint.default_model import ALIAS
from ..checkpoint.directory import record_effective_length, recordable_config
from ..checkpoint.info import location_record
from ..checkpoint.locations import ModelLocation, resolve_model_path
from ..core.record import ExtensionRecord
from ..core.rope_setup import native_length
from ..core.validate import MAX_SAMPLES, check_count, check_length
from ..errors import CtxextError
from ..model.loading import load_tokenizer, model_config
from .constants import BASELINE, DEFAULT_DEPTHS, THRESHOLD
from .runner import EvalConfig, check_config, run
from .summary import effective_length, task_average
from .tasks import TASK_NAMES, get_task, make_sample

PROBE_TASKS = ("passkey", "niah_single_1")
LADDER = (1 / 8, 1 / 4, 1 / 2, 3 / 4, 1)  # fractions of the context length L
BEYOND_STEP = 0.5  # past L the ladder steps by L/2, up to beyond x L
MAX_BEYOND = 64
RESULT = "probe.json"
HEATMAP = "probe.png"


@dataclass
class ProbeResult:
    """What a probe measured, and where it wrote it (``probe.json`` holds the same)."""

    model: str
    out: Path
    context_length: int  # L: the native length, or a patched checkpoint's extended length
    patch: str | None  # the checkpoint's ctxext patch ("yarn x4 of 8192"), None when unpatched
    lengths: list[int]
    tasks: list[str]
    depths: list[float]
    samples: int  # keys per depth: depths x samples prompts per task and length
    threshold: float
    scores: dict[str, dict[int, float]]  # task -> length -> score (0-100)
    average: dict[int, float]  # length -> mean score over the tasks
    effective_length: int | None  # E; None: already the shortest length scores at or below the threshold
    seconds: float  # this call, model load included
    generation_seconds: float  # every record's generation time, resumed ones included
    heatmap: Path | None
    report: Path
    recorded: Path | None = None  # the config.json E was written into

    def to_dict(self) -> dict:
        data = asdict(self)
        for key in ("out", "heatmap", "report", "recorded"):
            data[key] = None if data[key] is None else str(data[key])
        return data

    def first_failing(self) -> int | None:
        """The shortest ladder length above E (the one where the scores first fail), or None."""
        return next((L for L in self.lengths if self.effective_length is None or L > self.effective_length), None)

    def lines(self) -> list[str]:
        """The result as ``ctxext probe`` prints it: a length x task table, E, the time taken."""
        patch = f" ({self.patch})" if self.patch else " (native)"
        lines = [
            f"probe of {self.model}: context length {self.context_length}{patch}; "
            f"{len(self.depths) * self.samples} prompts per task and length "
            f"({len(self.depths)} depths x {self.samples} key{'s' if self.samples != 1 else ''})"
        ]
        header = ["length", *self.tasks, "mean"]
        rows = [
            [str(L), *(_score(self.scores[t].get(L)) for t in self.tasks), _score(self.average.get(L))]
            for L in self.lengths
        ]
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
        lines += ["  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in [header, *rows]]
        failing = self.first_failing()
        if self.effective_length is None:
            lines.append(
                f"effective length: below {self.lengths[0]} tokens (no ladder length scores above {self.threshold:g})"
            )
        else:
            if failing:
                lines.append(
                    f"effective length: {self.effective_length} tokens (mean above {self.threshold:g} up "
                    f"to there; {failing} scores {_score(self.average.get(failing))})"
                )
            else:
                lines.append(
                    f"effective length: {self.effective_length} tokens, the whole ladder (mean above "
                    f"{self.threshold:g} at every length)"
                )
        pictures = f", {self.heatmap.name}" if self.heatmap else ""
        lines.append(
            f"took {self.seconds:.1f} s (generation {self.generation_seconds:.1f} s over all records); "
            f"{self.out}: {RESULT}{pictures}, {self.report.name}"
        )
        if self.recorded:
            lines.append(f"recorded in {self.recorded}")
        return lines


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def ladder(context_length: int, beyond: float | None = None) -> list[int]:
    """The default lengths for a context length L: L/8, L/4, L/2, 3L/4, L, then up to ``beyond`` x L in steps of L/2."""
    fractions = list(LADDER)
    if beyond is not None:
        steps = math.ceil(round((beyond - 1) / BEYOND_STEP, 9))
        fractions += [min(1 + BEYOND_STEP * k, beyond) for k in range(1, steps + 1)]
    return sorted({round(context_length * f) for f in fractions} - {0})


def read_summary(summary: dict, tasks: list[str], lengths: list[int]) -> tuple[dict, dict, int | None]:
    """(task -> length -> score, length -> mean over the tasks, E) of the probed model from an eval summary."""
    scores = {t: dict(summary["scores"][BASELINE][t]) for t in tasks}
    average = task_average(scores, tasks, lengths)
    return scores, average, effective_length(average, summary["threshold"])


def default_out(model: str | Path, location: ModelLocation) -> Path:
    """``probe-<model name>`` in the current directory."""
    if str(model) == ALIAS:
        name = ALIAS
    elif location.gguf_file is not None:
        name = Path(location.gguf_file).stem
    else:
        name = location.directory.resolve().name
    return Path(f"probe-{name}")


def probe(
    model: str | Path,
    *,
    out: str | Path | None = None,
    lengths: list[int] | None = None,
    beyond: float | None = None,
    depths: list[float] = DEFAULT_DEPTHS,
    samples: int = 2,
    tasks: list[str] = PROBE_TASKS,
    threshold: float = THRESHOLD,
    seed: int = 0,
    dtype: str = "float32",
    device: str = "cpu",
    record: bool = False,
) -> ProbeResult:
    """Measure the effective retrieval length E of ``model`` (directory, .gguf file or 'smollm2') as it loads.

    ``lengths`` replaces the default ladder (taken as given, also past the context length); ``beyond``
    (a multiple of the context length, e.g. 2) extends the default ladder past it. ``depths`` x
    ``samples`` prompts per task and length. ``out``: the run directory (default ``probe-<model name>``;
    rerun to resume). ``record``: store E in the patched model directory's record (a directory
    without a ctxext patch, or a GGUF file, is refused; an E below the ladder clears an earlier one).
    Everything is checked before the model loads.
    """
    start = time.perf_counter()
    tasks = _checked_tasks(tasks)
    if lengths is not None and beyond is not None:
        raise CtxextError("give lengths (--lengths) or beyond (--beyond), not both: --lengths is the whole ladder")
    if beyond is not None and (
        isinstance(beyond, bool)
        or not isinstance(beyond, (int, float))
        or not math.isfinite(beyond)
        or not 1 < beyond <= MAX_BEYOND
    ):
        raise CtxextError(
            f"--beyond is a multiple of the context length above 1 (at most {MAX_BEYOND}), e.g. 2, got {beyond!r}"
        )
    if depths is None or isinstance(depths, str):
        raise CtxextError("the probe needs fixed needle depths (a list of numbers in [0, 1]), not random ones")
    check_count(samples, "--samples", maximum=MAX_SAMPLES)
    if lengths is not None:
        lengths = list(lengths) if not isinstance(lengths, (str, int)) else [lengths]
        for length in lengths:
            check_length(length)
        if not lengths:
            raise CtxextError("no lengths given")
    location = resolve_model_path(model)
    read = model_config(location)
    saved = location_record(location, read)
    context = saved.target_length if saved else native_length(read)
    expected = recordable_config(model)[1] if record else None
    config = EvalConfig(
        model=str(model),
        out=Path(out) if out is not None else default_out(model, location),
        tasks=tasks,
        lengths=sorted(set(lengths)) if lengths else ladder(context, beyond),
        samples=samples * len(list(depths)),
        depths=list(depths),
        seed=seed,
        dtype=dtype,
        device=device,
        threshold=threshold,
        as_loaded=True,
    )
    checked = check_config(config)
    if lengths is None:
        config.lengths = _fitting(config, checked.location, context)
    data = run(config)
    scores, average, found = read_summary(data["summary"], tasks, config.lengths)
    grid = {t: data["summary"]["depth_grid"][t][BASELINE] for t in tasks if t in data["summary"]["depth_grid"]}
    heatmap = None
    if grid:
        from . import plots  # matplotlib loads only when a picture is drawn

        heatmap = plots.heatmap("retrieval", grid, config.lengths, config.out / HEATMAP)
    result = ProbeResult(
        model=str(model),
        out=config.out,
        context_length=context,
        patch=_describe(saved),
        lengths=config.lengths,
        tasks=tasks,
        depths=list(depths),
        samples=samples,
        threshold=threshold,
        scores=scores,
        average=average,
        effective_length=found,
        seconds=0.0,
        generation_seconds=round(sum(r["seconds"] for r in data["records"]), 3),
        heatmap=heatmap,
        report=config.out / "report.md",
    )
    try:
        if record:
            result.recorded = record_effective_length(model, found, expected=expected)
    finally:
        result.seconds = round(time.perf_counter() - start, 3)
        write_json(config.out / RESULT, result.to_dict(), indent=1)
    return result


def _checked_tasks(tasks) -> list[str]:
    if isinstance(tasks, str):
        tasks = [tasks]
    tasks = list(dict.fromkeys(tasks or []))
    if not tasks:
        raise CtxextError("no tasks given")
    for task in tasks:
        if task not in TASK_NAMES or not get_task(task).generates:
            raise CtxextError(f"the probe runs retrieval tasks (passkey or RULER-style ones), not '{task}'")
    return tasks


def _fitting(config: EvalConfig, location: ModelLocation, context: int) -> list[int]:
    """The ladder without its lengths too short for a prompt (built with the tokenizer, every sample,
    shortest length first: a length that fits makes every longer one fit)."""
    tokenizer = load_tokenizer(location)
    reason = None
    for i, length in enumerate(config.lengths):
        try:
            for task in config.tasks:
                for index in range(config.samples):
                    make_sample(task, tokenizer, length, index, config.seed, config.depths)
        except CtxextError as exc:
            reason = exc
            continue
        return config.lengths[i:]
    raise CtxextError(
        f"no length of the ladder ({', '.join(map(str, config.lengths))} tokens, from the context "
        f"length {context}) is long enough for the probe's prompts ({reason}); give --lengths"
    )


def _describe(record: ExtensionRecord | None) -> str | None:
    return None if record is None else f"{record.method} x{record.factor:g} of {record.original_length}"
