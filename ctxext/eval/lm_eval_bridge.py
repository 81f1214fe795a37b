"""lm-eval on the in-memory (extended) model: our shipped task configs plus any lm-eval task.

The model is wrapped with lm-eval's HFLM with ``max_length`` set explicitly (HFLM would
otherwise read ``max_position_embeddings`` and left-truncate longer prompts silently).
lm-eval is optional: ``pip install 'ctxext[eval]'``.
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


def evaluate(model, tokenizer, tasks: list[str], max_length: int, metadata: dict, limit: int | None = None) -> dict:
    """{task: {metric: value}} for ``tasks`` (lm-eval names or ctxext_* names) on ``model`` as it is."""
    lm_eval, HFLM, TaskManager = require_lm_eval()
    ours_only = all(t.startswith("ctxext_") for t in tasks)  # indexing lm-eval's own thousands of tasks is slow
    manager = TaskManager(include_path=str(INCLUDE_PATH), include_defaults=not ours_only, metadata=metadata)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise CtxextError(f"unknown lm-eval task(s): {', '.join(unknown)}")
    lm = HFLM(pretrained=model, tokenizer=tokenizer, max_length=max_length, batch_size=1)
    output = lm_eval.simple_evaluate(model=lm, tasks=tasks, task_manager=manager, limit=limit,
                                     log_samples=False, bootstrap_iters=0)
    results = {}
    for task, values in output["results"].items():
        results[task] = {key.split(",")[0]: value for key, value in values.items()
                         if isinstance(value, (int, float)) and "_stderr" not in key and key != "alias"}
    return results


def run_lm_eval_tasks(model, tokenizer, location, config, store, max_length: int) -> None:
    """Each method's lm-eval results, logged like samples so that a resumed run skips them."""
    from .runner import BASELINE, apply_method

    metadata = {"tokenizer": str(location.directory), "gguf_file": location.gguf_file,
                "max_seq_lengths": config.lengths, "num_samples": config.samples, "seed": config.seed}
    tasks_key = ",".join(config.lm_eval_tasks)
    for method in [BASELINE, *config.methods]:
        if (method, "lm-eval", 0, tasks_key) in store:
            continue
        apply_method(model, method, config)
        results = evaluate(model, tokenizer, config.lm_eval_tasks, max_length, metadata, config.lm_eval_limit)
        store.add({"method": method, "task": "lm-eval", "length": 0, "sample": tasks_key, "results": results,
                   "max_length": max_length})
