"""Ms-PoE, Multi-scale Positional Encoding: per-head position scaling t -> t / r_h.

Zhang et al. 2024, "Found in the Middle: How Language Models Use Long Contexts Better via
Plug-and-Play Positional Encoding" (https://arxiv.org/abs/2403.04797); reference code
VITA-Group/Ms-PoE ``utils/modify_arch/llama.py``. Heads that are less position-aware get
larger ratios. Position awareness of a head is the fraction of the prompt's last query
row's attention weights above 3x the row mean, from that row only (no L x L matrix), for
every new prompt (every forward that starts with an empty cache), per batch row.

``ranking`` says which logits that row is: ``pre_rope`` (default, as the reference's
``_head_wise_statistics``) scores the raw query and key projections, recovered by rotating
the model's rotated q and k back by their positions (and without the rope's attention
factor); ``post_rope`` scores the logits the model itself computes, at its own positions.
``ratio_ladder`` spaces the ratios of ranks h = 0..H-1: ``reference`` (default, as the
reference's ``MsPoELlamaRotaryEmbedding``) is r_h = min + (max - min) h / H, so ``max_ratio``
itself is never reached; ``inclusive`` runs evenly from ``min_ratio`` 1.2 to ``max_ratio``
1.8, both ends included. Layers ``start_layer`` .. N-1 are scaled (default from layer 2).

Grouped-query attention: a key/value head is read by several query heads, so the ratio is
chosen per key/value head (its query heads' mean score decides its rank, H counts key/value
heads) and both its keys and all of its queries use that ratio; relative distances stay
consistent. Keys are written back into the KV cache at their scaled positions once, so
decoding only re-rotates the new token. This needs a cache that returns its own key tensor
(transformers' DynamicCache and StaticCache do); any other cache is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.params import param
from ..core.registry import AttentionMethod, register
from ..errors import CtxextError
from ..model.attention.bands import Band, band_attention
from ..model.attention.kernels import rotate
from ..model.attention.runtime import AttentionConfig, AttentionRuntime, Call, RowGroup, register_implementation
from ..model.compat import cache_given
from ._shared import one_of, whole

RANKINGS = ("pre_rope", "post_rope")
RATIO_LADDERS = ("reference", "inclusive")


@dataclass
class MsPoEConfig(AttentionConfig):
    min_ratio: float = param(1.2, "smallest position scaling ratio (the most position-aware head)")
    max_ratio: float = param(1.8, "largest position scaling ratio (the least position-aware head)")
    start_layer: int = param(2, "first layer scaled; earlier layers keep their positions (default 2)")
    ranking: str = param(
        "pre_rope",
        "what heads are ranked on: 'pre_rope', q.k of the raw projections before RoPE (default, the reference "
        "code's _head_wise_statistics), or 'post_rope', the model's own rotated q.k",
    )
    ratio_ladder: str = param(
        "reference",
        "ratio of rank h of H heads: 'reference', min + (max - min) h / H, max_ratio never reached (default, the "
        "reference code's MsPoELlamaRotaryEmbedding), or 'inclusive', evenly from min_ratio to max_ratio",
    )

    def check(self) -> None:
        super().check()
        one_of("ranking", self.ranking, RANKINGS)
        one_of("ratio_ladder", self.ratio_ladder, RATIO_LADDERS)


def position_awareness(q_last: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """Fraction of each head's attention weights above 3x their mean, from one query row.

    q_last (b, hq, d), k (b, hkv, m, d) -> (b, hq).
    """
    b, hq, d = q_last.shape
    hkv, m = k.shape[1], k.shape[2]
    logits = torch.einsum("bgrd,bgmd->bgrm", q_last.float().reshape(b, hkv, hq // hkv, d), k.float()) * scale
    weights = logits.softmax(-1).reshape(b, hq, m)
    return (weights > 3.0 / m).float().mean(-1)


def unrotated(q_last: torch.Tensor, k: torch.Tensor, first_position: int, inv_freq: torch.Tensor):
    """q_last (b, hq, d) and k (b, hkv, m, d), rotated by the model with key t at first_position + t and
    the query at the last key's position, rotated back to position 0 (fp32)."""
    positions = first_position + torch.arange(k.shape[2], device=k.device, dtype=torch.float32)
    return rotate(q_last.float(), -positions[-1], inv_freq), rotate(k.float(), -positions, inv_freq)


def ratio_ladder(kind: str, count: int, low: float, high: float, device) -> torch.Tensor:
    """The ratios of ranks 0..count-1 (rank 0 the most position-aware head)."""
    if kind == "inclusive":
        return torch.linspace(low, high, count, device=device)
    return low + (high - low) * torch.arange(count, device=device, dtype=torch.float32) / count


def ratios_by_rank(scores: torch.Tensor, num_kv_heads: int, ladder: torch.Tensor) -> torch.Tensor:
    """(b, hq) scores -> (b, hkv) ratios: the highest mean score gets ``ladder[0]``, the lowest the last."""
    b, hq = scores.shape
    per_kv = scores.reshape(b, num_kv_heads, hq // num_kv_heads).mean(-1)
    order = per_kv.argsort(dim=-1, descending=True, stable=True)
    ratios = torch.empty_like(per_kv)
    ratios.scatter_(1, order, ladder.expand(b, -1).contiguous())
    return ratios


class MsPoERuntime(AttentionRuntime):
    implementation = register_implementation("ctxext_ms_poe")

    def __init__(self, config: MsPoEConfig, scaling):
        super().__init__(config, scaling)
        self.start_layer = whole("start_layer", config.start_layer, 2, minimum=0)
        if not 0 < config.min_ratio <= config.max_ratio:
            raise CtxextError(f"need 0 < min_ratio <= max_ratio, got {config.min_ratio}, {config.max_ratio}")
        self.ratios: dict[int, torch.Tensor] = {}  # layer -> (batch, kv heads)
        self.cache = None

    def install(self, model):
        super().install(model)
        for module in self._attention_modules:
            self._hooks.append(module.register_forward_pre_hook(self._remember_cache, with_kwargs=True))

    def _remember_cache(self, module, args, kwargs):
        self.cache = cache_given(kwargs)

    def _scores(self, query, key, group: RowGroup, scale: float) -> torch.Tensor:
        """Position awareness (rows, hq) of one row group, from its prompt's last query row."""
        q_last = query[group.rows, :, group.end - 1 - (key.shape[2] - query.shape[2])]
        k = key[group.rows, :, group.start : group.end]
        if self.config.ranking == "pre_rope":
            q_last, k = unrotated(q_last, k, group.start + group.offset, self.rotary.inv_freq)
            # the model's cos and sin carry the rope's attention factor; raw projections do not
            scale = scale / float(getattr(self.rotary, "attention_scaling", 1.0)) ** 2
        return position_awareness(q_last, k, scale)

    def prepare(self, module, query, key, groups, scale):
        layer = module.layer_idx
        if layer < self.start_layer:
            return
        batch, n, m = query.shape[0], query.shape[2], key.shape[2]
        first_query = m - n
        if self.cache is not None and self.cache.layers[layer].keys is not key:
            raise CtxextError("ms-poe needs a KV cache that keeps its own key tensor (DynamicCache or StaticCache)")
        offsets = torch.zeros(batch, dtype=torch.long, device=key.device)
        if first_query == 0:  # a new prompt: rank the heads
            heads = key.shape[1]
            ladder = ratio_ladder(
                self.config.ratio_ladder, heads, self.config.min_ratio, self.config.max_ratio, key.device
            )
            ratios = torch.ones(batch, heads, device=key.device)
            for group in groups:
                ratios[group.rows] = ratios_by_rank(self._scores(query, key, group, scale), heads, ladder)
            self.ratios[layer] = ratios
        elif self.ratios.get(layer) is None or self.ratios[layer].shape[0] != batch:
            raise CtxextError("ms-poe ranks heads on the prompt; run the prompt through the model before decoding")
        for group in groups:
            offsets[group.rows] = group.offset
        ratio = self.ratios[layer][:, :, None]
        new_positions = (first_query + torch.arange(n, device=key.device))[None, :] + offsets[:, None]
        new_positions = new_positions[:, None, :].float()
        key[:, :, first_query:] = rotate(
            key[:, :, first_query:], new_positions / ratio - new_positions, self.rotary.inv_freq
        )

    def attend(self, call: Call):
        layer = call.module.layer_idx
        q = call.q
        if layer >= self.start_layer:
            ratio = self.ratios[layer][call.rows]
            ratio = ratio.repeat_interleave(q.shape[1] // ratio.shape[1], dim=1)[:, :, None]
            positions = (call.position + call.q0 + torch.arange(q.shape[2], device=q.device)).float()
            q = rotate(q, positions / ratio - positions, call.inv_freq)

        def bands(i0, i1):
            return [Band(q, call.k, call.v)]

        return band_attention(bands, q.shape[2], call.q0, call.scale)


register(
    AttentionMethod(
        name="ms-poe",
        config_class=MsPoEConfig,
        runtime=MsPoERuntime,
        summary="Ms-PoE: per-head position scaling from 1.2 toward 1.8 ranked by position awareness "
        "(lost in the middle)",
        paper="https://arxiv.org/abs/2403.04797",
        aliases=("mspoe",),
    )
)
