"""Reading a transformers config's rotary setup: which rope parameters, per layer type.

transformers 5.x keeps RoPE settings in ``config.rope_parameters``: one flat dict, or a
dict per layer type (Gemma 3: ``sliding_attention`` / ``full_attention``). This module
hides that difference behind :class:`RopeSetup`, which the methods and the CLI share.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from ..errors import CtxextError

# Layer types extended by default when a config has per-layer-type rope parameters: the
# sliding-window layers never see distances beyond their window, so only global layers need it.
DEFAULT_LAYER_TYPES = ("full_attention",)


@dataclass
class RopeSetup:
    """The rotary configuration of one model config."""

    model_type: str
    head_dim: int
    native_length: int
    # layer type -> rope parameters; the key is None for a flat (not per-layer) config
    parameters: dict[str | None, dict[str, Any]]

    @property
    def per_layer_type(self) -> bool:
        return None not in self.parameters

    def rotary_dim(self, layer_type: str | None) -> int:
        factor = self.parameters[layer_type].get("partial_rotary_factor", 1.0)
        return int(self.head_dim * factor)

    def select_layer_types(self, requested: list[str] | None) -> list[str | None]:
        """The layer types a patch touches: all of a flat config, the global ones by default."""
        if not self.per_layer_type:
            if requested:
                raise CtxextError(f"{self.model_type} has one rope setup for all layers; drop rope_layer_types")
            return [None]
        available = sorted(self.parameters)
        chosen = list(requested) if requested else [t for t in DEFAULT_LAYER_TYPES if t in available]
        unknown = [t for t in chosen if t not in available]
        if unknown or not chosen:
            raise CtxextError(
                f"rope layer types {unknown or chosen} not in {self.model_type}'s config "
                f"(available: {', '.join(available)})"
            )
        return chosen


def text_config(config: Any) -> Any:
    """The (text) decoder config that carries the rope parameters."""
    getter = getattr(config, "get_text_config", None)
    return getter(decoder=True) if getter else config


def read_rope_setup(config: Any) -> RopeSetup:
    """Describe ``config``'s RoPE; a clear CtxextError for models without it."""
    config = text_config(config)
    model_type = getattr(config, "model_type", type(config).__name__)
    rope_parameters = getattr(config, "rope_parameters", None)
    if not rope_parameters:
        raise CtxextError(
            f"model type '{model_type}' has no rotary position embeddings (RoPE); ctxext only extends RoPE models"
        )
    labels = getattr(config, "_rope_type_labels", None) or getattr(config, "layer_types", None) or ()
    nested = [key for key in rope_parameters if key in labels]
    if nested:
        parameters = {key: copy.deepcopy(rope_parameters[key]) for key in nested if rope_parameters[key]}
    else:
        parameters = {None: copy.deepcopy(dict(rope_parameters))}
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return RopeSetup(
        model_type=model_type,
        head_dim=int(head_dim),
        native_length=int(config.max_position_embeddings),
        parameters=parameters,
    )


def native_length(config: Any) -> int:
    """The model's native context length; refuses models without rotary embeddings."""
    return read_rope_setup(text_config(config)).native_length
