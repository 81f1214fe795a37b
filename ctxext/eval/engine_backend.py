"""The engine backends (``ctxext eval --backend vllm|llama.cpp``): the run loop's calls answered by a real engine.

For each configuration the engine's checkpoint file is written into a temporary directory by ctxext's own patch
code (vLLM: a patched copy of the model directory, a GGUF input converted to a directory once; llama.cpp: a
patched .gguf, or the unpatched file with group attention for self-extend), and a worker process started with the
engine's Python (``engine_process.py``) loads it with a context of ``n_ctx`` tokens. Prompts are tokenized and
answers decoded here, with the tokenizer the transformers backend uses, so every backend reads the same ids.
``--lm-eval-tasks`` on vLLM run lm-eval's own ``vllm`` model in a worker on the same patched directory. The
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
from .lm_eval_bridge import INCLUDE_PATH, LmEvalRun, metrics
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
        self.model_config = model_config
        self.kv_cache_bytes = kv_cache_bytes(model_config, n_ctx, dtype)
        self.stop = sorted(stop_ids(generation_config, tokenizer))
        self.workdir = Path(tempfile.mkdtemp(prefix="ctxext-engine-"))
        self.process: EngineProcess | None = None
        self.version: str | None = None
        self._directory: Path | None = None  # vLLM's unpatched model directory
        self._checkpoints: dict[int, Path] = {}  # the patched checkpoints written, by place in ``plans``

    def use(self, setup: Setup) -> None:
        """Start a worker with ``setup``'s checkpoint (the previous worker quits first, freeing its model)."""
        plan, path = self._start(setup)
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

    def lm_eval(self, setup: Setup, run: LmEvalRun) -> dict:
        """lm-eval's results for ``run`` under ``setup``: lm-eval's ``vllm`` model in a worker, on the checkpoint
        ``use`` would load, with a context of ``run.max_length`` tokens; the prompts are sized with that
        checkpoint's tokenizer."""
        _, path = self._start(setup)
        answer = self.process.ask(
            {
                "op": "lm_eval",
                "model": str(path),
                "max_model_len": run.max_length,
                "dtype": self.dtype,
                "kv_cache_bytes": kv_cache_bytes(self.model_config, run.max_length, self.dtype),
                "tasks": run.tasks,
                "include_path": str(INCLUDE_PATH),
                "include_defaults": run.include_defaults,
                "metadata": {**run.metadata, "tokenizer": str(path), "gguf_file": None},
                "limit": run.limit,
                "ctxext_path": str(Path(__file__).resolve().parents[2]),
            }
        )
        self.version = answer["version"]
        self._stop()
        return metrics(answer["results"])

    def _start(self, setup: Setup) -> tuple[EngineSetup, Path]:
        """A fresh worker (the previous one quits first, freeing its model) and ``setup``'s checkpoint."""
        self._stop()
        plan = next(plan for plan in self.plans if plan.setup == setup)
        path = self._checkpoint(plan)
        self.process = EngineProcess(self.python, self.name, self.workdir / "engine.log")
        return plan, path

    def _checkpoint(self, plan: EngineSetup) -> Path:
        """``plan``'s checkpoint, written at its first use (a configuration is loaded again for lm-eval)."""
        setup = plan.setup
        if setup.method is None or plan.group_attention:
            if self.name == "llama.cpp":
                return self.location.directory / self.location.gguf_file
            return self._unpatched_directory()
        index = self.plans.index(plan)
        if index not in self._checkpoints:
            options = dict(factor=setup.factor, target_length=setup.target_length, replace=setup.replace)
            name = f"{index}-{setup.method}"
            if self.name == "llama.cpp":
                gguf = self.location.directory / self.location.gguf_file
                written = patch_gguf(gguf, self.workdir / f"{name}.gguf", setup.method, **options, **setup.params)
            else:
                directory = self._unpatched_directory()
                written = patch_directory(
                    directory, setup.method, output=self.workdir / name, **options, **setup.params
                )
            self._checkpoints[index] = written.path
        return self._checkpoints[index]

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
