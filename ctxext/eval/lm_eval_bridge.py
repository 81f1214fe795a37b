"""lm-eval on the in-memory (extended) model: our shipped task configs plus any lm-eval task.

This module only wraps lm-eval; applying each method and logging its results is the
runner's (``runner.run_lm_eval_tasks``). The model is wrapped with lm-eval's HFLM with
``max_length`` set explicitly (HFLM would otherwise read ``max_position_embeddings`` and
left-truncate longer prompts silently). On ``--backend vllm`` the engine worker runs lm-eval's
own ``vllm`` model on the patched directory instead (``engine_worker.run_lm_eval``) and this
module reads its results (:func:`metrics`). lm-eval is optional (``pip install 'ctxext[eval]'``)
and imported only when used.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CtxextError

INCLUDE_PATH = Path(__file__).parent / "lm_eval_tasks"


def include_path() -> Path:
    """The folder to give ``lm_eval --include_path`` for the ctxext_* tasks."""
    return INCLUDE_PATH


def require_lm_eval():
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise CtxextError("--lm-eval-tasks needs lm-eval: pip install 'ctxext[eval]'") from None
    return lm_eval, HFLM, TaskManager


@dataclass
class LmEvalRun:
    """What ``--lm-eval-tasks`` asks of every configuration: the tasks, lm-eval's task metadata (lengths, samples,
    seed, tokenizer), its ``--limit``, the context length, and the TaskManager built from them (in ctxext's
    process, where it checks the task names; an engine worker builds its own from the same fields)."""

    tasks: list[str]
    metadata: dict
    limit: int | None = None
    max_length: int = 0
    manager: Any = field(default=None, repr=False)

    @property
    def include_defaults(self) -> bool:
        """Whether lm-eval's own tasks are indexed too (slow: thousands of them), not only ours."""
        return not all(t.startswith("ctxext_") for t in self.tasks)


def task_manager(run: LmEvalRun):
    """lm-eval's TaskManager for ``run``'s tasks, built without a model; unknown task names are refused here."""
    _, _, TaskManager = require_lm_eval()
    manager = TaskManager(include_path=str(INCLUDE_PATH), include_defaults=run.include_defaults, metadata=run.metadata)
    unknown = [t for t in run.tasks if t not in manager.all_tasks]
    if unknown:
        raise CtxextError(f"unknown lm-eval task(s): {', '.join(unknown)}")
    return manager


def evaluate(model, tokenizer, run: LmEvalRun) -> dict:
    """{task: {metric: value}} for ``run``'s tasks (lm-eval names or ctxext_* names) on ``model`` as it is."""
    lm_eval, HFLM, _ = require_lm_eval()
    lm = HFLM(pretrained=model, tokenizer=tokenizer, max_length=run.max_length, batch_size=1)
    output = lm_eval.simple_evaluate(
        model=lm, tasks=run.tasks, task_manager=run.manager, limit=run.limit, log_samples=False, bootstrap_iters=0
    )
    return metrics(output["results"])


def metrics(results: dict) -> dict:
    """{task: {metric: value}} from lm-eval's ``results`` ({task: {"metric,filter": value, "alias": ...}})."""
    return {
        task: {
            key.split(",")[0]: value
            for key, value in values.items()
            if isinstance(value, (int, float)) and "_stderr" not in key and key != "alias"
        }
        for task, values in results.items()
    }
