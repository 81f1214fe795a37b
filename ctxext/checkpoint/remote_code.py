"""Remote code for transformers-based tools: a patched directory that stock ``AutoModelForCausalLM`` loads
with its ctxext patch applied.

An attention-level method lives in ctxext's code, not in config.json, so stock transformers would load the
directory unpatched. With remote code, ``patch_directory(..., remote_code=True)`` (``ctxext patch
--remote-code``) also writes :data:`MODULE` beside config.json and points the config's ``auto_map`` at it:
``AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)`` (and so lm-eval's ``hf`` model,
pipelines, ``transformers serve``) then runs ``ctxext.from_pretrained(DIR)``, with ctxext installed.
``unpatch`` takes both away again; nothing is written unless asked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import CtxextError

MODULE = "ctxext_remote.py"
AUTO_MAP = "auto_map"
MARKER = "# written by ctxext patch --remote-code"  # the first line: unpatch removes only a file that has it

_TEMPLATE = '''{marker}
"""Loads this directory with its ctxext patch ({method}) applied: AutoModelForCausalLM.from_pretrained(DIR,
trust_remote_code=True) runs ctxext.from_pretrained(DIR). Needs ctxext installed (pip install ctxext)."""

from transformers import {architecture}


class Ctxext{architecture}({architecture}):
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        import ctxext

        for auto_only in ("trust_remote_code", "_from_auto", "adapter_kwargs"):  # the auto class's own
            kwargs.pop(auto_only, None)
        if model_args:
            raise TypeError("ctxext.from_pretrained takes keyword arguments only")
        return ctxext.from_pretrained(pretrained_model_name_or_path, **kwargs)
'''


def architecture_of(config_json: dict[str, Any]) -> str:
    """The causal-LM class transformers builds for this config (its first ``architectures`` entry), checked."""
    import transformers

    names = config_json.get("architectures") or []
    name = names[0] if isinstance(names, list) and names and isinstance(names[0], str) else None
    if name is None or not name.isidentifier() or not hasattr(transformers, name):
        raise CtxextError(
            f"--remote-code needs config.json's 'architectures' to name a transformers model class, got {names!r}"
        )
    return name


def module_text(architecture: str, method: str) -> bytes:
    return _TEMPLATE.format(marker=MARKER, architecture=architecture, method=method).encode("utf-8")


def add_auto_map(
    patched: dict[str, Any], original: dict[str, Any], replaced: dict[str, Any], architecture: str
) -> None:
    """Point ``patched``'s auto_map at the module (the original auto_map is recorded in ``replaced``)."""
    replaced[AUTO_MAP] = original.get(AUTO_MAP)
    patched[AUTO_MAP] = {
        **(original.get(AUTO_MAP) or {}),
        "AutoModelForCausalLM": f"{Path(MODULE).stem}.Ctxext{architecture}",
    }


def is_ours(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.readline().rstrip(b"\n") == MARKER.encode()
    except OSError:
        return False
