"""The engine backends (``ctxext eval --backend vllm|llama.cpp``): the run loop's calls answered by a real engine.

For each configuration the engine's checkpoint file is written into a temporary directory by ctxext's own patch
code (vLLM: a patched copy of the model directory, a GGUF input converted to a directory once; llama.cpp: a
patched .gguf, or the unpatched file with group attention for self-extend), and a worker process started with the
engine's Python (``engine_process.py``) loads it with a context of ``n_ctx`` tokens. Prompts are tokenized and
answers decoded here, with the tokenizer the transformers backend uses, so every backend reads the same ids. The
temporary directory is removed by ``close``.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch

from ..checkpoint.directory import patch_directory
from ..checkpoint.locations import ModelLocation
from ..checkpoint.patch import convert_gguf, patch_gguf
from ..core.rope_setup import read_rope_setup, text_config
from . import perplexity
from .backend import Setup
from .engine_process import EngineProcess
from .engines import EngineSetup
from .generation import prompt_ids, stop_ids
from .samples import Sample

KV_CACHE_SPARE = 1.25  # the engine's KV cache blocks and rounding, on top of the bare keys and values


def kv_cache_bytes(model_config, n_ctx: int, dtype: str) -> int:
    """The memory one sequence of ``n_ctx`` tokens needs for its keys and values, with room to spare."""
    config = text_config(model_config)
    head_dim = read_rope_setup(config).head_dim
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    per_token = 2 * config.num_hidden_layers * kv_heads * head_dim * getattr(torch, dtype).itemsize
    return int(per_token * n_ctx * KV_CACHE_SPARE)


class EngineBackend:
    """Units through ``engine`` (vllm or llama.cpp); ``plans``: each configuration's ``EngineSetup`` by label."""

    def __init__(
        self,
        engine: str,
        python: str,
        location: ModelLocation,
        tokenizer,
        generation_config,
        plans: dict[str, EngineSetup],
        *,
        model_config,
        n_ctx: int,
        dtype: str,
    ):
        self.name, self.python, self.location, self.tokenizer = engine, python, location, tokenizer
        self.plans = list(plans.values())
        self.n_ctx, self.dtype = n_ctx, dtype
        self.kv_cache_bytes = kv_cache_bytes(model_config, n_ctx, dtype)
        self.stop = sorted(stop_ids(generation_config, tokenizer))
        self.workdir = Path(tempfile.mkdtemp(prefix="ctxext-engine-"))
        self.process: EngineProcess | None = None
        self.version: str | None = None
        self._directory: Path | None = None  # vLLM's unpatched model directory

    def use(self, setup: Setup) -> None:
        """Start a worker with ``setup``'s checkpoint (the previous worker quits first, freeing its model)."""
        self._stop()
        plan = next(plan for plan in self.plans if plan.setup == setup)
        path = self._checkpoint(plan)
        self.process = EngineProcess(self.python, self.name, self.workdir / "engine.log")
        answer = self.process.ask(
            {
                "op": "load",
                "engine": self.name,
                "model": str(path),
                "n_ctx": self.n_ctx,
                "dtype": self.dtype,
                "kv_cache_bytes": self.kv_cache_bytes,
                "group_attention": plan.group_attention,
            }
        )
        self.version = answer["version"]

    def _checkpoint(self, plan: EngineSetup) -> Path:
        setup = plan.setup
        options = dict(factor=setup.factor, target_length=setup.target_length, replace=setup.replace, **setup.params)
        if self.name == "llama.cpp":
            gguf = self.location.directory / self.location.gguf_file
            if setup.method is None or plan.group_attention:
                return gguf
            return patch_gguf(gguf, self.workdir / f"{setup.method}.gguf", setup.method, **options).path
        directory = self._unpatched_directory()
        if setup.method is None:
            return directory
        return patch_directory(directory, setup.method, output=self.workdir / setup.method, **options).path

    def _unpatched_directory(self) -> Path:
        if self.location.gguf_file is None:
            return self.location.directory
        if self._directory is None:
            gguf = self.location.directory / self.location.gguf_file
            self._directory = convert_gguf(gguf, self.workdir / "unpatched", dtype=self.dtype)
        return self._directory

    def generate(self, sample: Sample) -> tuple[str, int]:
        """(greedy answer, prompt tokens) for ``sample``."""
        ids = prompt_ids(self.tokenizer, sample.prompt)
        request = {"op": "generate", "ids": ids, "max_tokens": sample.max_new_tokens, "stop": self.stop}
        answer = self.process.ask(request)["ids"]
        return self.tokenizer.decode(answer, skip_special_tokens=True), len(ids)

    def score_window(self, ids, index: int, length: int, stride: int, bucket: int) -> perplexity.WindowResult:
        span = perplexity.window_span(ids, index, length, stride)
        nll = self.process.ask({"op": "nll", "ids": span.ids.tolist()})["nll"]
        return perplexity.window_result(span, torch.tensor(nll, dtype=torch.float64), bucket)

    def _stop(self) -> None:
        if self.process is not None:
            self.process.close()
            self.process = None

    def close(self) -> None:
        """Stop the worker and remove the temporary checkpoints."""
        self._stop()
        shutil.rmtree(self.workdir, ignore_errors=True)
