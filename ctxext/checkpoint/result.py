"""What a patch did: :class:`PatchResult`, returned by every way of patching a checkpoint."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..core.record import ExtensionRecord


@dataclass
class PatchResult:
    """What a patch did: where it wrote, the record it wrote, and for a dry run the diff."""

    path: Path
    record: ExtensionRecord
    stock_loadable: bool  # stock transformers reproduces the patch from config.json (or GGUF) alone
    diff: str | None = None  # unified diff of config.json (GGUF: metadata), for dry runs (nothing written)
    serve_command: str | None = None  # GGUF output: the llama.cpp command that serves the extended file
    # model directory: per engine (transformers, vLLM, SGLang) the command that serves it, or why it cannot
    serve_commands: list[str] = field(default_factory=list)
