"""Dynamic NTK: the NTK-aware base recomputed from the current length l.

emozilla, "Dynamically Scaled RoPE" (2023); transformers' ``dynamic`` rope type:
for l > L, b' = b * (alpha * l / L - (alpha - 1))^(d / (d - 2)); below L nothing changes.

transformers reads L from ``max_position_embeddings``, so raising that field to the target
length silently switches the scaling off. This patch therefore leaves
``max_position_embeddings`` at the original length and records the target length in
``config.ctxext``. Known limit (shared with transformers): the KV cache holds keys rotated
with the base of the step they were computed at, so during generation beyond L older keys
keep a slightly smaller base than new queries. Through ctxext, the scale depends on the
current input only (see :mod:`ctxext.methods._dynamic`).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core.params import MethodConfig, param
from ..core.registry import RopeMethod, Scaling, register
from ..errors import CtxextError
from ._dynamic import make_history_independent
from ._shared import base_parameters


@dataclass
class DynamicNTKConfig(MethodConfig):
    """Parameters of dynamic NTK scaling."""

    alpha: float = param(1.0, "slope of the scale in the current length: s = alpha*l/L - (alpha-1); >= 1")

    def check(self) -> None:
        super().check()
        if self.alpha < 1:
            raise CtxextError(f"dynamic-ntk alpha must be >= 1, got {self.alpha}")


def build(native: dict, scaling: Scaling, config: DynamicNTKConfig) -> dict:
    return {**base_parameters(native), "rope_type": "dynamic", "factor": float(config.alpha)}


register(
    RopeMethod(
        name="dynamic-ntk",
        config_class=DynamicNTKConfig,
        summary="NTK-aware base recomputed from the current length (no change up to L)",
        paper="https://www.reddit.com/r/LocalLLaMA/comments/14mrgpr/",
        build=build,
        dynamic=True,
        prepare_module=make_history_independent,
    )
)
