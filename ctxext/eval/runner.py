"""``ctxext eval``: the unpatched model and each extension method on the same prompts.

On the transformers backend one model is loaded once; each method is applied in place with ``extend`` and taken
off again with ``restore``. On an engine backend (``engines.py``) each configuration's checkpoint is loaded by
the engine in its own process (``engine_backend.py``). Every finished sample is logged at once (see
``store.py``), so an interrupted run picks up where it stopped; the report is written from the log at the end.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..auto import is_auto, resolve
from ..checkpoint.locations import ModelLocation, resolve_model_path
from ..core.plan import auto_target, plan_extension
from ..core.record import ExtensionRecord
from ..core.registry import get_method
from ..core.rope_setup import native_length, read_rope_setup, text_config
from ..core.validate import (
    MAX_SAMPLES,
    check_count,
    check_dtype,
    check_fraction,
    check_length,
    check_memory,
    check_token_ids,
)
from ..errors import CtxextError
from ..model.loading import check_device, load_generation_config, load_on_device, load_tokenizer, model_config
from . import perplexity
from .backend import Setup, TransformersBackend
from .constants import BASELINE, DEFAULT_DEPTHS, LM_EVAL, THRESHOLD
from .engine_backend import EngineBackend
from .engines import TRANSFORMERS, EngineSetup, check_backend, check_engine_run, engine_python
from .lm_eval_bridge import LmEvalRun, require_lm_eval, task_manager
from .loop import WindowSettings, run_units
from .passkey import PasskeyResult, run_samples
from .samples import Sample
from .store import RecordStore
from .tasks import GROUPS, TASK_NAMES, generation_tasks, get_task, make_sample, nll_tasks


@dataclass
class EvalConfig:
    model: str
    out: Path
    methods: list[str] = field(default_factory=list)  # extension methods; the baseline is always run
    factor: float | None = None
    target_length: int | None = None
    params: dict = field(default_factory=dict)  # method parameters, each given to the methods that take it
    tasks: list[str] = field(default_factory=lambda: ["passkey"])
    lengths: list[int] = field(default_factory=lambda: [4096])
    samples: int = 5
    depths: list[float] | None = DEFAULT_DEPTHS  # None: random depths
    seed: int = 0
    dtype: str = "float32"
    device: str = "cpu"
    replace: bool = False
    ppl_stride: int = 256
    ppl_windows: int = 1  # sliding windows per length; each after the first scores `ppl_stride` new tokens
    ppl_bucket: int = 1024
    text_file: str | None = None
    text_dataset: str | None = None
    threshold: float = THRESHOLD
    lm_eval_tasks: list[str] = field(default_factory=list)
    lm_eval_limit: int | None = None
    # the baseline is the model as it loads, a ctxext patch of its checkpoint kept (``ctxext probe``);
    # otherwise that patch is taken off, so the baseline is the unpatched model (before / after)
    as_loaded: bool = False
    auto: dict | None = None  # set by check_config for --method auto: {"chose", "params", "reason"}
    # where the units run (engines.BACKENDS); not a setting: backends run into the same --out side by side
    backend: str = TRANSFORMERS
    engine_python: str | None = None  # the engine's Python (default: .engines/<engine>/bin/python, else this one)

    def settings(self) -> dict:
        """What the logged records depend on; a resumed run must agree on all of it."""
        keys = (
            "model",
            "factor",
            "target_length",
            "params",
            "depths",
            "seed",
            "dtype",
            "ppl_stride",
            "ppl_bucket",
            "text_file",
            "text_dataset",
            "lm_eval_limit",
        )
        values = {k: getattr(self, k) for k in keys}
        values["depths"] = list(values["depths"]) if values["depths"] is not None else None
        if self.as_loaded:  # only when set, so that runs from before the field resume as they were
            values["as_loaded"] = True
        return values


def method_params(method: str, params: dict) -> dict:
    names = {f.name for f in dataclasses.fields(get_method(method).config_class)}
    return {k: v for k, v in params.items() if k in names}


@dataclass
class Checked:
    """What the checks before the model load found out, for the rest of the run."""

    location: ModelLocation
    model_config: Any  # the model's config, read without its weights
    lm_eval: LmEvalRun | None = None  # --lm-eval-tasks, their TaskManager built
    engine: dict[str, EngineSetup] | None = None  # an engine backend: how it runs each configuration
    engine_python: str | None = None


def check_config(config: EvalConfig) -> Checked:
    """Every check that needs neither the model nor its tokenizer, so that a bad flag fails before the slow load.

    The methods are planned on the model's config exactly as ``extend`` will apply them (factor, target length,
    parameters, rope type), and lm-eval task names are looked up. The prompts, which need the tokenizer, are
    built and checked by ``run`` and ``passkey_check``, still before the model loads.
    """
    check_dtype(config.dtype)
    check_backend(config.backend, dtype=config.dtype, device=config.device, lm_eval=bool(config.lm_eval_tasks))
    check_device(config.device)
    _check_values(config)
    location = resolve_model_path(config.model)
    found = Checked(location, model_config(location))
    native_length(found.model_config)  # a model without rotary embeddings is refused here
    _resolve_auto(config, location, found.model_config)
    _check_methods(config, found.model_config)
    if config.backend != TRANSFORMERS:
        found.engine = check_engine_run(config.backend, location, found.model_config, setups(config))
        found.engine_python = engine_python(config.backend, config.engine_python, lm_eval=bool(config.lm_eval_tasks))
    if config.lm_eval_tasks:
        require_lm_eval()
        found.lm_eval = LmEvalRun(config.lm_eval_tasks, _lm_eval_metadata(config, location), config.lm_eval_limit)
        found.lm_eval.manager = task_manager(found.lm_eval)
    return found


def _resolve_auto(config: EvalConfig, location: ModelLocation, model_config) -> None:
    """``--method auto``: replace it by the cached ``ctxext tune`` winner or the rule's method (``ctxext.auto``)."""
    if not any(is_auto(m) for m in config.methods):
        return
    if len(config.methods) > 1:
        raise CtxextError("--method auto stands alone: it compares the one method it chooses with the unpatched model")
    target = auto_target(model_config, config.factor, config.target_length, None)
    method, params, note = resolve(config.model, location.directory, target, params=config.params)
    config.methods, config.params, config.auto = [method], params, note


def _check_values(config: EvalConfig) -> None:
    if not config.tasks:
        raise CtxextError("no tasks given")
    unknown = [t for t in config.tasks if t not in TASK_NAMES]
    if unknown:
        raise CtxextError(f"unknown task '{unknown[0]}' (valid: {', '.join([*TASK_NAMES, *GROUPS])})")
    if not config.lengths:
        raise CtxextError("no lengths given")
    for length in config.lengths:
        check_length(length)
    check_count(config.samples, "--samples", maximum=MAX_SAMPLES)
    if config.depths is not None:
        if isinstance(config.depths, str) or not list(config.depths):
            raise CtxextError("--depths must be a list of needle depths in [0, 1], or None for random depths")
        check_fraction(config.depths, "--depths")
    for name in ("ppl_stride", "ppl_windows", "ppl_bucket"):
        check_count(getattr(config, name), "--" + name.replace("_", "-"))
    threshold = config.threshold
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, (int, float))
        or not (math.isfinite(threshold) and 0 <= threshold <= 100)
    ):
        raise CtxextError(f"--threshold is a score between 0 and 100, got {threshold!r}")
    if config.lm_eval_limit is not None:
        check_count(config.lm_eval_limit, "--lm-eval-limit")
    if isinstance(config.seed, bool) or not isinstance(config.seed, int):
        raise CtxextError(f"--seed must be a whole number, got {config.seed!r}")


def _check_methods(config: EvalConfig, model_config) -> None:
    """Methods, lengths and parameters, planned on the model's config as ``apply_method`` will apply them."""
    seen: dict[str, str] = {}
    for method in config.methods:
        name = get_method(method).name
        if name in seen:
            raise CtxextError(f"method '{name}' is given twice ({seen[name]}, {method})")
        seen[name] = method
    given = config.factor is not None or config.target_length is not None
    if not config.methods:
        if given or config.params:
            what = "--factor / --target-length" if given else "method parameters"
            raise CtxextError(f"{what} given without --method or --methods: nothing would use them")
        return
    if not given:
        raise CtxextError("give --factor or --target-length for the extension methods")
    if config.factor is not None and config.target_length is not None:
        raise CtxextError("give --factor or --target-length, not both")
    taken = {f.name for m in config.methods for f in dataclasses.fields(get_method(m).config_class)}
    unused = sorted(set(config.params) - taken)
    if unused:
        flags = ", ".join("--" + p.replace("_", "-") for p in unused)
        raise CtxextError(f"{flags}: not a parameter of {', '.join(config.methods)} (see 'ctxext methods')")
    for method in config.methods:
        plan_extension(
            model_config,
            method,
            factor=config.factor,
            target_length=config.target_length,
            replace=config.replace,
            params=method_params(method, config.params),
            restore_first=True,
        )


def _lm_eval_metadata(config: EvalConfig, location: ModelLocation) -> dict:
    return {
        "tokenizer": str(location.directory),
        "gguf_file": location.gguf_file,
        "max_seq_lengths": config.lengths,
        "num_samples": config.samples,
        "seed": config.seed,
    }


def _lm_eval_own_tasks(tasks: list[str]) -> list[str]:
    """The eval tasks behind the ctxext_* lm-eval tasks among ``tasks`` (ctxext_ruler: the RULER-style suite)."""
    found: list[str] = []
    for name in tasks:
        if name.startswith("ctxext_"):
            own = name[len("ctxext_") :]
            found += GROUPS[own] if own in GROUPS else generation_tasks([own]) if own in TASK_NAMES else []
    return list(dict.fromkeys(found))


PROMPT_BYTES_PER_TOKEN = 8  # a prompt's text in memory (about 4.5 characters of prose per token, and its parts)


def build_samples(config: EvalConfig, tokenizer, model_config, todo) -> dict[tuple, Sample]:
    """Every prompt of ``todo``, built with the tokenizer alone (shortest first, so that a length too short
    for a task fails at once), keyed (task, length, index); also the ctxext_* lm-eval tasks' shortest prompt."""
    keys = sorted({(length, task, index) for _, task, length, index in todo if get_task(task).generates})
    needed = sum(length for length, _, _ in keys) * PROMPT_BYTES_PER_TOKEN
    check_memory(needed, f"the run's {len(keys)} prompts", "ask for fewer --samples, tasks or lengths")
    samples = {
        (task, length, index): make_sample(task, tokenizer, length, index, config.seed, config.depths)
        for length, task, index in keys
    }
    shortest = min(config.lengths)
    checks = [
        make_sample(task, tokenizer, shortest, 0, config.seed, DEFAULT_DEPTHS)
        for task in _lm_eval_own_tasks(config.lm_eval_tasks)
        if (task, shortest, 0) not in samples
    ]
    for sample in [*samples.values(), *checks]:
        ids = tokenizer(sample.prompt, add_special_tokens=True)["input_ids"]
        if ids:
            check_token_ids(max(ids), model_config, f"the {sample.task} prompt")
    return samples


def setups(config: EvalConfig) -> dict[str, Setup]:
    """Each configuration of the run by its label: the baseline, then each method with its parameters."""
    found = {BASELINE: Setup(None)}
    for method in config.methods:
        found[method] = Setup(
            method, method_params(method, config.params), config.factor, config.target_length, config.replace
        )
    return found


def load_model(config: EvalConfig):
    """The model, on ``config.device`` in ``config.dtype``, with any ctxext patch of its checkpoint re-applied."""
    return load_on_device(config.model, config.dtype, config.device)


def passkey_check(
    model: str, length: int, depths: list[float], seed: int = 0, dtype: str = "float32", device: str = "cpu"
) -> list[PasskeyResult]:
    """``ctxext passkey``: one eval passkey prompt per depth on a (patched) checkpoint, as it loads.

    Every argument is checked, and every prompt built with the tokenizer, before the model loads.
    """
    if depths is None or isinstance(depths, str) or not list(depths):
        raise CtxextError("give at least one needle depth in [0, 1]")
    config = EvalConfig(
        model=model,
        out=Path(),
        lengths=[length],
        samples=len(depths),
        depths=list(depths),
        seed=seed,
        dtype=dtype,
        device=device,
    )
    checked = check_config(config)
    tokenizer = load_tokenizer(checked.location)
    samples = build_samples(
        config, tokenizer, checked.model_config, [(BASELINE, "passkey", length, index) for index in range(len(depths))]
    )
    loaded = load_model(config)
    return run_samples(loaded, tokenizer, [samples["passkey", length, index] for index in range(len(depths))])


def lengths_of(model_config, config: EvalConfig) -> tuple[int, int]:
    """(native length, extended length) of the model with ``model_config`` under this run's extension."""
    record = ExtensionRecord.of(model_config)
    native = record.original_length if record else read_rope_setup(text_config(model_config)).native_length
    if config.as_loaded and record and not config.methods:
        return native, record.target_length
    if config.target_length:
        return native, config.target_length
    return native, round(native * config.factor) if config.factor else native


def plan_units(config: EvalConfig, n_corpus_tokens: int | None) -> list[tuple[str, str, int, int]]:
    """(method, task, length, sample) for every unit of work, methods outermost."""
    units = []
    for method in [BASELINE, *config.methods]:
        for task in config.tasks:
            for length in config.lengths:
                count = config.samples
                if not get_task(task).generates:
                    count = min(config.ppl_windows, perplexity.window_count(n_corpus_tokens, length, config.ppl_stride))
                units += [(method, task, length, i) for i in range(count)]
    return units


def run_lm_eval_tasks(backend, run: LmEvalRun, config: EvalConfig, store: RecordStore) -> None:
    """Each method's lm-eval results (``backend.lm_eval``), logged like samples so that a resumed run skips them."""
    tasks_key = ",".join(run.tasks)
    for label, setup in setups(config).items():
        if (label, LM_EVAL, 0, tasks_key) in store:
            continue
        results = backend.lm_eval(setup, run)
        store.add(
            {
                "method": label,
                "task": LM_EVAL,
                "length": 0,
                "sample": tasks_key,
                "results": results,
                "max_length": run.max_length,
            }
        )


def run(config: EvalConfig) -> dict:
    """Run (or resume) the evaluation; returns the report data and writes the report files.

    Everything that can be checked without the model is checked before it loads: the flags, the methods on the
    model's config, the --out directory (new, empty, or this run's), the corpus and every prompt (built with the
    tokenizer). The --out directory and its run.json are written only after that, at the first record.
    """
    from .report import write_report  # matplotlib loads only when a report is written

    checked = check_config(config)
    with RecordStore(config.out, config.settings(), config.backend) as store:
        corpus = perplexity.load_corpus(config.text_file, config.text_dataset) if nll_tasks(config.tasks) else None
        tokenizer = load_tokenizer(checked.location)
        ids = None
        if corpus is not None:
            ids = perplexity.text_ids(tokenizer, corpus[0])
            if ids.numel():
                check_token_ids(int(ids.max()), checked.model_config, f"the perplexity corpus {corpus[1]}")
        units = plan_units(config, None if ids is None else len(ids))
        todo = [u for u in units if u not in store]
        samples = build_samples(config, tokenizer, checked.model_config, todo)
        native, extended = lengths_of(checked.model_config, config)
        if checked.engine is None:
            model = load_model(config)
            native, extended = lengths_of(model.config, config)  # a GGUF's ctxext record is on the loaded model only
            backend = TransformersBackend(model, tokenizer, keep_patch=config.as_loaded)
            device = str(next(model.parameters()).device)
        else:
            backend = EngineBackend(
                config.backend,
                checked.engine_python,
                checked.location,
                tokenizer,
                load_generation_config(checked.location, checked.model_config),
                checked.engine,
                model_config=checked.model_config,
                n_ctx=max(*config.lengths, extended) + 2,  # + a perplexity window's last target and one answer id
                dtype=config.dtype,
            )
            device = "the engine's own"
        try:
            windows = WindowSettings(ids, config.ppl_stride, config.ppl_bucket) if ids is not None else None
            run_units(backend, todo, setups(config), samples, store, windows=windows)
            if checked.lm_eval is not None:
                checked.lm_eval.max_length = max(extended, *config.lengths)
                run_lm_eval_tasks(backend, checked.lm_eval, config, store)
        finally:
            backend.close()
        meta = {
            "native_length": native,
            "extended_length": extended,
            "corpus": corpus[1] if corpus else None,
            "corpus_tokens": None if ids is None else len(ids),
            "device": device,
            "backend": config.backend,
            "engine": getattr(backend, "version", None),
        }
        store.begin()
        return write_report(config, [store.records[u] for u in units], store, meta)
