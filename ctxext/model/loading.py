"""Loading models and tokenizers: ``from_pretrained`` (a patched checkpoint re-extended as it loads),
the weights and tokenizer of any model location, and its config without the weights.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from torch import nn

from ..checkpoint.config_json import check_config_json
from ..checkpoint.locations import ModelLocation, resolve_model_path
from ..core.config_check import check_model_config
from ..core.plan import apply_fields, take_off_record
from ..core.rope_setup import text_config
from ..errors import CtxextError, one_line
from .extend import reapply
from .rotary import find_rotary_modules, rebuild

logger = logging.getLogger(__name__)


def from_pretrained(path: str | Path, **kwargs: Any) -> nn.Module:
    """Load a causal LM (HF directory or GGUF file) with its ctxext patch re-applied.

    ``kwargs`` go to ``AutoModelForCausalLM.from_pretrained`` (``dtype``, ``device_map``, ...).
    """
    from transformers import AutoModelForCausalLM

    location = resolve_model_path(path)
    if location.gguf_file is not None:
        from ..checkpoint.gguf.mapping import gguf_record

        model_config(location)  # the checks of its fields, before the weights load
        model = AutoModelForCausalLM.from_pretrained(location.directory, gguf_file=location.gguf_file, **kwargs)
        record = gguf_record(location.directory / location.gguf_file)
        if record is not None:  # transformers reads the patched context length and base, not the scaling
            apply_fields(text_config(model.config), record.replaced)
            for parent, name, module in find_rotary_modules(model):
                setattr(parent, name, rebuild(module))
            reapply(model, record)
        return model
    config = kwargs.pop("config", None) or model_config(location)
    saved_rope_parameters = text_config(config).rope_parameters
    record = take_off_record(config)
    if record is None:
        return AutoModelForCausalLM.from_pretrained(location.directory, config=config, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(location.directory, config=config, **kwargs)
    reapply(model, record)
    if text_config(model.config).rope_parameters != saved_rope_parameters:
        logger.warning(
            "config.json's rope parameters differ from what this ctxext computes for %s; using ctxext's",
            record.method,
        )
    return model


def location_label(location: ModelLocation) -> str:
    """The path a message names for a model location: the .gguf file, or the directory."""
    return str(location.directory / location.gguf_file) if location.gguf_file else str(location.directory)


def model_config(location: ModelLocation) -> Any:
    """The model's config, read without its weights (config.json, or a GGUF file's header), its fields
    checked (``core/config_check.py``): config.json's before transformers parses it, a GGUF's as mapped."""
    from transformers import AutoConfig

    if location.gguf_file is None:
        check_config_json(location.directory)
    try:
        config = AutoConfig.from_pretrained(location.directory, gguf_file=location.gguf_file)
    except CtxextError:
        raise
    except Exception as exc:  # transformers raises OSError, ValueError, KeyError, ... for bad files
        raise CtxextError(f"{location_label(location)}: cannot read the model's config ({one_line(exc)})") from None
    if location.gguf_file is not None:
        check_model_config(config, location_label(location))
    return config


def load_tokenizer(location: ModelLocation):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(location.directory, gguf_file=location.gguf_file)
    except CtxextError:
        raise
    except Exception as exc:
        raise CtxextError(f"{location_label(location)}: cannot load its tokenizer ({one_line(exc)})") from None


def load_generation_config(location: ModelLocation, config: Any):
    """The generation config transformers gives the model: a directory's generation_config.json, else the
    one it derives from ``config``."""
    from transformers import GenerationConfig

    if location.gguf_file is None and (location.directory / "generation_config.json").is_file():
        try:
            return GenerationConfig.from_pretrained(location.directory)
        except Exception as exc:  # transformers raises OSError, ValueError, ... for a damaged file
            raise CtxextError(f"{location.directory}: cannot read generation_config.json ({one_line(exc)})") from None
    return GenerationConfig.from_model_config(config)


def load_weights(path, **kwargs: Any):
    """``ctxext.from_pretrained(path, **kwargs)`` with a one-line error for unreadable weights."""
    try:
        return from_pretrained(path, **kwargs)
    except CtxextError:
        raise
    except Exception as exc:
        raise CtxextError(
            f"{location_label(resolve_model_path(path))}: cannot load the model ({one_line(exc)})"
        ) from None


def load_on_device(path, dtype: str, device: str) -> nn.Module:
    """``load_weights`` in ``dtype`` (a name: ``"float32"``, ...), moved to ``device``, in eval mode."""
    import torch

    model = load_weights(path, dtype=getattr(torch, dtype))
    try:
        return model.to(device).eval()
    except RuntimeError as exc:  # e.g. out of device memory
        raise CtxextError(f"--device {device}: cannot move the model there ({one_line(exc)})") from None


def check_device(device) -> Any:
    """``device`` as a ``torch.device`` that exists on this machine; a one-line error otherwise."""
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise CtxextError(f"--device {device!r}: not a torch device (expected cpu, cuda, cuda:1, mps, ...)") from None
    if parsed.type == "cpu":
        return parsed
    if parsed.type == "meta":
        raise CtxextError("--device meta holds no data; a model cannot run there")
    backend = getattr(torch, parsed.type, None)
    available = getattr(backend, "is_available", None)
    if available is None or not available():
        raise CtxextError(f"--device {device}: no {parsed.type} device is available on this machine")
    count = getattr(backend, "device_count", None)
    if parsed.index is not None and count is not None and parsed.index >= count():
        raise CtxextError(f"--device {device}: this machine has {count()} {parsed.type} device(s), numbered from 0")
    return parsed
