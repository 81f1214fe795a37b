"""``finetune``: extend a model, wrap it with LoRA as a recipe says, train, evaluate, save.

Training windows come from :class:`~ctxext.recipes.data.WindowSampler`. Every forward
passes an explicit attention mask: without one, transformers reads position ids that
jump (PoSE) as several packed sequences and stops attention at each jump.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from ..api import extend
from ..checkpoint import ensure_new_output, resolve_model_path
from ..default_model import ALIAS
from ..errors import CtxextError
from ..rope_config import text_config
from .adapter import save_adapter, save_merged, wrap_with_lora, write_meta
from .data import WindowSampler, read_texts, token_ids
from .perplexity import perplexity
from .recipe import Recipe, load_recipe
from .state import checkpoints, load_checkpoint, save_checkpoint

PRECISIONS = ("auto", "fp32", "bf16")


@dataclass
class FinetuneResult:
    out: Path
    steps: int
    losses: list[float]  # mean training loss of each optimiser step run by this call
    tokens_per_second: float
    eval_length: int | None
    perplexity_before: float | None
    perplexity_after: float | None
    merged: Path | None
    model: Any  # the trained PeftModel, or the merged plain model when ``merge``


def finetune(
    model: str | Path | nn.Module,
    data: str | Path | torch.Tensor,
    out: str | Path,
    *,
    recipe: str | Recipe = "pose-lora",
    method: str | None = None,
    factor: float | None = None,
    target_length: int | None = None,
    original_length: int | None = None,
    steps: int = 100,
    tokenizer=None,
    merge: bool = False,
    resume: bool = False,
    save_every: int = 0,
    keep_checkpoints: int = 2,
    eval_length: int | None = None,
    evaluate: bool = True,
    precision: str = "auto",
    device: str | None = None,
    seed: int = 0,
    gradient_checkpointing: bool = True,
    progress: bool = True,
    replace: bool = False,
    method_params: dict[str, Any] | None = None,
    **recipe_overrides: Any,
) -> FinetuneResult:
    """Extend ``model`` with ``method`` (default: the recipe's), fine-tune a LoRA adapter, save it to ``out``.

    ``model`` is a model directory, a .gguf file, ``"smollm2"`` or a loaded causal LM (changed
    in place). ``data`` is a text file, a .jsonl file, a saved HF dataset folder or a 1-D
    tensor of token ids. ``recipe_overrides`` replace recipe fields (``seq_len``, ``lr``,
    ``grad_accum``, ``lora_r``, ...). The last ``eval_length`` tokens (default: the target
    length) are held out and scored before and after training.
    """
    recipe = _resolve_recipe(recipe, recipe_overrides)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise CtxextError(f"steps must be a positive integer, got {steps!r}")
    if precision not in PRECISIONS:
        raise CtxextError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if importlib.util.find_spec("peft") is None:
        raise CtxextError("fine-tuning needs peft: pip install 'ctxext[train]'")
    texts = None if isinstance(data, torch.Tensor) else read_texts(data)  # bad data fails before the model loads
    out = Path(out)
    _prepare_out(out, resume)

    base_model = None
    if not isinstance(model, nn.Module):
        base_model, model, loaded_tokenizer = _load(model, with_tokenizer=tokenizer is None and texts is not None)
        tokenizer = tokenizer or loaded_tokenizer
    extend(model, method or recipe.method, factor=factor, target_length=target_length,
           original_length=original_length, replace=replace, **(method_params or {}))
    record = text_config(model.config).ctxext
    target = record["target_length"]
    if recipe.seq_len > target:
        raise CtxextError(f"seq-len {recipe.seq_len} is above the target length {target}")
    if texts is not None and tokenizer is None:
        raise CtxextError("reading text data needs a tokenizer: pass tokenizer= or give token ids")
    ids = data.flatten().long() if texts is None else token_ids(texts, tokenizer)
    eval_length = (eval_length or target) if evaluate else None
    train_ids, eval_ids = _split(ids, recipe.seq_len, eval_length)

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported())
    model.to(device)
    if gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    torch.manual_seed(seed)
    peft_model = wrap_with_lora(model, recipe)
    generator = torch.Generator().manual_seed(seed)
    sampler = WindowSampler(train_ids, recipe.seq_len, target, recipe.positions, recipe.pose_chunks, generator)
    optimizer, scheduler = _optimizer(peft_model, recipe)
    settings = {"recipe": dataclasses.asdict(recipe), "extension": record, "seed": seed, "precision": precision,
                "eval_length": eval_length, "data_tokens": ids.numel()}

    start, extra = 0, {}
    if resume:
        start, extra = load_checkpoint(checkpoints(out)[-1], peft_model, optimizer, scheduler, generator, settings)
        if start >= steps:
            raise CtxextError(f"the last checkpoint is at step {start}; ask for more steps than that to resume")
    before = extra.get("perplexity_before")
    if eval_ids is not None and before is None:
        before = perplexity(peft_model, eval_ids.to(device), eval_length)

    def checkpoint(step: int) -> None:
        if save_every and (step % save_every == 0 or step == steps):
            save_checkpoint(out, step, peft_model, optimizer, scheduler, generator, settings,
                            {"perplexity_before": before}, keep_checkpoints)

    losses, rate = _train(peft_model, sampler, recipe, optimizer, scheduler, range(start + 1, steps + 1), device,
                          bf16, progress, checkpoint)
    if gradient_checkpointing:
        model.activation_checkpointing_disable()
    peft_model.eval()
    meta = {"base_model": base_model, "recipe": dataclasses.asdict(recipe), "extension": record, "steps": steps,
            "seed": seed, "eval": None}
    save_adapter(peft_model, out, meta, tokenizer)
    after = None
    if eval_ids is not None:
        after = perplexity(peft_model, eval_ids.to(device), eval_length)
        meta["eval"] = {"length": eval_length, "perplexity_before": before, "perplexity_after": after}
        write_meta(out, meta)
    trained, merged = peft_model, None
    if merge:
        trained = peft_model.merge_and_unload()
        merged = save_merged(trained, out, tokenizer)
    return FinetuneResult(out, steps, losses, rate, eval_length, before, after, merged, trained)


def _resolve_recipe(recipe: str | Recipe, overrides: dict[str, Any]) -> Recipe:
    recipe = load_recipe(recipe) if isinstance(recipe, str) else recipe
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(Recipe)} - {"name"})
    if unknown:
        raise CtxextError(f"finetune() got unknown recipe fields: {', '.join(unknown)}")
    return recipe.with_overrides(**overrides)


def _optimizer(peft_model, recipe: Recipe):
    """AdamW on the trainable weights with a linear warm-up to a constant rate (as in the PI and PoSE papers)."""
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=recipe.lr,
                                  betas=(0.9, 0.95), weight_decay=recipe.weight_decay)
    warmup = recipe.warmup_steps
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / (warmup + 1)))


def _train(peft_model, sampler, recipe, optimizer, scheduler, steps: range, device, bf16: bool, progress: bool,
           after_step) -> tuple[list[float], float]:
    """Run the optimiser ``steps`` with a progress bar; returns (losses, tokens per second)."""
    peft_model.train()
    losses, tokens, started = [], 0, time.perf_counter()
    bar = tqdm(total=steps.stop - 1, initial=steps.start - 1, desc=f"finetune {recipe.name}", disable=not progress)
    for step in steps:
        losses.append(_train_step(peft_model, sampler, recipe, optimizer, device, bf16))
        scheduler.step()
        tokens += recipe.batch_size * recipe.grad_accum * recipe.seq_len
        bar.set_postfix(loss=f"{losses[-1]:.4f}", tok_s=f"{tokens / (time.perf_counter() - started):.0f}")
        bar.update()
        after_step(step)
    bar.close()
    return losses, tokens / max(time.perf_counter() - started, 1e-9)


def _prepare_out(out: Path, resume: bool) -> None:
    if resume:
        if not checkpoints(out):
            raise CtxextError(f"{out}: no checkpoint to resume from (a run writes them when given save_every)")
        return
    ensure_new_output(out)
    out.mkdir(exist_ok=True)


def _load(path: str | Path, with_tokenizer: bool):
    """(recorded base name, model, tokenizer or None) for a model directory, GGUF file or alias."""
    from transformers import AutoTokenizer

    from ..api import from_pretrained

    location = resolve_model_path(path)
    model = from_pretrained(path, dtype=torch.float32)
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:  # GGUF weights arrive de-quantized; drop the marker so peft and saving see a plain model
        quantizer.remove_quantization_config(model)
    tokenizer = AutoTokenizer.from_pretrained(location.directory, gguf_file=location.gguf_file) if with_tokenizer else None
    return (ALIAS if str(path) == ALIAS else str(Path(path).resolve())), model, tokenizer


def _split(ids: torch.Tensor, seq_len: int, eval_length: int | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(training ids, held-out evaluation ids): the evaluation window is the last ``eval_length`` tokens."""
    if eval_length is None:
        return ids, None
    if ids.numel() < eval_length + seq_len + 1:
        raise CtxextError(f"the data has {ids.numel()} tokens, too few for seq-len {seq_len} plus a held-out "
                          f"evaluation window of {eval_length} (lower the evaluation length or turn evaluation off)")
    return ids[:-eval_length], ids[-eval_length:]


def _train_step(peft_model, sampler: WindowSampler, recipe: Recipe, optimizer, device, bf16: bool) -> float:
    """One optimiser step over ``grad_accum`` micro-batches; returns their mean loss."""
    optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for _ in range(recipe.grad_accum):
        input_ids, position_ids = (t.to(device) for t in sampler.batch(recipe.batch_size))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = peft_model(input_ids=input_ids, position_ids=position_ids, attention_mask=torch.ones_like(input_ids),
                              labels=input_ids, use_cache=False).loss
        (loss / recipe.grad_accum).backward()
        total += loss.item()
    torch.nn.utils.clip_grad_norm_([p for p in peft_model.parameters() if p.requires_grad], recipe.max_grad_norm)
    optimizer.step()
    return total / recipe.grad_accum
