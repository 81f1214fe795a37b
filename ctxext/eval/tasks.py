"""Task names accepted by ``ctxext eval --tasks`` and the sample generator behind each."""

from __future__ import annotations

from ..errors import CtxextError
from . import passkey, ruler
from .samples import Sample

PPL = "ppl"
TASK_NAMES = ("passkey", PPL, *ruler.TASKS)  # every single task
GROUPS = {
    "ruler": list(ruler.TASKS),
    "ruler-synthetic": [name for name, task in ruler.TASKS.items() if task.comparable],
}


def expand_tasks(text: str) -> list[str]:
    """'passkey,ruler,ppl' -> the task names in order, groups expanded, duplicates dropped."""
    names: list[str] = []
    for part in (p.strip().lower() for p in text.split(",") if p.strip()):
        if part in GROUPS:
            names += GROUPS[part]
        elif part in TASK_NAMES:
            names.append(part)
        else:
            valid = ", ".join(["passkey", PPL, *GROUPS, *ruler.TASKS])
            raise CtxextError(f"unknown task '{part}' (valid: {valid})")
    if not names:
        raise CtxextError("no tasks given")
    return list(dict.fromkeys(names))


def make_sample(task: str, tokenizer, length: int, index: int, seed: int, depths) -> Sample:
    try:
        if task == "passkey":
            return passkey.make_sample(tokenizer, length, index, seed, depths)
        return ruler.make_sample(task, tokenizer, length, index, seed, depths)
    except ValueError as exc:
        raise CtxextError(str(exc)) from None
