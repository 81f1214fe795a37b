"""The patch record: :class:`ExtensionRecord`, what ``extend()`` writes to ``config.ctxext``.

It travels in config.json (and in a GGUF's metadata): enough to re-apply the patch on load and to undo it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..errors import CtxextError
from .rope_setup import text_config


@dataclass
class ExtensionRecord:
    """What ctxext stores under ``config.ctxext``.

    ``replaced`` holds the config fields the patch overwrote, with their original values,
    so that ``restore()`` and ``ctxext unpatch`` can put them back. ``effective_length``, when
    known, is what ``ctxext probe --record`` measured on the patched checkpoint (records
    written before it existed have none; a record without one leaves it out of config.json).
    ``auto``, only for ``--method auto``, says which method auto chose and why (likewise optional).
    ``original_sha256`` (a patched directory) is the sha256 of the original config.json bytes kept
    beside it as the backup, so that ``unpatch`` restores only that file; ``added`` names the
    top-level config.json keys the patch added (absent from the original), which an unpatch without
    the backup removes. Records from before these fields have neither.
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
    original_sha256: str | None = None  # sha256 of the backed-up original config.json (patched directories)
    added: list[str] | None = None  # top-level config.json keys the patch added

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for key in ("effective_length", "auto", "original_sha256", "added"):
            if data[key] is None:
                del data[key]
        return data

    @classmethod
    def of(cls, config: Any) -> ExtensionRecord | None:
        """The record carried by a loaded model config or a parsed config.json, or None."""
        saved = config.get("ctxext") if isinstance(config, dict) else getattr(text_config(config), "ctxext", None)
        return cls.from_dict(saved) if saved else None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExtensionRecord:
        if not isinstance(data, dict):
            raise CtxextError(f"config.ctxext is not a valid ctxext record (got {type(data).__name__})")
        try:
            record = cls(
                **{
                    f.name: data[f.name]
                    for f in dataclasses.fields(cls)
                    if f.name in data or f.default is dataclasses.MISSING
                }
            )
        except (KeyError, TypeError) as exc:
            raise CtxextError(f"config.ctxext is not a valid ctxext record ({exc})") from None
        length = record.effective_length
        if length is not None and (isinstance(length, bool) or not isinstance(length, int) or length < 1):
            raise CtxextError(f"config.ctxext is not a valid ctxext record (effective_length {length!r})")
        if record.auto is not None and not isinstance(record.auto, dict):
            raise CtxextError(f"config.ctxext is not a valid ctxext record (auto {record.auto!r})")
        return record
