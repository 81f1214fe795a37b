"""ReRoPE and leaky ReRoPE: exact relative distances inside a window w, clipped (or compressed) beyond it.

Su 2023, "Rectified Rotary Position Embeddings" (https://kexue.fm/archives/9708, reference
https://github.com/bojone/rerope). For distance r = i - j: r if r < w, else w (ReRoPE: every
far key is seen at distance w) or w + (r - w) / k (leaky ReRoPE, k > 1). Defaults and their
sources:

- ``window`` w = original length // 4: the reference README's published Llama-2-13B results
  (4k native) use w = 1024 (ReRoPE-w1024 at 4k, 8k and 16k). Its patch files hard-code 512
  (L/8); ``shared/design/METHODS.md`` says about L/2. w must stay below L.
- ``leaky`` k: None (plain ReRoPE, the reference's ``rerope_patch.py``, the one its
  ``eval_loss.py`` measures). ``leaky_rerope_patch.py`` uses k = 16 with w = 512 for 4k
  Llama-2. Every distance up to the target length T stays below L when
  k >= (T - 1 - w) / (L - 1 - w).
- ``log_scaling`` on: the reference multiplies every query by max(1, ln(i + 1) / ln L)
  (log-n scaling), and on SmolLM2-135M ReRoPE with it retrieves 10/10 passkeys at 2x the
  native length (BENCHMARKS.md). It is the shared option of every attention-level method, off
  for the others; on a rope with its own attention factor (YaRN checkpoints) it would stack
  two temperatures and is refused, so there pass ``log_scaling=False``.

How it runs: the rotary module is fed positions p / k (plain ReRoPE: 0), so the KV cache
holds keys at j / k (plain: un-rotated keys). Two bands are merged by log-sum-exp: the near
band (distances 0 .. w-1) re-rotates the last w keys by j - j/k to their true positions and
the queries by i - i/k; the far band (distances >= w) reads the cached keys as they are,
with each query rotated by w - w/k (to i/k + w - w/k). Decoding a token costs the re-rotation
of at most w cached keys per layer, O(w), on top of the attention over all n keys.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..core.params import param
from ..core.registry import AttentionMethod, register
from ..errors import CtxextError
from ..model.attention.bands import Band, band_attention
from ..model.attention.kernels import rotate
from ..model.attention.runtime import AttentionConfig, AttentionRuntime, Call, register_implementation
from ._shared import whole


@dataclass
class ReRoPEConfig(AttentionConfig):
    log_scaling: bool = param(
        True,
        "log-n scaling, as the reference always applies it: logits of the query at "
        "position p times max(1, ln(p+1)/ln L) (default on for rerope)",
    )
    window: int | None = param(
        None, "w: distances below w are exact, farther ones become w (default original length // 4)"
    )
    leaky: float | None = param(
        None, "k > 1: leaky ReRoPE, distances r >= w become w + (r - w) / k (default none: plain ReRoPE)"
    )


class ReRoPERuntime(AttentionRuntime):
    implementation = register_implementation("ctxext_rerope")

    def __init__(self, config: ReRoPEConfig, scaling):
        super().__init__(config, scaling)
        length = scaling.original_length
        self.window = whole("window", config.window, length // 4)
        if self.window >= length:
            raise CtxextError(f"window ({self.window}) must be below the original length ({length})")
        leaky = config.leaky
        if leaky is not None and (
            isinstance(leaky, bool) or not isinstance(leaky, (int, float)) or not math.isfinite(leaky) or leaky <= 1
        ):
            raise CtxextError(
                f"parameter leaky must be a number above 1 (leave it out for plain ReRoPE), got {leaky!r}"
            )
        self.leaky = None if leaky is None else float(leaky)

    def _cached(self, positions: torch.Tensor) -> torch.Tensor:
        """The position a key or query at ``positions`` is rotated to by the model: p / k, or 0."""
        return torch.zeros_like(positions) if self.leaky is None else positions / self.leaky

    def remap_positions(self, positions):
        return self._cached(positions.float())

    def attend(self, call: Call):
        w = self.window
        positions = call.key_positions.float()
        near_start = max(0, call.q0 - w + 1)
        near_positions = positions[near_start:]
        k_near = rotate(call.k[:, :, near_start:], near_positions - self._cached(near_positions), call.inv_freq)
        query_positions = positions[call.q0 :]
        q_near = rotate(call.q, query_positions - self._cached(query_positions), call.inv_freq)
        q_far = rotate(call.q, w - (0.0 if self.leaky is None else w / self.leaky), call.inv_freq)

        def bands(i0, i1):
            return [
                Band(q_near, k_near, call.v[:, :, near_start:], near=0, far=w - 1, offset=near_start),
                Band(q_far, call.k, call.v, near=w, far=math.inf),
            ]

        return band_attention(bands, call.q.shape[2], call.q0, call.scale, narrowest=w - 1)


register(
    AttentionMethod(
        name="rerope",
        config_class=ReRoPEConfig,
        runtime=ReRoPERuntime,
        summary="ReRoPE: exact distances below a window w, w (or leaky: w + (r - w) / k) beyond it",
        paper="https://kexue.fm/archives/9708",
    )
)
