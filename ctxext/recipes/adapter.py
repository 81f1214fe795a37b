"""The LoRA side: what a recipe adapts, wrapping with peft, saving and reloading the result.

A fine-tune folder holds the peft adapter (``adapter_model.safetensors`` and
``adapter_config.json``), ``ctxext.json`` (the extension record, the recipe, the base model
and the evaluation), the tokenizer when there is one, and with ``merge`` a standalone
``merged/`` checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from ..checkpoint.atomic import staged, write_json
from ..core.record import ExtensionRecord
from ..core.rope_setup import text_config
from ..errors import CtxextError
from ..model.extend import reapply
from .recipe import Recipe

META = "ctxext.json"
MERGED = "merged"


def attention_linears(model: nn.Module) -> list[str]:
    """Full names of the Linear layers inside attention blocks (q, k, v, o or fused variants)."""
    names = []
    for name, module in model.named_modules():
        block = name.rsplit(".", 1)[-1].lower()
        if "attn" in block or "attention" in block:
            names += [f"{name}.{sub}" for sub, child in module.named_modules() if sub and isinstance(child, nn.Linear)]
    return sorted(set(names))


def _extra_trainables(model: nn.Module, recipe: Recipe) -> list[str]:
    names = []
    if recipe.train_embeddings:
        embeddings = model.get_input_embeddings()
        names += [name for name, module in model.named_modules() if module is embeddings]
    if recipe.train_norms:
        names += [name for name, module in model.named_modules() if type(module).__name__.endswith("Norm")]
    return names


def wrap_with_lora(model: nn.Module, recipe: Recipe):
    """``model`` wrapped in a peft LoRA adapter as the recipe says (in place); returns the PeftModel."""
    from peft import LoraConfig, get_peft_model

    targets = attention_linears(model) if recipe.lora_targets == "attention" else list(recipe.lora_targets)
    if not targets:
        raise CtxextError(f"recipe '{recipe.name}': no attention Linear layers found in {type(model).__name__}")
    extra = _extra_trainables(model, recipe)
    tied = bool(getattr(text_config(model.config), "tie_word_embeddings", False))
    config = LoraConfig(
        r=recipe.lora_r,
        lora_alpha=recipe.lora_alpha,
        lora_dropout=recipe.lora_dropout,
        target_modules=targets,
        modules_to_save=extra or None,
        ensure_weight_tying=tied and recipe.train_embeddings,
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, config)
    except ValueError as exc:
        raise CtxextError(f"recipe '{recipe.name}': peft cannot wrap {type(model).__name__} ({exc})") from None


def save_adapter(peft_model, out: Path, meta: dict[str, Any], tokenizer=None) -> None:
    """Adapter (safetensors), tokenizer and ``ctxext.json`` into ``out``; each file replaced atomically."""
    with staged(out, merge=True) as staging:
        peft_model.save_pretrained(staging, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        (staging / "README.md").unlink(missing_ok=True)  # peft's empty model card template
    write_meta(out, meta)


def write_meta(out: Path, meta: dict[str, Any]) -> None:
    write_json(out / META, meta, sort_keys=True)


def read_meta(out: str | Path) -> dict[str, Any]:
    path = Path(out) / META
    if not path.is_file():
        raise CtxextError(f"{out}: no {META} here; not a ctxext fine-tune folder")
    return json.loads(path.read_text())


def save_merged(merged: nn.Module, out: Path, tokenizer=None) -> Path:
    """Save a model with its adapter merged in (``merge_and_unload()``) as ``out/merged``."""
    target = out / MERGED
    with staged(target, replace=True) as staging:
        merged.save_pretrained(staging)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
    return target


def load_finetuned(out: str | Path, base: str | Path | nn.Module | None = None, **kwargs: Any):
    """The saved adapter on its extended base model, as a PeftModel.

    ``base`` defaults to the base model recorded in ``ctxext.json``; a loaded module is
    extended in place. ``kwargs`` go to the base model's ``from_pretrained``.
    """
    from peft import PeftModel

    from ..model.loading import from_pretrained

    meta = read_meta(out)
    base = meta.get("base_model") if base is None else base
    if base is None:
        raise CtxextError(f"{out}: the base model was given as a loaded module; pass base=")
    model = base if isinstance(base, nn.Module) else from_pretrained(base, **kwargs)
    reapply(model, ExtensionRecord.from_dict(meta["extension"]))
    return PeftModel.from_pretrained(model, str(out))
