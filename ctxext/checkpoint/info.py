"""What ``ctxext info`` shows about a checkpoint: architecture, rotary setup, lengths, patch
(with the effective length ``ctxext probe --record`` measured, when known)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..core.record import ExtensionRecord
from ..core.rope_setup import read_rope_setup, text_config
from .gguf.reader import read_layout
from .locations import ModelLocation, resolve_model_path


def location_record(location: ModelLocation, config: Any) -> ExtensionRecord | None:
    """The ctxext record of a checkpoint: its config's (a directory) or its metadata's (a GGUF file)."""
    if location.gguf_file is not None:
        from .gguf.mapping import gguf_record

        return gguf_record(location.directory / location.gguf_file)
    return ExtensionRecord.of(config)


def describe(model: str | Path) -> list[tuple[str, str]]:
    """(label, value) rows describing a model directory, GGUF file or the default model.

    A GGUF file is read by ctxext's own validated reader first (a damaged file is one line, as for
    ``patch``); the config then comes through the one loader every command uses.
    """
    from ..model.loading import model_config

    location = resolve_model_path(model)
    if location.gguf_file is not None:
        read_layout(location.directory / location.gguf_file)
    config = model_config(location)
    tconfig = text_config(config)
    setup = read_rope_setup(tconfig)
    record = location_record(location, config)
    kv_heads = getattr(tconfig, "num_key_value_heads", None) or tconfig.num_attention_heads
    rows = [
        ("model", str(location.directory / (location.gguf_file or ""))),
        (
            "architecture",
            f"{', '.join(getattr(config, 'architectures', None) or []) or '?'} (model_type {setup.model_type})",
        ),
        (
            "layers",
            f"{tconfig.num_hidden_layers}, heads {tconfig.num_attention_heads}, kv heads {kv_heads}, "
            f"head_dim {setup.head_dim}",
        ),
    ]
    for layer_type, params in setup.parameters.items():
        extra = {k: v for k, v in params.items() if k not in ("rope_type", "rope_theta")}
        rows.append(
            (
                f"rope[{layer_type}]" if layer_type else "rope",
                f"type {params.get('rope_type', 'default')}, theta {params.get('rope_theta')}, "
                f"rotary dim {setup.rotary_dim(layer_type)}" + (f", {json.dumps(extra)}" if extra else ""),
            )
        )
    if record is None:
        return rows + [("native length", str(setup.native_length)), ("ctxext patch", "none")]
    rows += [
        ("native length", str(record.original_length)),
        ("extended length", str(record.target_length)),
        (
            "ctxext patch",
            f"{record.method} x{record.factor:g}, params {json.dumps(record.params)}, ctxext {record.version}",
        ),
    ]
    if record.effective_length is not None:
        rows.append(("effective length", f"{record.effective_length} (measured by ctxext probe)"))
    return rows
