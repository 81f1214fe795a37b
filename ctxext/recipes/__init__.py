"""LoRA fine-tune recipes for extended models (peft); installed with ``ctxext[train]``.

from ctxext.recipes import finetune, load_finetuned
result = finetune("smollm2", "corpus.txt", "out", recipe="pose-lora", factor=2, steps=40, seq_len=1024)
model = load_finetuned("out")
"""

from .adapter import load_finetuned
from .perplexity import perplexity
from .pose import pose_position_ids
from .recipe import Recipe, list_recipes, load_recipe
from .train import FinetuneResult, finetune

__all__ = [
    "FinetuneResult",
    "Recipe",
    "finetune",
    "list_recipes",
    "load_finetuned",
    "load_recipe",
    "perplexity",
    "pose_position_ids",
]
