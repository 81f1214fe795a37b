"""Where evaluation units run: the backend seam. :class:`TransformersBackend` runs them on an in-memory model.

A backend switches to a configuration (the unpatched model, or a method with its parameters), answers a
prompt greedily, scores a perplexity window, and runs lm-eval's tasks (``--lm-eval-tasks``). The run loop
(``loop.py``) and ``runner.run_lm_eval_tasks`` only talk to this interface, so an engine (vLLM, llama.cpp)
plugs in as one more backend with the same calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..model.extend import extend, is_extended, restore
from . import perplexity
from .generation import greedy_generate
from .lm_eval_bridge import LmEvalRun, evaluate
from .samples import Sample


@dataclass(frozen=True)
class Setup:
    """One configuration a run compares: ``method`` None is the model as the backend holds it (the baseline)."""

    method: str | None
    params: dict = field(default_factory=dict)
    factor: float | None = None
    target_length: int | None = None
    replace: bool = False


class TransformersBackend:
    """Units on a loaded transformers model; methods are applied in place with ``extend`` and taken off with
    ``restore``. ``keep_patch``: the baseline is the model as it loaded, its checkpoint's ctxext patch kept."""

    name = "transformers"

    def __init__(self, model, tokenizer, *, keep_patch: bool = False):
        self.model, self.tokenizer, self.keep_patch = model, tokenizer, keep_patch

    def use(self, setup: Setup) -> None:
        """Switch to ``setup``; raises CtxextError when the method cannot be applied to this model."""
        if setup.method is None and self.keep_patch:
            return
        if is_extended(self.model):
            restore(self.model)
        if setup.method is not None:
            extend(
                self.model,
                setup.method,
                factor=setup.factor,
                target_length=setup.target_length,
                replace=setup.replace,
                **setup.params,
            )

    def generate(self, sample: Sample) -> tuple[str, int]:
        """(greedy answer, prompt tokens) for ``sample``."""
        return greedy_generate(self.model, self.tokenizer, sample.prompt, sample.max_new_tokens)

    def score_window(self, ids, index: int, length: int, stride: int, bucket: int) -> perplexity.WindowResult:
        return perplexity.score_window(self.model, ids, index, length, stride, bucket)

    def lm_eval(self, setup: Setup, run: LmEvalRun) -> dict:
        """lm-eval's results for ``run`` on the model under ``setup`` (lm-eval's HFLM on the model in memory)."""
        self.use(setup)
        return evaluate(self.model, self.tokenizer, run)

    def close(self) -> None:
        """Take off any method this backend applied."""
        if not self.keep_patch and is_extended(self.model):
            restore(self.model)
