"""Deprecated: the methods moved to :mod:`ctxext.methods` (``string_shift`` is now ``string``).

``import ctxext.patches`` and ``from ctxext.patches.<method> import ...`` keep working for
now, with a DeprecationWarning; this alias will be removed in a later release.
"""

import importlib
import pkgutil
import sys
import warnings

from . import methods

warnings.warn("ctxext.patches is deprecated; use ctxext.methods", DeprecationWarning, stacklevel=2)

for _module in pkgutil.iter_modules(methods.__path__):
    sys.modules[f"{__name__}.{_module.name}"] = importlib.import_module(f"{methods.__name__}.{_module.name}")
sys.modules[f"{__name__}.string_shift"] = methods.string
