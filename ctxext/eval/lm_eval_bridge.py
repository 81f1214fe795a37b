"""lm-eval on the in-memory (extended) model: our shipped task configs plus any lm-eval task.

This module only wraps lm-eval; applying each method and logging its results is the
runner's (``runner.run_lm_eval_tasks``). The model is wrapped with lm-eval's HFLM with
``max_length`` set explicitly (HFLM would otherwise read ``max_position_embeddings`` and
left-truncate longer prompts silently). lm-eval is optional (``pip install 'ctxext[eval]'``)
and imported only when used.
"""

from __future__ import annotations

from pathlib import Path

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


def task_manager(tasks: list[str], metadata: dict):
    """lm-eval's TaskManager for ``tasks``, built without a model; unknown task names are refused here."""
    _, _, TaskManager = require_lm_eval()
    ours_only = all(t.startswith("ctxext_") for t in tasks)  # indexing lm-eval's own thousands of tasks is slow
    manager = TaskManager(include_path=str(INCLUDE_PATH), include_defaults=not ours_only, metadata=metadata)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise CtxextError(f"unknown lm-eval task(s): {', '.join(unknown)}")
    return manager


def evaluate(model, tokenizer, tasks: list[str], max_length: int, manager, limit: int | None = None) -> dict:
    """{task: {metric: value}} for ``tasks`` (lm-eval names or ctxext_* names) on ``model`` as it is;
    ``manager`` from :func:`task_manager`."""
    lm_eval, HFLM, _ = require_lm_eval()
    lm = HFLM(pretrained=model, tokenizer=tokenizer, max_length=max_length, batch_size=1)
    output = lm_eval.simple_evaluate(
        model=lm, tasks=tasks, task_manager=manager, limit=limit, log_samples=False, bootstrap_iters=0
    )
    results = {}
    for task, values in output["results"].items():
        results[task] = {
            key.split(",")[0]: value
            for key, value in values.items()
            if isinstance(value, (int, float)) and "_stderr" not in key and key != "alias"
        }
    return results
