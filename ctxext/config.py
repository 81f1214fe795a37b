"""Method configuration dataclasses and the record ctxext stores in a model's config.

Each method declares its parameters as a dataclass deriving from :class:`MethodConfig`;
field metadata carries the help text shown by ``ctxext methods`` and the CLI flags.
:class:`ExtensionRecord` is what ``extend()`` writes to ``config.ctxext`` (and so to
config.json): enough to re-apply the patch on load and to undo it.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any

from .errors import CtxextError
from .rope_config import text_config


def param(default: Any, help: str, **kwargs: Any) -> Any:
    """A method parameter: a dataclass field with a default and a help text."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **kwargs})
    return field(default=default, metadata={"help": help, **kwargs})


@dataclass
class MethodConfig:
    """Base class of every method's parameters. Subclasses validate in ``check()``."""

    @classmethod
    def from_params(cls, method: str, params: dict[str, Any]) -> "MethodConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(params) - known)
        if unknown:
            valid = ", ".join(sorted(known)) or "none"
            raise CtxextError(f"method '{method}' has no parameter {', '.join(unknown)} (valid: {valid})")
        config = cls(**params)
        config.check()
        return config

    def check(self) -> None:
        """Raise CtxextError on out-of-range values; numbers must be finite."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or value is None:
                continue
            if isinstance(value, (int, float)) and not math.isfinite(value):
                raise CtxextError(f"parameter {f.name} must be finite, got {value}")
            if hints.get(f.name) in (float, int) and not isinstance(value, (int, float)):
                raise CtxextError(f"parameter {f.name} must be a number, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class ExtensionRecord:
    """What ctxext stores under ``config.ctxext``.

    ``replaced`` holds the config fields the patch overwrote, with their original values,
    so that ``restore()`` and ``ctxext unpatch`` can put them back. ``effective_length``, when
    known, is what ``ctxext probe --record`` measured on the patched checkpoint (records
    written before it existed have none; a record without one leaves it out of config.json).
    ``auto``, only for ``--method auto``, says which method auto chose and why (likewise optional).
    """

    method: str
    factor: float
    original_length: int
    target_length: int
    params: dict[str, Any]
    rope_layer_types: list[str] | None
    replaced: dict[str, Any]
    version: str
    effective_length: int | None = None
    auto: dict[str, Any] | None = None  # ``--method auto``: {"chose", "params", "reason"}; absent otherwise

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for key in ("effective_length", "auto"):
            if data[key] is None:
                del data[key]
        return data

    @classmethod
    def of(cls, config: Any) -> "ExtensionRecord | None":
        """The record carried by a loaded model config or a parsed config.json, or None."""
        saved = config.get("ctxext") if isinstance(config, dict) else getattr(text_config(config), "ctxext", None)
        return cls.from_dict(saved) if saved else None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ExtensionRecord":
        if not isinstance(data, dict):
            raise CtxextError(f"config.ctxext is not a valid ctxext record (got {type(data).__name__})")
        try:
            record = cls(**{f.name: data[f.name] for f in dataclasses.fields(cls)
                            if f.name in data or f.default is dataclasses.MISSING})
        except (KeyError, TypeError) as exc:
            raise CtxextError(f"config.ctxext is not a valid ctxext record ({exc})") from None
        length = record.effective_length
        if length is not None and (isinstance(length, bool) or not isinstance(length, int) or length < 1):
            raise CtxextError(f"config.ctxext is not a valid ctxext record (effective_length {length!r})")
        if record.auto is not None and not isinstance(record.auto, dict):
            raise CtxextError(f"config.ctxext is not a valid ctxext record (auto {record.auto!r})")
        return record
