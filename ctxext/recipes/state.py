"""Periodic training checkpoints and resuming from the last one.

``OUT/checkpoints/step-NNNNNNNN/`` holds the trainable weights (safetensors), the
optimiser, scheduler, step and RNG states (``trainer_state.pt``) and the settings the run
was started with, which a resumed run must match. Each checkpoint is written through
``atomic.staged``, so a crash never leaves half of one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..checkpoint.atomic import json_bytes, staged
from ..errors import CtxextError

CHECKPOINTS = "checkpoints"
WEIGHTS = "trainable.safetensors"
STATE = "trainer_state.pt"
SETTINGS = "settings.json"


def save_checkpoint(
    out: Path,
    step: int,
    peft_model,
    optimizer,
    scheduler,
    generator: torch.Generator,
    settings: dict[str, Any],
    extra: dict[str, Any],
    keep: int,
) -> Path:
    from peft import get_peft_model_state_dict

    folder = out / CHECKPOINTS
    folder.mkdir(exist_ok=True)
    target = folder / f"step-{step:08d}"
    with staged(target, replace=True) as staging:
        weights = {k: v.detach().contiguous().cpu() for k, v in get_peft_model_state_dict(peft_model).items()}
        save_file(weights, staging / WEIGHTS)
        torch.save(
            {
                "step": step,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "generator": generator.get_state(),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "extra": extra,
            },
            staging / STATE,
        )
        (staging / SETTINGS).write_bytes(json_bytes(settings, sort_keys=True))
    for old in checkpoints(out)[:-keep]:
        shutil.rmtree(old)
    return target


def checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints in ``out``, oldest first."""
    folder = out / CHECKPOINTS
    return sorted(folder.glob("step-*")) if folder.is_dir() else []


def load_checkpoint(
    path: Path, peft_model, optimizer, scheduler, generator: torch.Generator, settings: dict[str, Any]
) -> tuple[int, dict[str, Any]]:
    """Restore a checkpoint into the run; returns (step, extra). The settings must match the run's."""
    from peft import set_peft_model_state_dict

    saved = json.loads((path / SETTINGS).read_text())
    differ = sorted(k for k in set(saved) | set(settings) if saved.get(k) != settings.get(k))
    if differ:
        details = ", ".join(f"{k} {saved.get(k)!r} -> {settings.get(k)!r}" for k in differ)
        raise CtxextError(f"cannot resume from {path}: it was made with other settings ({details})")
    set_peft_model_state_dict(peft_model, load_file(path / WEIGHTS))
    state = torch.load(path / STATE, weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"]:
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return state["step"], state["extra"]
