"""``ctxext eval``: the unpatched model and each extension method on the same prompts.

One model is loaded once; each method is applied in place with ``extend`` and taken off
again with ``restore``. Every finished sample is logged at once (see ``store.py``), so an
interrupted run picks up where it stopped; the report is written from the log at the end.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from ..api import extend, from_pretrained, is_extended, restore
from ..checkpoint import resolve_model_path
from ..errors import CtxextError
from ..registry import get_method
from ..rope_config import read_rope_setup, text_config
from . import perplexity
from .generation import greedy_generate
from .samples import Sample
from .scoring import score
from .store import RecordStore
from .tasks import PPL, make_sample

BASELINE = "unpatched"


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
    depths: list[float] | None = (0.0, 0.25, 0.5, 0.75, 1.0)  # None: random depths
    seed: int = 0
    dtype: str = "float32"
    device: str = "cpu"
    replace: bool = False
    ppl_stride: int = 256
    ppl_windows: int = 1  # sliding windows per length; each after the first scores `ppl_stride` new tokens
    ppl_bucket: int = 1024
    text_file: str | None = None
    text_dataset: str | None = None
    threshold: float = 85.6
    lm_eval_tasks: list[str] = field(default_factory=list)
    lm_eval_limit: int | None = None

    def settings(self) -> dict:
        """What the logged records depend on; a resumed run must agree on all of it."""
        keys = ("model", "factor", "target_length", "params", "depths", "seed", "dtype", "ppl_stride",
                "ppl_bucket", "text_file", "text_dataset", "lm_eval_limit")
        values = {k: getattr(self, k) for k in keys}
        values["depths"] = list(values["depths"]) if values["depths"] is not None else None
        return values


def method_params(method: str, params: dict) -> dict:
    names = {f.name for f in dataclasses.fields(get_method(method).config_class)}
    return {k: v for k, v in params.items() if k in names}


def check_config(config: EvalConfig) -> None:
    """Every check that needs no model, so that a bad flag fails before the slow load."""
    resolve_model_path(config.model)
    for method in config.methods:
        get_method(method)
    if config.methods and config.factor is None and config.target_length is None:
        raise CtxextError("give --factor or --target-length for the extension methods")
    if config.samples < 1:
        raise CtxextError("--samples must be at least 1")
    if min(config.ppl_stride, config.ppl_bucket, config.ppl_windows) < 1:
        raise CtxextError("--ppl-stride, --ppl-bucket and --ppl-windows must be positive")
    if config.depths is not None and not all(0 <= d <= 1 for d in config.depths):
        raise CtxextError("--depths must lie in [0, 1]")
    if config.lm_eval_tasks:
        from .lm_eval_bridge import require_lm_eval

        require_lm_eval()


def apply_method(model, method: str, config: EvalConfig) -> None:
    if is_extended(model):
        restore(model)
    if method != BASELINE:
        extend(model, method, factor=config.factor, target_length=config.target_length, replace=config.replace,
               **method_params(method, config.params))


def load_model(config: EvalConfig):
    from transformers import AutoTokenizer

    location = resolve_model_path(config.model)
    tokenizer = AutoTokenizer.from_pretrained(location.directory, gguf_file=location.gguf_file)
    model = from_pretrained(config.model, dtype=getattr(torch, config.dtype)).to(config.device).eval()
    return model, tokenizer, location


def lengths_of(model, config: EvalConfig) -> tuple[int, int]:
    """(native length, extended length) of the model under this run's extension."""
    record = getattr(text_config(model.config), "ctxext", None)
    native = record["original_length"] if record else read_rope_setup(text_config(model.config)).native_length
    if config.target_length:
        return native, config.target_length
    return native, round(native * config.factor) if config.factor else native


def _generation_record(model, tokenizer, sample, method: str) -> dict:
    start = time.perf_counter()
    generated, n_tokens = greedy_generate(model, tokenizer, sample.prompt, sample.max_new_tokens)
    value = score(sample.metric, generated, sample.references)
    return {"method": method, "task": sample.task, "length": sample.length, "sample": sample.index,
            "depth": sample.depth, "n_tokens": n_tokens, "expected": sample.references, "generated": generated,
            "metric": sample.metric, "score": value, "correct": value == 100.0,
            "seconds": round(time.perf_counter() - start, 3), **sample.meta}


def _ppl_record(model, ids, length: int, index: int, config: EvalConfig, method: str) -> dict:
    start = time.perf_counter()
    window = perplexity.score_window(model, ids, index, length, config.ppl_stride, min(config.ppl_bucket, length))
    return {"method": method, "task": PPL, "length": length, "sample": index, **dataclasses.asdict(window),
            "seconds": round(time.perf_counter() - start, 3)}


def plan_units(config: EvalConfig, n_corpus_tokens: int | None) -> list[tuple[str, str, int, int]]:
    """(method, task, length, sample) for every unit of work, methods outermost."""
    units = []
    for method in [BASELINE, *config.methods]:
        for task in config.tasks:
            for length in config.lengths:
                count = config.samples
                if task == PPL:
                    count = min(config.ppl_windows, perplexity.window_count(n_corpus_tokens, length, config.ppl_stride))
                units += [(method, task, length, i) for i in range(count)]
    return units


def run(config: EvalConfig) -> dict:
    """Run (or resume) the evaluation; returns the report data and writes the report files."""
    from .report import write_report

    check_config(config)
    corpus = perplexity.load_corpus(config.text_file, config.text_dataset) if PPL in config.tasks else None
    store = RecordStore(config.out, config.settings())
    model, tokenizer, location = load_model(config)
    ids = None if corpus is None else torch.tensor(tokenizer(corpus[0], add_special_tokens=True)["input_ids"])
    units = plan_units(config, None if ids is None else len(ids))
    todo = [u for u in units if u not in store]
    samples: dict[tuple, Sample] = {}
    current = None
    with tqdm(total=len(todo), desc="eval", unit="sample", disable=not todo) as bar:
        for method, task, length, index in todo:
            if method != current:
                apply_method(model, method, config)
                current = method
            bar.set_postfix_str(f"{method} {task} {length}")
            if task == PPL:
                record = _ppl_record(model, ids, length, index, config, method)
            else:
                key = (task, length, index)
                if key not in samples:
                    samples[key] = make_sample(task, tokenizer, length, index, config.seed, config.depths)
                record = _generation_record(model, tokenizer, samples[key], method)
            store.add(record)
            bar.update()
    native, extended = lengths_of(model, config)
    if config.lm_eval_tasks:
        from .lm_eval_bridge import run_lm_eval_tasks

        run_lm_eval_tasks(model, tokenizer, location, config, store, max(extended, *config.lengths))
    if is_extended(model):
        restore(model)
    meta = {"native_length": native, "extended_length": extended, "corpus": corpus[1] if corpus else None,
            "corpus_tokens": None if ids is None else len(ids), "device": str(next(model.parameters()).device)}
    return write_report(config, [store.records[u] for u in units], store, meta)
