"""ctxext: extend the context window of pretrained Hugging Face RoPE language models.

    import ctxext
    model = ctxext.extend(model, "yarn", factor=4)
    ctxext.restore(model)
    model = ctxext.from_pretrained("path/to/patched")
    ctxext.patch_directory("path/to/model", "yarn", factor=4)   # config.json only
    ctxext.patch_gguf("model.gguf", "out_dir", "yarn", factor=4)  # a new safetensors directory
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
    "reapply",
    "restore",
    "unpatch_directory",
    "__version__",
]
