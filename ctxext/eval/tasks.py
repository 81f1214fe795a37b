"""The task registry: every task ``ctxext eval --tasks`` accepts, its groups, and sample making by name.

Tasks are :class:`~ctxext.eval.task.Task` records: passkey (``passkey.py``), the RULER-style family
(``ruler.py``) and perplexity (sliding windows over a corpus, ``perplexity.py``: the one task of the ``nll``
kind). Adding a task is one record in its module and its name here.
"""

from __future__ import annotations

from ..errors import CtxextError
from . import passkey, ruler
from .samples import Sample
from .task import GENERATE, NLL, Task

PPL = "ppl"
TASKS: dict[str, Task] = {
    "passkey": passkey.TASK,
    PPL: Task(PPL, NLL, "perplexity"),
    **ruler.TASKS,
}
TASK_NAMES = tuple(TASKS)  # every single task
GROUPS = {
    "ruler": list(ruler.TASKS),
    "ruler-synthetic": [name for name, task in ruler.TASKS.items() if task.comparable],
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise CtxextError(f"unknown task '{name}' (valid: {', '.join([*TASKS, *GROUPS])})")
    return TASKS[name]


def expand_tasks(text: str) -> list[str]:
    """'passkey,ruler,ppl' -> the task names in order, groups expanded, duplicates dropped."""
    names: list[str] = []
    for part in (p.strip().lower() for p in text.split(",") if p.strip()):
        if part in GROUPS:
            names += GROUPS[part]
        elif part in TASKS:
            names.append(part)
        else:
            valid = ", ".join(["passkey", PPL, *GROUPS, *ruler.TASKS])
            raise CtxextError(f"unknown task '{part}' (valid: {valid})")
    if not names:
        raise CtxextError("no tasks given")
    return list(dict.fromkeys(names))


def generation_tasks(names) -> list[str]:
    """The tasks of ``names`` that generate answers (every kind but ``nll``), in order."""
    return [name for name in names if get_task(name).kind == GENERATE]


def nll_tasks(names) -> list[str]:
    return [name for name in names if get_task(name).kind == NLL]


def make_sample(task: str, tokenizer, length: int, index: int, seed: int, depths) -> Sample:
    spec = get_task(task)
    if spec.make is None:
        raise CtxextError(f"task '{task}' scores corpus windows; it has no prompts")
    try:
        return spec.make(tokenizer, length, index, seed, depths)
    except ValueError as exc:
        raise CtxextError(str(exc)) from None
