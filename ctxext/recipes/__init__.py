"""LoRA fine-tune recipes for extended models (peft); installed with ``ctxext[train]``."""
