"""ctxext: extend the context window of pretrained Hugging Face RoPE language models.

    import ctxext
    model = ctxext.extend(model, "yarn", factor=4)
    ctxext.restore(model)
    model = ctxext.from_pretrained("path/to/patched")
    ctxext.patch_directory("path/to/model", "yarn", factor=4)   # config.json only
    ctxext.patch_gguf("model.gguf", "out_dir", "yarn", factor=4)  # a new safetensors directory
    ctxext.probe("path/to/model").effective_length              # effective retrieval length
    ctxext.tune("path/to/model", 16384).winner                  # best method for a target length
"""

from . import methods  # noqa: F401  (registers the methods)
from .api import extend, from_pretrained, is_extended, reapply, restore
from .config import ExtensionRecord
from .errors import CtxextError
from .patching import patch, patch_directory, patch_gguf, unpatch_directory
from .registry import get_method, list_methods
from .version import __version__

__all__ = [
    "CtxextError",
    "ExtensionRecord",
    "extend",
    "from_pretrained",
    "get_method",
    "is_extended",
    "list_methods",
    "patch",
    "patch_directory",
    "patch_gguf",
    "probe",
    "reapply",
    "restore",
    "tune",
    "unpatch_directory",
    "__version__",
]


def __getattr__(name: str):
    """``ctxext.probe`` and ``ctxext.tune`` (from ``ctxext.eval``), imported on first use: the evaluation loads only when used."""
    if name == "probe":
        from .eval.probe import probe

        return probe
    if name == "tune":
        from .eval.tune import tune

        return tune
    raise AttributeError(f"module 'ctxext' has no attribute {name!r}")
