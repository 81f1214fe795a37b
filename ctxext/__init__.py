"""ctxext: extend the context window of pretrained Hugging Face RoPE language models.

    import ctxext
    model = ctxext.extend(model, "yarn", factor=4)
    ctxext.restore(model)
    model = ctxext.from_pretrained("path/to/patched")
"""

__version__ = "0.1.0"

from . import patches  # noqa: E402,F401  (registers the methods)
from .api import extend, from_pretrained, is_extended, restore  # noqa: E402
from .errors import CtxextError  # noqa: E402
from .registry import get_method, list_methods  # noqa: E402

__all__ = [
    "CtxextError",
    "extend",
    "from_pretrained",
    "get_method",
    "is_extended",
    "list_methods",
    "restore",
    "__version__",
]
