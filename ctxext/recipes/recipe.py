"""Recipes: small declarative TOML files in ``ctxext/recipes/presets`` read into :class:`Recipe`.

A recipe fixes the default extension method, how position ids are laid out during
training (``pose`` or ``dense``), what LoRA adapts and what else trains, and the optimiser
settings. Every field can be overridden when calling ``finetune``.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from importlib import resources
from typing import Any

from ..core.validate import MAX_LENGTH
from ..errors import CtxextError

POSITIONS = ("pose", "dense")


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    method: str
    positions: str
    seq_len: int
    lora_r: int
    lora_alpha: float
    lora_dropout: float
    lora_targets: str | tuple[str, ...]  # "attention" (every Linear of the attention blocks) or module names
    train_embeddings: bool
    train_norms: bool
    lr: float
    warmup_steps: int
    weight_decay: float
    max_grad_norm: float
    batch_size: int
    grad_accum: int
    pose_chunks: int = 2

    def with_overrides(self, **overrides: Any) -> Recipe:
        """A copy with the given fields replaced (``None`` values are ignored), checked again."""
        changed = dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})
        changed.check()
        return changed

    def check(self) -> None:
        if self.positions not in POSITIONS:
            raise CtxextError(
                f"recipe '{self.name}': positions must be one of {', '.join(POSITIONS)}, got {self.positions!r}"
            )
        for name in ("seq_len", "lora_r", "batch_size", "grad_accum", "pose_chunks"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise CtxextError(f"recipe '{self.name}': {name} must be a positive integer, got {value!r}")
        if self.batch_size * self.seq_len > MAX_LENGTH:
            raise CtxextError(
                f"recipe '{self.name}': batch_size {self.batch_size} x seq_len {self.seq_len} tokens per step is "
                f"above ctxext's limit of {MAX_LENGTH} (4m)"
            )
        if not self.lr > 0:
            raise CtxextError(f"recipe '{self.name}': lr must be positive, got {self.lr!r}")
        if self.warmup_steps < 0 or not 0 <= self.lora_dropout < 1:
            raise CtxextError(f"recipe '{self.name}': warmup_steps must be >= 0 and lora_dropout in [0, 1)")


def list_recipes() -> list[str]:
    """Names of the packaged recipes, sorted."""
    folder = resources.files(__package__) / "presets"
    return sorted(entry.name[: -len(".toml")] for entry in folder.iterdir() if entry.name.endswith(".toml"))


def load_recipe(name: str) -> Recipe:
    """The packaged recipe ``name`` (see :func:`list_recipes`)."""
    if name not in list_recipes():
        raise CtxextError(f"unknown recipe '{name}' (valid: {', '.join(list_recipes())})")
    data = tomllib.loads((resources.files(__package__) / "presets" / f"{name}.toml").read_text())
    known = {f.name for f in dataclasses.fields(Recipe)} - {"name"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise CtxextError(f"recipe '{name}' has unknown fields: {', '.join(unknown)}")
    if isinstance(data.get("lora_targets"), list):
        data["lora_targets"] = tuple(data["lora_targets"])
    try:
        recipe = Recipe(name=name, **data)
    except TypeError as exc:
        raise CtxextError(f"recipe '{name}' is incomplete ({exc})") from None
    recipe.check()
    return recipe
