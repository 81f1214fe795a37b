"""Shared by the dynamic methods: the scale depends on the current input only.

transformers' dynamic update recomputes the frequencies when an input is longer than any
seen before, and goes back to the native ones only for inputs strictly shorter than L;
an input of length L, or one between L and the longest seen, keeps the last (larger)
scale, and the temperature of a method that has one is never reset. ctxext installs a
forward pre-hook on the rotary module that starts every shorter-than-last input from the
native frequencies and temperature, so transformers' update then computes exactly the
scale of the current length: the same input gives the same logits whatever ran before.
"""

from __future__ import annotations

from torch import nn


def _rope_types(module: nn.Module) -> dict[str | None, str]:
    return module.rope_type if isinstance(module.rope_type, dict) else {None: module.rope_type}


def _start_from_native(module: nn.Module, args: tuple, kwargs: dict) -> None:
    position_ids = kwargs["position_ids"] if "position_ids" in kwargs else args[1]
    seq_len = int(position_ids.max()) + 1
    for layer_type, rope_type in _rope_types(module).items():
        if "dynamic" not in rope_type:
            continue
        prefix = f"{layer_type}_" if layer_type else ""
        cached = getattr(module, f"{prefix}max_seq_len_cached", module.max_seq_len_cached)
        if seq_len < cached:
            getattr(module, f"{prefix}inv_freq").copy_(getattr(module, f"{prefix}original_inv_freq"))
            setattr(module, f"{prefix}max_seq_len_cached", module.original_max_seq_len)
            if layer_type is None:
                module.attention_scaling = module.ctxext_native_attention_scaling


def make_history_independent(module: nn.Module) -> None:
    """Install the pre-hook on a freshly built rotary module of a dynamic method."""
    module.ctxext_native_attention_scaling = getattr(module, "attention_scaling", 1.0)
    module.register_forward_pre_hook(_start_from_native, with_kwargs=True)
