"""Checks that need no model weights, shared by ``ctxext eval`` / ``passkey`` and ``finetune``.

A model's config (``AutoConfig``, no weights read, GGUF included) is enough to plan an
extension exactly as ``extend`` will (``plan.planned_extension``), and its tokenizer is enough
to build and size every prompt; so both run before the slow model load, together with the
device, dtype and length checks. Errors from the libraries that read a model's files become
one-line :class:`~ctxext.errors.CtxextError` messages.
"""

from __future__ import annotations

import math
from typing import Any

from ..checkpoint import ModelLocation
from ..errors import CtxextError
from ..rope_config import read_rope_setup, text_config

MAX_LENGTH = 4 * 1024 * 1024  # tokens: the longest prompt or window ctxext builds (4m)


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message, for a one-line error."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def describe(location: ModelLocation) -> str:
    return str(location.directory / location.gguf_file) if location.gguf_file else str(location.directory)


def model_config(location: ModelLocation) -> Any:
    """The model's config, read without its weights (config.json, or a GGUF file's header)."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(location.directory, gguf_file=location.gguf_file)
    except CtxextError:
        raise
    except Exception as exc:  # transformers raises OSError, ValueError, KeyError, ... for bad files
        raise CtxextError(f"{describe(location)}: cannot read the model's config ({one_line(exc)})") from None


def load_tokenizer(location: ModelLocation):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(location.directory, gguf_file=location.gguf_file)
    except CtxextError:
        raise
    except Exception as exc:
        raise CtxextError(f"{describe(location)}: cannot load its tokenizer ({one_line(exc)})") from None


def load_weights(path, **kwargs: Any):
    """``ctxext.from_pretrained(path, **kwargs)`` with a one-line error for unreadable weights."""
    from ..api import from_pretrained
    from ..checkpoint import resolve_model_path

    try:
        return from_pretrained(path, **kwargs)
    except CtxextError:
        raise
    except Exception as exc:
        raise CtxextError(f"{describe(resolve_model_path(path))}: cannot load the model ({one_line(exc)})") from None


def native_length(config: Any) -> int:
    """The model's native context length; refuses models without rotary embeddings."""
    return read_rope_setup(text_config(config)).native_length


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
        raise CtxextError(f"--device {device}: this machine has {count()} {parsed.type} device(s), "
                          f"numbered from 0")
    return parsed


def check_length(length, what: str = "length") -> None:
    """A prompt or window length: a positive whole number of tokens, at most :data:`MAX_LENGTH`."""
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise CtxextError(f"{what} must be a positive whole number of tokens, got {length!r}")
    if length > MAX_LENGTH:
        raise CtxextError(f"{what} {length} is above ctxext's limit of {MAX_LENGTH} tokens (4m)")


def check_count(value, what: str, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise CtxextError(f"{what} must be a whole number of at least {minimum}, got {value!r}")


def check_fraction(values, what: str) -> None:
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and 0 <= v <= 1
               for v in values):
        raise CtxextError(f"{what} must lie in [0, 1]")


def check_token_ids(largest: int, config: Any, what: str) -> None:
    """Refuse token ids the model's embedding has no row for (a tokenizer from another model)."""
    vocab = getattr(text_config(config), "vocab_size", None)
    if isinstance(vocab, int) and largest >= vocab:
        raise CtxextError(f"{what} has token id {largest}, beyond the model's vocabulary of {vocab}: "
                          "the tokenizer does not belong to this model")
