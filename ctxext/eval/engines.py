"""``ctxext eval --backend``: the engines, where each one's Python is, and what each cannot run.

Everything here is decided from the flags and the model's config before any model work, so an engine that cannot
run a configuration is refused in one line first. What vLLM makes of a patched config is ``serving.engine_view``'s
rule; what llama.cpp makes of a GGUF is the GGUF export's plan (``checkpoint/gguf/mapping.py``), run dry.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ..checkpoint.gguf.mapping import group_attention
from ..checkpoint.gguf.writer import export_gguf
from ..checkpoint.info import location_record
from ..checkpoint.locations import ModelLocation
from ..core.plan import plan_extension
from ..errors import CtxextError
from ..serving import engine_view
from .backend import Setup

TRANSFORMERS = "transformers"
BACKENDS = (TRANSFORMERS, "vllm", "llama.cpp")
MODULES = {"vllm": "vllm", "llama.cpp": "llama_cpp"}  # what the engine's Python must import
VENVS = {"vllm": "vllm", "llama.cpp": "llama"}  # .engines/<venv>/bin/python, as `make engines` builds them


@dataclass(frozen=True)
class EngineSetup:
    """How an engine runs one configuration: ``group_attention`` (n, w) is llama.cpp's self-extend on the
    unpatched file; otherwise the method is patched into the engine's checkpoint file."""

    setup: Setup
    group_attention: tuple[int, int] | None = None


def check_backend(backend: str, *, dtype: str, device: str, lm_eval: bool) -> None:
    """The backend's name and the flags it takes, from the flags alone."""
    if backend not in BACKENDS:
        raise CtxextError(f"unknown backend {backend!r}; choose from: {', '.join(BACKENDS)}")
    if backend == TRANSFORMERS:
        return
    name = f"--backend {backend}"
    if lm_eval and backend != "vllm":
        raise CtxextError(
            f"{name}: --lm-eval-tasks run on the transformers and vllm backends (lm-eval reaches llama.cpp only "
            "through a running llama.cpp server)"
        )
    if device != "cpu":
        raise CtxextError(f"{name}: the engine picks its own device; --device is for the transformers backend")
    if backend == "llama.cpp" and dtype != "float32":
        raise CtxextError(f"{name} computes in the GGUF file's own tensor types; --dtype is for the others")


def engine_python(backend: str, given: str | None, *, lm_eval: bool = False) -> str:
    """The Python that runs ``backend``'s worker: ``given``, else ``.engines/<venv>/bin/python`` under the current
    directory, else this Python; refused in one line when it cannot import the engine (or, for ``lm_eval``:
    ``--lm-eval-tasks``, lm-eval)."""
    built = Path(".engines") / VENVS[backend] / "bin" / "python"
    python = given or (str(built) if built.is_file() else sys.executable)
    if given is not None and not Path(given).is_file():
        raise CtxextError(f"--engine-python {given}: no such file")
    for module in (MODULES[backend], "lm_eval") if lm_eval else (MODULES[backend],):
        found = subprocess.run(
            [python, "-c", f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module!r}) is None)"],
            capture_output=True,
        )
        if found.returncode != 0:
            raise CtxextError(
                f"--backend {backend}: {python} cannot import {module}; build the engine's venv (make engines) "
                "or give --engine-python PATH"
            )
    return python


def check_engine_run(
    backend: str,
    location: ModelLocation,
    model_config,
    setups: dict[str, Setup],
) -> dict[str, EngineSetup]:
    """Each configuration as ``backend`` will run it, or a CtxextError saying why it cannot."""
    name = f"--backend {backend}"
    if location_record(location, model_config) is not None:
        raise CtxextError(
            f"{name} compares the unpatched checkpoint with each method: give the unpatched model "
            "('ctxext unpatch' a directory, or the original .gguf)"
        )
    if backend == "llama.cpp" and location.gguf_file is None:
        raise CtxextError(
            f"{name} runs a .gguf file and {location.directory} is a model directory: convert it with "
            "llama.cpp's convert_hf_to_gguf.py, then give the .gguf"
        )
    found = {}
    for label, setup in setups.items():
        plain = setup.method is None
        found[label] = EngineSetup(setup) if plain else _engine_setup(backend, location, model_config, setup)
    return found


def _engine_setup(backend: str, location: ModelLocation, model_config, setup: Setup) -> EngineSetup:
    plan = plan_extension(
        model_config,
        setup.method,
        factor=setup.factor,
        target_length=setup.target_length,
        replace=setup.replace,
        params=setup.params,
        restore_first=True,
    )
    name = plan.method.name
    if backend == "vllm":
        view = engine_view({**model_config.to_dict(), **plan.fields, "ctxext": plan.record.to_dict()})["vllm"]
        if not view.extended:
            raise CtxextError(f"--backend vllm cannot run '{name}': {view.note or 'vLLM does not read it as ctxext'}")
        return EngineSetup(setup)
    if name == "self-extend":
        group, window, _ = group_attention(plan)
        return EngineSetup(setup, (group, window))
    gguf = location.directory / location.gguf_file
    try:
        export_gguf(
            gguf,
            gguf.with_suffix(".checked.gguf"),  # a dry run: nothing is written
            setup.method,
            dry_run=True,
            factor=setup.factor,
            target_length=setup.target_length,
            replace=setup.replace,
            **setup.params,
        )
    except CtxextError as exc:
        raise CtxextError(f"--backend llama.cpp cannot run '{name}': {exc}") from None
    return EngineSetup(setup)
