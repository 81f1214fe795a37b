"""A stand-in for lm-eval (``simple_evaluate``, ``tasks.TaskManager``) for the engine worker's ``lm_eval`` request:
on the worker's PYTHONPATH beside the stand-in vLLM (``support/fake_engine``), so the tests see what the worker
asks lm-eval for, without running lm-eval's vllm model.

Its "metrics" are what it was given: the context length, the rope factor in the model directory's config.json
(1 without rope scaling), the limit, and whether the task's YAML is in the include path.
"""

import json
import os

__version__ = "0.0.fake"


def simple_evaluate(model, model_args, tasks, task_manager, limit, log_samples, bootstrap_iters):
    if model != "vllm":
        raise ValueError(f"the worker asked for lm-eval's {model!r} model, not 'vllm'")
    from .models import vllm_causallms  # as lm-eval's registry imports it; the worker imported it first

    with open(os.path.join(model_args["pretrained"], "config.json")) as f:
        scaling = json.load(f).get("rope_scaling") or {}
    tokenizer = task_manager.metadata["tokenizer"]
    return {
        "results": {
            task: {
                "alias": task,
                "max_model_len,none": model_args["max_model_len"],
                "factor,none": scaling.get("factor", 1.0),
                "limit,none": limit,
                "found,none": float(task in task_manager.all_tasks),
                "same_tokenizer,none": float(tokenizer == model_args["pretrained"]),
                "vllm_version,none": vllm_causallms.VLLM_VERSION,
                "factor_stderr,none": "N/A",
            }
            for task in tasks
        }
    }
