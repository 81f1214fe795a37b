"""Method registry: name -> how a method patches a model.

A method module in ``ctxext.methods`` describes itself with :class:`RopeMethod` (it rewrites
rotary frequencies through the config) or :class:`AttentionMethod` (it changes relative
positions or the mask inside attention) and calls :func:`register`. The API and the CLI only
ever look methods up here, so adding a method is adding one module. The built-in methods (the
modules of ``ctxext.methods``) register themselves the first time any method is looked up, so
that importing ctxext (or running ``ctxext --help``) does not load torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import CtxextError
from .params import MethodConfig


@dataclass(frozen=True)
class Scaling:
    """The lengths a patch is computed for, for one layer type."""

    factor: float
    original_length: int
    target_length: int
    rotary_dim: int


@dataclass(frozen=True)
class RopeMethod:
    """A method that rewrites rotary frequencies through ``config.rope_parameters``.

    ``build(native, scaling, config)`` maps the native rope parameters of one layer type to
    the patched ones. ``dynamic`` methods scale with the current sequence length; transformers
    reads their threshold from ``max_position_embeddings``, so that field keeps the original
    length. ``stock_loadable`` says whether transformers alone reproduces the patch from
    config.json. ``prepare_module`` is an optional per-instance fix-up of a rebuilt rotary module.
    """

    name: str
    config_class: type[MethodConfig]
    summary: str
    paper: str
    build: Callable[[dict[str, Any], Scaling, Any], dict[str, Any]]
    aliases: tuple[str, ...] = ()
    dynamic: bool = False
    stock_loadable: bool = True
    supports_per_layer_type: bool = True
    prepare_module: Callable[[Any], None] | None = None
    kind = "rope"


@dataclass(frozen=True)
class AttentionMethod:
    """A method that remaps relative positions per query/key pair, or masks, inside attention.

    ``runtime(config, scaling)`` builds the object that is installed on a loaded model (see
    ``ctxext.model.attention.runtime``). The config keeps its rope; the patch is recorded in
    ``config.ctxext`` and re-applied by ``ctxext.from_pretrained``. ``factor`` may be 1 for
    methods that also act inside the native length.
    """

    name: str
    config_class: type[MethodConfig]
    summary: str
    paper: str
    runtime: Callable[[Any, Scaling], Any]
    aliases: tuple[str, ...] = ()
    kind = "attention"
    stock_loadable = False


Method = RopeMethod | AttentionMethod

_METHODS: dict[str, Method] = {}
_ALIASES: dict[str, str] = {}


def register(method: Method) -> Method:
    for name in (method.name, *method.aliases):
        if name in _METHODS or name in _ALIASES:
            raise CtxextError(f"method name '{name}' is already registered")
    _METHODS[method.name] = method
    _ALIASES.update({alias: method.name for alias in method.aliases})
    return method


BUILTIN_METHODS = "ctxext.methods"  # importing this package registers every built-in method


def _registered() -> dict[str, Method]:
    importlib.import_module(BUILTIN_METHODS)  # a no-op after the first call
    return _METHODS


def get_method(name: str) -> Method:
    _registered()
    key = str(name).strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key not in _METHODS:
        raise CtxextError(f"unknown method '{name}' (valid: {', '.join(list_methods())})")
    return _METHODS[key]


def list_methods() -> list[str]:
    """Canonical names of all registered methods, sorted."""
    return sorted(_registered())


def all_methods() -> list[Method]:
    return [_METHODS[name] for name in list_methods()]
