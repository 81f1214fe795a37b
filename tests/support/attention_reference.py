"""Dense O(n^2) references of the attention-level methods, written from their formulas.

The reference runs inside the *unpatched* model as an attention implementation: it takes
the model's rotated q and k, rotates them back to position 0 with the true position ids,
builds the full matrix of remapped distances r'(i, j), rotates each query by each r'(i, j),
masks, and takes one softmax (with ``log_scaling`` in the parameters, each query row's
logits are multiplied by max(1, ln(p + 1) / ln L)). LM-Infinite with ``top_k``: each head's
top_k middle keys, scored with the query turned to ``top_k_distance``, are added to the
softmax with those scores. GALI: each query row uses the positions of its own length, built by
the reference's ``construct_new_pi`` loop (:func:`gali_positions`); a fractional distance gets the
logit interpolated between those at its floor and ceiling, and the noise (the one thing shared
with ctxext: the hash that defines it, ``ctxext.methods.gali.standard_normal``) is added after
every scaling. Block retrieval's per-head distances and visibility come from the
fp64 formula in ``test_block_retrieval.py``. Nothing here shares code with ctxext's blockwise kernels.
"""

from __future__ import annotations

import math

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

import ctxext
from ctxext.methods.gali import standard_normal

NAME = "ctxext_test_dense_reference"


def turn(x, angle):
    """Rotate x (..., d) by angle (..., d/2-or-less) on its first 2*angle.shape[-1] dims (rotate-half RoPE)."""
    rotary = angle.shape[-1] * 2
    cos, sin = torch.cat([angle.cos()] * 2, -1), torch.cat([angle.sin()] * 2, -1)
    part = x[..., :rotary]
    first, second = part[..., : rotary // 2], part[..., rotary // 2 :]
    turned = part * cos + torch.cat([-second, first], -1) * sin
    return torch.cat([turned, x[..., rotary:]], -1)


def gali_positions(length: int, original: int, window: int) -> torch.Tensor:
    """The GALI reference's ``construct_new_pi`` (start_pos 0), as its loop reads: G from the window,
    then integer positions split into G each, from 0 up, until the positions hold ``length`` tokens."""
    if length <= original:
        return torch.arange(length, dtype=torch.float64)
    group = math.ceil((length - window) / (original - window))
    fractional, split = [], 0
    while original - split + len(fractional) < length:
        fractional += [split + t / group for t in range(group)]
        split += 1
    kept = list(range(split, original))
    return torch.tensor(fractional[: length - len(kept)] + kept, dtype=torch.float64)


def distances(method: str, p: torch.Tensor, params: dict, length: int):
    """(remapped distance (n, n) float, extra visibility (n, n) bool) for positions p (n,) of one row."""
    i, j = p[:, None], p[None, :]
    r = (i - j).float()
    visible = torch.ones_like(r, dtype=torch.bool)
    if method == "string":
        s, w = params["shifted_offset"], params["local_value"]
        return torch.where(r < s, r, r - s + w), visible
    if method == "lm-infinite":
        window, g = params["window"], params["n_global"]
        visible = (r < window) | (j < g).expand_as(r)
        return r.clamp(max=length), visible
    if method == "self-extend":
        g, w = params["group_size"], params["window"]
        grouped = (i // g - j // g + w - w // g).float()
        return torch.where(r < w, r, grouped), visible
    if method == "rerope":
        w, k = params["window"], params.get("leaky")
        far = torch.full_like(r, float(w)) if k is None else w + (r - w) / k
        return torch.where(r < w, r, far), visible
    if method == "dca":
        c, w = params["chunk_size"], params["local_window"]
        s = c - w
        same, previous = (i // s) == (j // s), (i // s) == (j // s) + 1
        successive = torch.clamp(i % s + s, max=c) - j % s
        return torch.where(same, r, torch.where(previous, successive.float(), (c - j % s).float())), visible
    if method == "gali":  # each query row with the positions of its own length
        rows = []
        for query in p.tolist():
            built = gali_positions(query + 1, length, params["local_window"])
            rows.append(built[query] - built[p.clamp(max=query)])
        return torch.stack(rows).float(), visible
    raise ValueError(method)


class DenseReference:
    """Install with ``install(model, method, params)``; the model must be unpatched."""

    def __init__(self, method: str, params: dict, length: int, inv_freq: torch.Tensor, attention_scaling: float):
        # a parameter left out takes the method's default (only log_scaling's differs between methods)
        params = {"log_scaling": ctxext.get_method(method).config_class().log_scaling, **params}
        self.method, self.params, self.length = method, params, length
        self.inv_freq, self.attention_scaling = inv_freq.float(), attention_scaling

    def __call__(self, module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        b, hq, n, d = query.shape
        group = hq // key.shape[1]
        key, value = key.repeat_interleave(group, 1).float(), value.repeat_interleave(group, 1).float()
        query = query.float()
        positions = kwargs["position_ids"].expand(b, n)
        # rotate back to position 0 (the model applied cos/sin times its attention factor)
        back = -positions[:, None, :, None].float() * self.inv_freq
        q0 = turn(query, back) / self.attention_scaling
        k0 = turn(key, back) / self.attention_scaling
        if attention_mask is None:
            allowed = torch.ones(n, n, dtype=torch.bool).tril().expand(b, 1, n, n)
        else:
            allowed = attention_mask.bool()
        out = torch.empty(b, hq, n, value.shape[-1])
        for row in range(b):
            p = positions[row]
            real = allowed[row, 0].diagonal()  # a padding query does not see itself
            logit_scale = scaling * self.attention_scaling**2
            if self.method == "ms-poe":
                dist, extra = self._ms_poe(module, q0[row], k0[row], p, allowed[row, 0], scaling)
            elif self.method == "block-retrieval":
                assert bool(real.all()), "the block-retrieval reference takes rows without padding"
                dist, extra = retrieval_distances(q0[row], k0[row], self.params, self.params["num_kv_heads"])
            else:
                dist, extra = distances(self.method, p, self.params, self.length)
                dist = dist.expand(hq, n, n)
            if self.method == "string" and self.params.get("reference_scale"):  # cos and sin times 1 + 0.1 ln 2
                logit_scale = logit_scale * (1 + 0.1 * math.log(2)) ** 2
            if self.method == "dca" and self.params.get("temperature"):
                total = int(p[real].max()) + 1
                if total > self.length:
                    logit_scale = logit_scale * (0.05 * math.log(total / self.length) + 1) ** 2
            if self.method == "gali" and self.params.get("logit_interpolation", True):
                weight = dist - dist.floor()
                logits = (1 - weight) * self._scores(
                    q0[row], k0[row], dist.floor(), logit_scale
                ) + weight * self._scores(q0[row], k0[row], dist.ceil(), logit_scale)
            else:
                logits = self._scores(q0[row], k0[row], dist, logit_scale)
            if self.method == "lm-infinite" and self._retrieves(module):
                logits, extra = self._lm_infinite_top_k(
                    q0[row], k0[row], p, allowed[row, 0], logits, extra, logit_scale
                )
            if self.params.get("log_scaling"):  # log-n: the query at position p times max(1, ln(p+1)/ln L)
                logits = logits * (torch.log(p.double() + 1) / math.log(self.length)).clamp(min=1).float()[:, None]
            if self.method == "gali" and self.params.get("noise", True):
                logits = logits + self._gali_noise(module, p, dist, hq)
            mask = allowed[row, 0] & extra
            logits = logits.masked_fill(~mask, float("-inf"))
            weights = logits.softmax(-1).nan_to_num(0.0)
            out[row] = weights @ value[row]
        return out.transpose(1, 2).contiguous().to(key.dtype), None

    def _scores(self, q0, k0, dist, scale):
        """Logits (hq, n, n) of one row's q0, k0 (at position 0), query i turned by dist[h, i, j] against key j."""
        hq, n, d = q0.shape
        rotated = turn(q0[:, :, None, :].expand(hq, n, n, d), dist[..., None] * self.inv_freq)
        return (rotated * k0[:, None, :, :]).sum(-1) * scale

    def _gali_noise(self, module, p, dist, heads):
        """std_base x (i - j) / (i + 1) times a standard normal, on the pairs at a non-integer distance."""
        i, j = p[:, None], p[None, :]
        std = self.params.get("std_base", 1.0) * (i - j) / (i + 1) * (dist != dist.round())
        return standard_normal(self.params.get("noise_seed", 0), module.layer_idx, heads, p, p) * std

    def _retrieves(self, module) -> bool:
        return self.params.get("top_k", 0) > 0 and module.layer_idx >= self.params.get("top_k_from_layer", 4)

    def _lm_infinite_top_k(self, q0, k0, p, allowed, logits, visible, scale):
        """Each head's top_k middle keys (j >= n_global, i - j >= window) join the softmax, scored at top_k_distance."""
        distance = self.params.get("top_k_distance", self.length // 2)
        at_distance = turn(q0, distance * self.inv_freq)
        scores = (at_distance @ k0.transpose(-1, -2)) * scale  # (hq, n, n): key j at 0, query at `distance`
        i, j = p[:, None], p[None, :]
        middle = allowed & (j >= self.params["n_global"]) & (i - j >= self.params["window"])
        scores = scores.masked_fill(~middle, float("-inf"))
        top = scores.topk(min(self.params["top_k"], scores.shape[-1]), dim=-1).indices
        # a row with fewer than top_k middle keys keeps all of them (topk also picked some -inf entries)
        chosen = torch.zeros_like(scores, dtype=torch.bool).scatter(-1, top, True) & middle
        return torch.where(chosen, scores, logits), visible | chosen

    def _ms_poe(self, module, q0, k0, p, allowed, scaling):
        """Per-head distances r / r_h; ``scaling`` is the model's logit scale without the rope's attention factor."""
        hq, n, _ = q0.shape
        visible = torch.ones(n, n, dtype=torch.bool)
        r = (p[:, None] - p[None, :]).float()
        if module.layer_idx < self.params["start_layer"]:
            return r.expand(hq, n, n), visible
        real = allowed.diagonal()
        last = int(real.nonzero().max())
        if self.params.get("ranking", "pre_rope") == "pre_rope":  # ctxext's defaults when not given
            logits = (q0[:, last, None, :] * k0).sum(-1) * scaling
        else:
            angles = (p[last] - p)[:, None].float() * self.inv_freq
            keys = turn(k0, -angles)  # keys seen from the last query with true positions
            logits = (q0[:, last, None, :] * keys).sum(-1) * scaling * self.attention_scaling**2
        logits = logits.masked_fill(~allowed[last], float("-inf"))
        weights = logits.softmax(-1)
        count = int(allowed[last].sum())
        scores = ((weights > 3.0 / count) & allowed[last]).float().sum(-1) / count
        hkv = self.params["num_kv_heads"]
        per_kv = scores.reshape(hkv, hq // hkv).mean(-1)
        low, high = self.params["min_ratio"], self.params["max_ratio"]
        if self.params.get("ratio_ladder", "reference") == "reference":
            ladder = torch.tensor([low + (high - low) * h / hkv for h in range(hkv)])
        else:
            ladder = torch.linspace(low, high, hkv)
        ratio = torch.empty(hkv)
        ratio[per_kv.argsort(descending=True, stable=True)] = ladder
        per_head = ratio.repeat_interleave(hq // hkv)
        return r[None] / per_head[:, None, None], visible


def install(model, method: str, params: dict) -> None:
    rotary = model.model.rotary_emb if hasattr(model, "model") else model.gpt_neox.rotary_emb
    reference = DenseReference(
        method,
        params,
        model.config.max_position_embeddings,
        rotary.inv_freq,
        float(getattr(rotary, "attention_scaling", 1.0)),
    )
    AttentionInterface.register(NAME, reference)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    model.set_attn_implementation(NAME)


def retrieval_distances(q0, k0, params: dict, kv_heads: int):
    """(distance, visible), each (hq, n, n), of one row of n tokens from its un-rotated queries and keys
    q0, k0 (hq, n, d; the keys repeated per query head), in fp64 query by query; distances as fp32."""
    hq, n, _ = q0.shape
    group = hq // kv_heads
    sinks, window, size, top_k = (params[name] for name in ("n_sink", "window", "block_size", "top_k"))
    q, k = q0.double(), k0.double()
    distance = torch.zeros(hq, n, n, dtype=torch.float64)
    visible = torch.zeros(hq, n, n, dtype=torch.bool)
    for i in range(n):
        seen = max(0, (i + 1 - window - sinks) // size)
        local = sinks + seen * size
        for h in range(kv_heads):
            heads = slice(h * group, (h + 1) * group)
            chosen = []
            if seen:
                means = torch.stack(
                    [k[h * group, sinks + b * size : sinks + (b + 1) * size].mean(0) for b in range(seen)]
                )
                chosen = sorted((q[heads, i].sum(0) @ means.T).topk(min(top_k, seen)).indices.tolist())
            for j in range(min(sinks, i + 1)):
                distance[heads, i, j] = (i - local) + len(chosen) * size + sinks - j
                visible[heads, i, j] = True
            for j in range(local, i + 1):
                distance[heads, i, j] = i - j
                visible[heads, i, j] = True
            for rank, b in enumerate(chosen):
                for u in range(size):
                    distance[heads, i, sinks + b * size + u] = (i - local) + (len(chosen) - rank) * size - u
                    visible[heads, i, sinks + b * size + u] = True
    return distance.float(), visible
