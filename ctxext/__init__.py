"""ctxext: extend the context window of pretrained Hugging Face RoPE language models.

    import ctxext
    model = ctxext.extend(model, "yarn", factor=4)
    ctxext.restore(model)
    model = ctxext.from_pretrained("path/to/patched")
    ctxext.patch_directory("path/to/model", "yarn", factor=4)   # config.json only
    ctxext.patch_gguf("model.gguf", "out_dir", "yarn", factor=4)  # a new safetensors directory
    ctxext.probe("path/to/model").effective_length              # effective retrieval length
    ctxext.tune("path/to/model", 16384).winner                  # best method for a target length

Every public name is imported on first use (PEP 562), so that ``import ctxext`` and the command line's
``--help`` stay fast: torch and transformers load with the first name that needs them.
"""

from __future__ import annotations

import importlib

from .errors import CtxextError
from .version import __version__

_PUBLIC = {  # name -> the module that defines it
    "ExtensionRecord": "ctxext.core.record",
    "get_method": "ctxext.core.registry",
    "list_methods": "ctxext.core.registry",
    "extend": "ctxext.model.extend",
    "is_extended": "ctxext.model.extend",
    "reapply": "ctxext.model.extend",
    "restore": "ctxext.model.extend",
    "from_pretrained": "ctxext.model.loading",
    "patch": "ctxext.checkpoint.patch",
    "patch_gguf": "ctxext.checkpoint.patch",
    "patch_directory": "ctxext.checkpoint.directory",
    "unpatch_directory": "ctxext.checkpoint.directory",
    "probe": "ctxext.eval.probe",
    "tune": "ctxext.eval.tune",
}

__all__ = ["CtxextError", "__version__", *sorted(_PUBLIC)]


def __getattr__(name: str):
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ctxext' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})
