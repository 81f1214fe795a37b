"""Finding, rebuilding and guarding the rotary-embedding modules of a loaded model.

After a config change the rotary modules are rebuilt from the config by their own class,
so every model family computes its frequencies exactly as transformers would on load.
Rebuilt modules keep their fp32 buffers in fp32 when the model is cast to bf16/fp16:
RoPE angles lose whole rotations in half precision at long positions.
"""

from __future__ import annotations

import types

import torch
from torch import nn

from ..errors import CtxextError


def _is_rotary(module: nn.Module) -> bool:
    return (
        hasattr(module, "rope_type")
        and hasattr(module, "config")
        and any(name == "inv_freq" or name.endswith("_inv_freq") for name, _ in module.named_buffers(recurse=False))
    )


def find_rotary_modules(model: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    """(parent, attribute name, rotary module) for every rotary module of ``model``."""
    found = []
    for parent in model.modules():
        for name, child in parent.named_children():
            if _is_rotary(child):
                found.append((parent, name, child))
    if not found:
        model_type = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        raise CtxextError(f"model type '{model_type}' has no rotary embedding module; ctxext only extends RoPE models")
    return found


def _apply_keeping_fp32(self: nn.Module, fn, recurse: bool = True):
    fp32 = {name: buf for name, buf in self._buffers.items() if buf is not None and buf.dtype == torch.float32}
    result = type(self)._apply(self, fn, recurse)
    for name, original in fp32.items():
        moved = self._buffers[name]
        if moved is not None and moved.dtype != torch.float32:
            self._buffers[name] = original.to(moved.device)
    return result


def keep_buffers_fp32(module: nn.Module) -> None:
    """Make dtype casts of the model (``model.to(torch.bfloat16)``) skip this module's fp32 buffers."""
    module._apply = types.MethodType(_apply_keeping_fp32, module)


def rebuild(module: nn.Module) -> nn.Module:
    """A fresh module of the same class built from the (changed) config, on the same device."""
    device = next(module.buffers()).device
    fresh = type(module)(module.config)
    fresh.to(device)
    fresh.train(module.training)
    keep_buffers_fp32(fresh)
    return fresh
