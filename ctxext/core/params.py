"""Method parameters: the :class:`MethodConfig` base every method's parameter dataclass derives from.

Field metadata carries the help text shown by ``ctxext methods`` and the CLI flags.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any

from ..errors import CtxextError


def param(default: Any, help: str, **kwargs: Any) -> Any:
    """A method parameter: a dataclass field with a default and a help text."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **kwargs})
    return field(default=default, metadata={"help": help, **kwargs})


@dataclass
class MethodConfig:
    """Base class of every method's parameters. Subclasses validate in ``check()``."""

    @classmethod
    def from_params(cls, method: str, params: dict[str, Any]) -> MethodConfig:
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
