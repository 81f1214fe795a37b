"""``finetune``: extend a model, wrap it with LoRA as a recipe says, train, evaluate, save.

Training windows come from :class:`~ctxext.recipes.data.WindowSampler`. Every forward
passes an explicit attention mask: without one, transformers reads position ids that
jump (PoSE) as several packed sequences and stops attention at each jump.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from ..checkpoint.atomic import locked_output
from ..checkpoint.default_model import ALIAS
from ..checkpoint.locations import ensure_new_output, resolve_model_path
from ..core.plan import plan_extension
from ..core.record import ExtensionRecord
from ..core.rope_setup import text_config
from ..core.validate import MAX_STEPS, check_count, check_token_ids
from ..errors import CtxextError
from ..eval.perplexity import perplexity
from ..model.extend import extend
from ..model.loading import check_device, load_tokenizer, load_weights, model_config
from .adapter import save_adapter, save_merged, wrap_with_lora, write_meta
from .data import WindowSampler, check_token_tensor, read_texts, token_ids
from .recipe import Recipe, load_recipe
from .state import SETTINGS, checkpoints, load_checkpoint, save_checkpoint

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
    check_count(steps, "steps", maximum=MAX_STEPS)
    if precision not in PRECISIONS:
        raise CtxextError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    check_count(save_every, "save_every", minimum=0)
    check_count(keep_checkpoints, "keep_checkpoints")
    if eval_length is not None:
        check_count(eval_length, "eval_length")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise CtxextError(f"seed must be a whole number, got {seed!r}")
    if importlib.util.find_spec("peft") is None:
        raise CtxextError("fine-tuning needs peft: pip install 'ctxext[train]'")
    device = (
        check_device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    )
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise CtxextError(f"precision bf16: the GPU {device} does not support bfloat16; use fp32")
    # Every check that needs no model runs before it loads: the data, --out, the extension (planned on the
    # model's config as extend() will apply it), seq-len against the target length, the tokens, --resume.
    if isinstance(data, torch.Tensor):
        check_token_tensor(data)
        texts = None
    else:
        texts = read_texts(data)
    out = Path(out)
    _prepare_out(out, resume)
    loaded = isinstance(model, nn.Module)
    location = None if loaded else resolve_model_path(model)
    config = model.config if loaded else model_config(location)
    method = method or recipe.method
    plan = plan_extension(
        config,
        method,
        factor=factor,
        target_length=target_length,
        original_length=original_length,
        replace=replace,
        params=method_params,
    )
    target = plan.record.target_length
    hidden = getattr(text_config(config), "hidden_size", None)
    if isinstance(hidden, int) and recipe.lora_r > hidden:
        raise CtxextError(f"lora_r {recipe.lora_r} is above the model's hidden size {hidden}: no rank can exceed it")
    if recipe.seq_len > target:
        raise CtxextError(f"seq-len {recipe.seq_len} is above the target length {target}")
    if texts is not None and tokenizer is None:
        if loaded:
            raise CtxextError("reading text data needs a tokenizer: pass tokenizer= or give token ids")
        tokenizer = load_tokenizer(location)
    ids = data.flatten().long() if texts is None else token_ids(texts, tokenizer)
    if ids.numel():
        check_token_ids(int(ids.max()), config, "the training data")
    eval_length = (eval_length or target) if evaluate else None
    train_ids, eval_ids = _split(ids, recipe.seq_len, eval_length)
    WindowSampler.check(train_ids, recipe.seq_len)
    if resume:
        _check_resume(out, _settings(recipe, plan.record, seed, precision, eval_length, ids), steps)

    with locked_output(out):  # created only now that every check has passed; a second writer is refused
        if not resume:
            ensure_new_output(out)  # another run may have filled it since the check above
        base_model = None
        if not loaded:
            base_model, model = _load(model)
        extend(
            model,
            method,
            factor=factor,
            target_length=target_length,
            original_length=original_length,
            replace=replace,
            **(method_params or {}),
        )
        record = ExtensionRecord.of(model.config)
        model.to(device)
        bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported())
        if gradient_checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        torch.manual_seed(seed)
        peft_model = wrap_with_lora(model, recipe)
        generator = torch.Generator().manual_seed(seed)
        sampler = WindowSampler(train_ids, recipe.seq_len, target, recipe.positions, recipe.pose_chunks, generator)
        optimizer, scheduler = _optimizer(peft_model, recipe)
        settings = _settings(recipe, record, seed, precision, eval_length, ids)

        start, extra = 0, {}
        if resume:
            start, extra = load_checkpoint(checkpoints(out)[-1], peft_model, optimizer, scheduler, generator, settings)
            if start >= steps:
                raise CtxextError(f"the last checkpoint is at step {start}; ask for more steps than that to resume")
        before = extra.get("perplexity_before")
        # the held-out tokens and the one before them: a window of eval_length positions scores every held-out token
        held_out = None if eval_ids is None else torch.cat([train_ids[-1:], eval_ids]).to(device)
        if held_out is not None and before is None:
            before = perplexity(peft_model, held_out, eval_length)

        def checkpoint(step: int) -> None:
            if save_every and (step % save_every == 0 or step == steps):
                save_checkpoint(
                    out,
                    step,
                    peft_model,
                    optimizer,
                    scheduler,
                    generator,
                    settings,
                    {"perplexity_before": before},
                    keep_checkpoints,
                )

        losses, rate = _train(
            peft_model,
            sampler,
            recipe,
            optimizer,
            scheduler,
            range(start + 1, steps + 1),
            device,
            bf16,
            progress,
            checkpoint,
        )
        if gradient_checkpointing:
            model.activation_checkpointing_disable()
        peft_model.eval()
        meta = {
            "base_model": base_model,
            "recipe": dataclasses.asdict(recipe),
            "extension": record.to_dict(),
            "steps": steps,
            "seed": seed,
            "eval": None,
        }
        save_adapter(peft_model, out, meta, tokenizer)
        after = None
        if held_out is not None:
            after = perplexity(peft_model, held_out, eval_length)
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
    optimizer = torch.optim.AdamW(
        [p for p in peft_model.parameters() if p.requires_grad],
        lr=recipe.lr,
        betas=(0.9, 0.95),
        weight_decay=recipe.weight_decay,
    )
    warmup = recipe.warmup_steps
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / (warmup + 1)))


def _train(
    peft_model, sampler, recipe, optimizer, scheduler, steps: range, device, bf16: bool, progress: bool, after_step
) -> tuple[list[float], float]:
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


def _settings(
    recipe: Recipe, record: ExtensionRecord, seed: int, precision: str, eval_length: int | None, ids: torch.Tensor
) -> dict[str, Any]:
    """What a checkpoint records of the run; ``--resume`` refuses a checkpoint whose settings differ."""
    return {
        "recipe": dataclasses.asdict(recipe),
        "extension": record.to_dict(),
        "seed": seed,
        "precision": precision,
        "eval_length": eval_length,
        "data_tokens": ids.numel(),
    }


def _prepare_out(out: Path, resume: bool) -> None:
    """Check ``out`` (a new or empty folder, or with ``resume`` a run's folder); nothing is created here."""
    if resume:
        if not checkpoints(out):
            raise CtxextError(f"{out}: no checkpoint to resume from (a run writes them when given save_every)")
        return
    ensure_new_output(out)


def _check_resume(out: Path, settings: dict[str, Any], steps: int) -> None:
    """``--resume`` refusals that need no model: other settings, or no steps left to run."""
    last = checkpoints(out)[-1]
    try:
        saved = json.loads((last / SETTINGS).read_text())
    except (OSError, ValueError) as exc:
        raise CtxextError(f"cannot resume from {last}: its {SETTINGS} is unreadable ({exc})") from None
    current = json.loads(json.dumps(settings))  # as a checkpoint stores them
    if not isinstance(saved, dict):
        raise CtxextError(f"cannot resume from {last}: its {SETTINGS} is not a ctxext checkpoint's")
    differ = _differences(saved, current)
    if differ:
        details = ", ".join(f"{k} {old!r} -> {new!r}" for k, old, new in differ)
        raise CtxextError(f"cannot resume from {last}: it was made with other settings ({details})")
    step = last.name.rpartition("-")[2]
    if step.isdigit() and int(step) >= steps:
        raise CtxextError(f"the last checkpoint is at step {int(step)}; ask for more steps than that to resume")


def _differences(saved: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(name, saved value, current value) for each setting that differs; nested settings by their dotted name."""
    found = []
    for key in sorted(set(saved) | set(current)):
        old, new = saved.get(key), current.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            found += _differences(old, new, f"{prefix}{key}.")
        elif old != new:
            found.append((prefix + key, old, new))
    return found


def _load(path: str | Path):
    """(recorded base name, model) for a model directory, GGUF file or alias."""
    model = load_weights(path, dtype=torch.float32)
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:  # GGUF weights arrive de-quantized; drop the marker so peft and saving see a plain model
        quantizer.remove_quantization_config(model)
    return (ALIAS if str(path) == ALIAS else str(Path(path).resolve())), model


def _split(ids: torch.Tensor, seq_len: int, eval_length: int | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(training ids, held-out evaluation ids): the evaluation window is the last ``eval_length`` tokens."""
    if eval_length is None:
        return ids, None
    if ids.numel() < eval_length + seq_len + 1:
        raise CtxextError(
            f"the data has {ids.numel()} tokens, too few for seq-len {seq_len} plus a held-out "
            f"evaluation window of {eval_length} (lower the evaluation length or turn evaluation off)"
        )
    return ids[:-eval_length], ids[-eval_length:]


def _train_step(peft_model, sampler: WindowSampler, recipe: Recipe, optimizer, device, bf16: bool) -> float:
    """One optimiser step over ``grad_accum`` micro-batches; returns their mean loss."""
    optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for _ in range(recipe.grad_accum):
        input_ids, position_ids = (t.to(device) for t in sampler.batch(recipe.batch_size))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = peft_model(
                input_ids=input_ids,
                position_ids=position_ids,
                attention_mask=torch.ones_like(input_ids),
                labels=input_ids,
                use_cache=False,
            ).loss
        (loss / recipe.grad_accum).backward()
        total += loss.item()
    torch.nn.utils.clip_grad_norm_([p for p in peft_model.parameters() if p.requires_grad], recipe.max_grad_norm)
    optimizer.step()
    return total / recipe.grad_accum
