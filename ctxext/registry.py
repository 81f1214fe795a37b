"""Method registry: name -> how to build the patched rope parameters.

A method module in ``ctxext.patches`` describes itself with :class:`RopeMethod` and calls
:func:`register`. The API and the CLI only ever look methods up here, so adding a method
is adding one module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from .config import MethodConfig
from .errors import CtxextError


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


_METHODS: dict[str, RopeMethod] = {}
_ALIASES: dict[str, str] = {}


def register(method: RopeMethod) -> RopeMethod:
    for name in (method.name, *method.aliases):
        if name in _METHODS or name in _ALIASES:
            raise ValueError(f"method name '{name}' is already registered")
    _METHODS[method.name] = method
    _ALIASES.update({alias: method.name for alias in method.aliases})
    return method


def get_method(name: str) -> RopeMethod:
    key = str(name).strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key not in _METHODS:
        raise CtxextError(f"unknown method '{name}' (valid: {', '.join(list_methods())})")
    return _METHODS[key]


def list_methods() -> list[str]:
    """Canonical names of all registered methods, sorted."""
    return sorted(_METHODS)


def all_methods() -> list[RopeMethod]:
    return [_METHODS[name] for name in list_methods()]
