"""lm-eval task functions for ctxext's passkey and RULER-style tasks (offline, generated).

Used by the YAML configs beside this file (``lm_eval --include_path <this folder>``).
Metadata (``--metadata`` JSON, or the TaskManager's) may set ``max_seq_lengths``
(default [4096]), ``num_samples`` per length (default 20), ``seed`` (default 0) and
``tokenizer`` (a model directory, a .gguf file or 'smollm2'; by default the model's
``pretrained``, with its ``gguf_file`` if any). The prompts are sized with that tokenizer.

Metrics, as lm-eval's own RULER tasks report them: one per length, named by the length
("4096", "8192", ...), so that lm-eval prints a length curve, and ``score`` over all
lengths. The per-length list follows ``max_seq_lengths``, which is why every task is a
:class:`LengthCurveTask`: it builds its ``metric_list`` from the metadata when lm-eval
builds the task. A doc scores at its own length and NaN at the others, and each length
is aggregated with lm-eval's ``nanmean``, which drops the NaNs (upstream uses -1 and its
own aggregation; NaN needs no aggregation code, keeps lm-eval's bootstrapped stderr, and
a length without docs, e.g. under ``--limit``, reads NaN instead of a -1 that a group
mean would take in). ``score`` is the plain mean over all docs. The ``ctxext_ruler``
group averages ``score`` and the power-of-two lengths 512 .. 1048576 (a group's metric
names are fixed in its YAML); other lengths are reported per task only.

Each doc's ``input`` is the question and its ``gen_prefix`` the answer prefix ("The pass
key is"), so that under ``--apply_chat_template`` the prefix opens the assistant turn
instead of closing the user turn. Without a chat template lm-eval joins them with a
space, which is ``ctxext eval``'s prompt.
"""

from __future__ import annotations

import math
from functools import lru_cache, partial

from lm_eval.api.task import ConfigurableTask

DEFAULT_LENGTHS = [4096]
OVERALL = "score"


@lru_cache(maxsize=4)
def _tokenizer(name: str, gguf_file: str | None):
    from transformers import AutoTokenizer

    from ctxext.checkpoint.locations import resolve_model_path
    from ctxext.errors import CtxextError

    try:
        location = resolve_model_path(name)
        return AutoTokenizer.from_pretrained(location.directory, gguf_file=gguf_file or location.gguf_file)
    except CtxextError:  # not a local path: a name the tokenizer cache may hold
        return AutoTokenizer.from_pretrained(name, gguf_file=gguf_file)


def run_lengths(metadata: dict) -> list[int]:
    """The token lengths of the run: ``max_seq_lengths`` (a list, or one length), duplicates dropped."""
    value = metadata.get("max_seq_lengths", DEFAULT_LENGTHS)
    try:
        lengths = [int(length) for length in (value if isinstance(value, list) else [value])]
    except (TypeError, ValueError):
        lengths = []
    if not lengths or min(lengths) <= 0:
        raise ValueError(f"max_seq_lengths must be positive token lengths, e.g. [4096, 8192]; got {value!r}")
    return list(dict.fromkeys(lengths))


def dataset(task: str, **kwargs):
    """The docs of ``task`` (set by each YAML's ``dataset_kwargs``) for every length in the metadata."""
    import datasets

    from ctxext.eval.constants import DEFAULT_DEPTHS
    from ctxext.eval.tasks import make_sample

    name = kwargs.get("tokenizer") or kwargs.get("pretrained")
    if not isinstance(name, str) or not name:
        raise ValueError(
            f"ctxext_{task} sizes its prompts with a tokenizer: pass --model_args pretrained=... "
            "or --metadata '{\"tokenizer\": ...}'"
        )
    tokenizer = _tokenizer(name, kwargs.get("gguf_file"))
    docs = []
    for length in run_lengths(kwargs):
        for index in range(int(kwargs.get("num_samples", 20))):
            sample = make_sample(
                task, tokenizer, length, index, int(kwargs.get("seed", 0)), kwargs.get("depths", DEFAULT_DEPTHS)
            )
            docs.append(
                {
                    "input": sample.question,
                    "gen_prefix": sample.answer_prefix,
                    "outputs": sample.references,
                    "metric": sample.metric,
                    "length": sample.length,
                    "depth": sample.depth if sample.depth is not None else -1.0,
                }
            )
    return {"test": datasets.Dataset.from_list(docs)}


def process_results(doc: dict, results: list[str], lengths: list[int]) -> dict[str, float]:
    """The doc's score under its own length and ``score``; NaN under the run's other lengths."""
    from ctxext.eval.scoring import score

    value = score(doc["metric"], results[0], doc["outputs"])
    return {**{str(length): value if length == doc["length"] else math.nan for length in lengths}, OVERALL: value}


def metric_list(lengths: list[int]) -> list[dict]:
    per_length = [{"metric": str(length), "aggregation": "nanmean", "higher_is_better": True} for length in lengths]
    return [*per_length, {"metric": OVERALL, "aggregation": "mean", "higher_is_better": True}]


class LengthCurveTask(ConfigurableTask):
    """A ctxext task whose metrics are the run's lengths (from its metadata) and ``score``."""

    def __init__(self, config: dict):
        config = {key: value for key, value in config.items() if key != "class"}
        lengths = run_lengths(config.get("metadata") or {})
        super().__init__(
            config={
                **config,
                "metric_list": metric_list(lengths),
                "process_results": partial(process_results, lengths=lengths),
            }
        )
