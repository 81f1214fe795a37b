"""lm-eval task functions for ctxext's passkey and RULER-style tasks (offline, generated).

Used by the YAML configs beside this file (``lm_eval --include_path <this folder>``).
Metadata (``--metadata`` JSON, or the TaskManager's) may set ``max_seq_lengths``
(default [4096]), ``num_samples`` per length (default 20), ``seed`` (default 0) and
``tokenizer`` (a model directory, a .gguf file or 'smollm2'; by default the model's
``pretrained``, with its ``gguf_file`` if any). The prompts are sized with that tokenizer.
"""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=4)
def _tokenizer(name: str, gguf_file: str | None):
    from transformers import AutoTokenizer

    from ctxext.checkpoint import resolve_model_path
    from ctxext.errors import CtxextError

    try:
        location = resolve_model_path(name)
        return AutoTokenizer.from_pretrained(location.directory, gguf_file=gguf_file or location.gguf_file)
    except CtxextError:  # not a local path: a name the tokenizer cache may hold
        return AutoTokenizer.from_pretrained(name, gguf_file=gguf_file)


def dataset(task: str, **kwargs):
    """The docs of ``task`` (set by each YAML's ``dataset_kwargs``) for every length in the metadata."""
    import datasets

    from ctxext.eval.constants import DEFAULT_DEPTHS
    from ctxext.eval.tasks import make_sample

    name = kwargs.get("tokenizer") or kwargs.get("pretrained")
    if not isinstance(name, str) or not name:
        raise ValueError(f"ctxext_{task} sizes its prompts with a tokenizer: pass --model_args pretrained=... "
                         "or --metadata '{\"tokenizer\": ...}'")
    tokenizer = _tokenizer(name, kwargs.get("gguf_file"))
    docs = []
    for length in kwargs.get("max_seq_lengths", [4096]):
        for index in range(int(kwargs.get("num_samples", 20))):
            sample = make_sample(task, tokenizer, int(length), index, int(kwargs.get("seed", 0)),
                                 kwargs.get("depths", DEFAULT_DEPTHS))
            docs.append({"input": sample.prompt, "outputs": sample.references, "metric": sample.metric,
                         "length": sample.length, "depth": sample.depth if sample.depth is not None else -1.0})
    return {"test": datasets.Dataset.from_list(docs)}


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    from ctxext.eval.scoring import score

    return {"score": score(doc["metric"], results[0], doc["outputs"])}
