"""The one run loop of the evaluation: (configuration x task x length x sample) units -> records in a store.

``ctxext eval``, ``ctxext probe`` (an eval run) and ``ctxext tune`` all run their units here, through a
backend (``backend.py``). A unit is ``(label, task, length, index)``; ``label`` names a :class:`Setup`.
Every finished unit is appended to the record store at once, so an interrupted run resumes.
"""

from __future__ import annotations

import dataclasses
import time

from tqdm import tqdm

from ..errors import CtxextError
from .backend import Setup
from .samples import Sample
from .scoring import score
from .store import RecordStore
from .tasks import get_task


@dataclasses.dataclass(frozen=True)
class WindowSettings:
    """How a perplexity unit is scored: the corpus token ids, the stride and the NLL position bucket."""

    ids: object  # a 1-D tensor of token ids
    stride: int
    bucket: int


def generation_record(label: str, sample: Sample, generated: str, n_tokens: int, seconds: float) -> dict:
    value = score(sample.metric, generated, sample.references)
    return {
        "method": label,
        "task": sample.task,
        "length": sample.length,
        "sample": sample.index,
        "depth": sample.depth,
        "n_tokens": n_tokens,
        "expected": sample.references,
        "generated": generated,
        "metric": sample.metric,
        "score": value,
        "correct": value == 100.0,
        "seconds": round(seconds, 3),
        **sample.meta,
    }


def run_units(
    backend,
    todo: list[tuple],
    setups: dict[str, Setup],
    samples: dict[tuple, Sample],
    store: RecordStore,
    *,
    windows: WindowSettings | None = None,
    desc: str = "eval",
    skip_failed: bool = False,
) -> dict[str, str]:
    """Run every unit of ``todo`` (in order; units of one label together) and add its record to ``store``.

    ``samples``: the prompts, keyed (task, length, index). ``skip_failed``: a configuration the backend cannot
    apply is skipped with its units (returned as {label: error}) instead of ending the run.
    """
    failed: dict[str, str] = {}
    current = None
    with tqdm(total=len(todo), desc=desc, unit="unit", disable=not todo) as bar:
        for label, task, length, index in todo:
            if label in failed:
                bar.update()
                continue
            if label != current:
                current = label
                try:
                    backend.use(setups[label])
                except CtxextError as exc:
                    if not skip_failed:
                        raise
                    failed[label] = str(exc)
                    bar.update()
                    continue
            bar.set_postfix_str(f"{label} {task} {length}")
            start = time.perf_counter()
            if get_task(task).generates:
                sample = samples[task, length, index]
                generated, n_tokens = backend.generate(sample)
                record = generation_record(label, sample, generated, n_tokens, time.perf_counter() - start)
            else:
                window = backend.score_window(windows.ids, index, length, windows.stride, min(windows.bucket, length))
                record = {
                    "method": label,
                    "task": task,
                    "length": length,
                    "sample": index,
                    **dataclasses.asdict(window),
                    "seconds": round(time.perf_counter() - start, 3),
                }
            store.add(record)
            bar.update()
    return failed
