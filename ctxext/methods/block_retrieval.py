"""Block retrieval: attention sinks, a local window and the top-k key blocks of the middle, all placed inside L.

For prompts far beyond the native length L: each query reads the first tokens, its neighbourhood and
the few blocks of the middle that it scores highest without positions, laid out as one contiguous
sequence shorter than L, so that no relative distance leaves the trained range however long the
prompt is. In the spirit of InfLLM (Xiao et al. 2024, https://arxiv.org/abs/2402.04617, reference
thunlp/InfLLM: sinks + local window + retrieved memory blocks) and ReAttention (Liu et al. 2024,
https://arxiv.org/abs/2407.15176, reference OpenMOSS/ReAttention: a position-free top-k selection,
then ordinary positional attention over the selected keys with positions re-assigned inside L).

For the query at key index i of a row (indexes count from the row's first token), with S = n_sink,
W = window, B = block_size:

- sinks: keys j < S. Keys from S on are cut into blocks, block b = [S + bB, S + (b + 1)B).
- candidates: the c_i = max(0, floor((i + 1 - W - S) / B)) blocks lying wholly at distance >= W.
- local: keys ls_i = S + c_i B .. i at their true distance (W to W + B - 1 keys: the window and the
  part of the middle not yet a whole block).
- selection, per key/value head: block b scores (the sum of that head's group of un-rotated queries)
  . (the mean of the block's un-rotated keys), the block's mean logit with no position in it; the
  k'_i = min(top_k, c_i) best candidates are kept.
- positions: the query reads [sinks | chosen blocks in their original order | local] as one
  contiguous sequence and its distance to a key is the distance in it: local i - j; offset u of the
  chosen block of rank t (0 the earliest) (i - ls_i) + (k'_i - t) B - u; sink j (i - ls_i) + k'_i B + S - j.
  All of them stay below S + top_k B + W + B - 1, which must not exceed L.

A query with at most top_k candidates keeps them all, and the layout is then the true one: up to
S + top_k B + W + B - 1 tokens (at most L) this is plain causal attention. Every query selects its
own blocks, so a prompt gives the same logits at once or token by token with the KV cache (InfLLM
selects once per chunk of 512 queries, by their mean; that would make prefill and decoding disagree).
Defaults, for L = 8192 (SmolLM2, Llama-3; InfLLM's Llama-3-8B config ``config/llama-3-inf-llm.yaml``
has n_init 128, n_local 4096, block_size 128, topk 16):

- ``n_sink`` L // 64 (128: InfLLM's n_init); the chat template and the task instruction sit there.
- ``window`` L // 2 (4096: InfLLM's n_local); small models retrieve reliably only over a fraction of L.
- ``block_size`` L // 128 (64): half of InfLLM's, so that a needle sentence is a larger share of its
  block's mean key; retrieved whole, a block keeps a needle's tokens in order at their true spacing.
- ``top_k`` 8 (512 retrieved keys, a quarter of InfLLM's 2048): each query reads its own blocks, so
  the retrieved budget is paid per query.

How it runs: the rotary module is fed position 0, so the KV cache holds un-rotated keys (the rope's
attention factor stays in them). Per call: the block means of the middle (one pass over its keys);
the local and sink bands (``band_attention``, query blocks within which c_i is constant), with the
keys and queries rotated to their positions; and the retrieved part, merged with them by
log-sum-exp. The retrieved part runs over chunks of queries bounded by ``PAIR_BUDGET``: per query and
key/value head, c_i block scores and a top-k; then block by block, each chosen block rotated to its
in-block offsets once and attended by every (query, rank) that chose it, the query rotated for its
rank; the ranks of a query are merged by log-sum-exp. No tensor is (n x n). Decoding a token costs,
per layer, the block means (one pass over the cached keys, as much as the cache's own concatenation),
n / B block scores and attention over at most S + top_k B + W + B keys.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.params import param
from ..core.registry import AttentionMethod, register
from ..errors import CtxextError
from ..model.attention import bands as blockwise
from ..model.attention.bands import Band, band_attention
from ..model.attention.kernels import Partial, apply_rotation, merge, rotation
from ..model.attention.runtime import AttentionConfig, AttentionRuntime, Call, register_implementation
from ._shared import whole

PAIR_BUDGET = 1 << 25  # elements of one query chunk's rotated queries and outputs per (query, head, rank), or scores


@dataclass
class BlockRetrievalConfig(AttentionConfig):
    n_sink: int | None = param(
        None, "S: leading tokens every query sees (default L // 64: 128 for L = 8192, InfLLM's n_init)"
    )
    window: int | None = param(
        None, "W: local window of exact distances (default L // 2: 4096 for L = 8192, InfLLM's n_local)"
    )
    block_size: int | None = param(
        None, "B: keys beyond the window are retrieved in blocks of B (default L // 128, at least 1: 64 for L = 8192)"
    )
    top_k: int = param(
        8,
        "blocks each query retrieves per key/value head (default 8: 512 keys at B = 64); "
        "n_sink + top_k * block_size + window + block_size - 1 must not exceed L",
    )


class BlockRetrievalRuntime(AttentionRuntime):
    implementation = register_implementation("ctxext_block_retrieval")

    def __init__(self, config: BlockRetrievalConfig, scaling):
        super().__init__(config, scaling)
        length = scaling.original_length
        self.n_sink = whole("n_sink", config.n_sink, length // 64, minimum=0)
        self.window = whole("window", config.window, length // 2)
        self.block = whole("block_size", config.block_size, max(1, length // 128))
        self.top_k = whole("top_k", config.top_k, 8)
        span = self.n_sink + self.top_k * self.block + self.window + self.block - 1
        if span > length:
            raise CtxextError(
                f"n_sink + top_k * block_size + window + block_size - 1 ({span}) must not exceed "
                f"the original length ({length}): it is the longest sequence a query reads"
            )

    def remap_positions(self, positions):
        return torch.zeros_like(positions)

    def candidates(self, i):
        """c_i: the whole middle blocks of the query at key index ``i`` (an int or an int64 tensor)."""
        reach = i + 1 - self.window - self.n_sink
        if isinstance(reach, torch.Tensor):
            return reach.clamp(min=0) // self.block
        return max(0, reach) // self.block

    def attend(self, call: Call):
        n, m = call.q.shape[2], call.k.shape[2]
        sinks = min(self.n_sink, m)
        local_start = min(self.n_sink + self.candidates(call.q0) * self.block, m)
        key = ("rotations", call.q0, m, call.q.device)
        local_tables, sink_tables, query_tables = self.per_forward(key, lambda: self._rotations(call, local_start))
        k_local = apply_rotation(call.k[:, :, local_start:], local_tables)
        k_sinks = apply_rotation(call.k[:, :, :sinks], sink_tables)
        q_local, q_sinks = apply_rotation(call.q, query_tables)

        def bands(i0, i1):
            local = self.n_sink + self.candidates(i0) * self.block
            found = [Band(q_local, k_local, call.v[:, :, local_start:], lo=local, offset=local_start)]
            if sinks:
                found.append(Band(q_sinks, k_sinks, call.v[:, :, :sinks], hi=sinks))
            return found

        blocks, i = [], call.q0
        while i < m:  # query blocks within which c_i is constant
            reach = i + 1 - self.window - self.n_sink
            end = min(m, i + (max(reach, 0) // self.block + 1) * self.block - reach, i + blockwise.BLOCK)
            blocks.append((i, end))
            i = end
        retrieved = self._retrieval(call)

        def retrieved_part(i0, i1):
            if self.candidates(i1 - 1) == 0:
                return []
            rows = slice(i0 - call.q0, i1 - call.q0)
            return [Partial(retrieved.out[:, :, rows], retrieved.lse[:, :, rows])]

        return band_attention(
            bands, n, call.q0, call.scale, blocks, extra_parts=None if retrieved is None else retrieved_part
        )

    def _rotations(self, call: Call, local_start: int):
        """Tables for the local keys (true positions), the sinks, and the queries: true positions and
        sink positions i - (c_i - k'_i) B, stacked on a leading axis of 2."""
        index = torch.arange(call.k.shape[2], device=call.k.device)
        queries = index[call.q0 :]
        seen = self.candidates(queries)
        query_deltas = torch.stack((queries, queries - (seen - seen.clamp(max=self.top_k)) * self.block))
        return (
            rotation(index[local_start:], call.inv_freq, call.k.device),
            rotation(index[: min(self.n_sink, len(index))], call.inv_freq, call.k.device),
            rotation(query_deltas[:, None, None, :], call.inv_freq, call.q.device),
        )

    def _retrieval(self, call: Call) -> Partial | None:
        """The retrieved part of every query of the call (lse -inf where a query has no candidate), or None
        when no query has one."""
        m = call.k.shape[2]
        count = self.candidates(m - 1)  # the last query's candidates
        if count == 0:
            return None
        b, hq, n, _ = call.q.shape
        hkv, d, dv = call.k.shape[1], call.k.shape[-1], call.v.shape[-1]
        middle = slice(self.n_sink, self.n_sink + count * self.block)
        keys, values = (x[:, :, middle].unflatten(2, (count, self.block)) for x in (call.k, call.v))  # views
        means = keys.float().mean(3)  # (b, hkv, count, d)
        out = call.q.new_zeros(b, hq, n, dv, dtype=torch.float32)
        lse = call.q.new_full((b, hq, n), float("-inf"), dtype=torch.float32)
        first = max(call.q0, self.window + self.n_sink + self.block - 1)  # the first query with a candidate
        rows = max(1, min(PAIR_BUDGET // (b * hq * self.top_k * (d + dv)), PAIR_BUDGET // (b * hkv * count)))
        for i0 in range(first, m, rows):
            i1 = min(i0 + rows, m)
            part = self._retrieved(call, i0, i1, means, keys, values)
            out[:, :, i0 - call.q0 : i1 - call.q0], lse[:, :, i0 - call.q0 : i1 - call.q0] = part.out, part.lse
        return Partial(out, lse)

    def _retrieved(self, call: Call, i0: int, i1: int, means, keys, values) -> Partial:
        """Queries [i0, i1) (each with a candidate) over their best blocks; ``keys`` (un-rotated) and ``values``
        are (b, hkv, count, B, d)."""
        b, hq, _, d = call.q.shape
        hkv, count = means.shape[1], means.shape[2]
        group, rows = hq // hkv, i1 - i0
        index = torch.arange(i0, i1, device=call.q.device)
        seen = self.candidates(index)
        kept = seen.clamp(max=self.top_k)  # k'_i
        chosen = int(kept.max())
        q = call.q[:, :, i0 - call.q0 : i1 - call.q0].reshape(b, hkv, group, rows, d)
        scores = q.float().sum(2) @ means[:, :, : int(seen.max())].transpose(-1, -2)  # (b, hkv, rows, seen)
        scores.masked_fill_(torch.arange(scores.shape[-1], device=index.device) >= seen[:, None], float("-inf"))
        picked = scores.topk(chosen, dim=-1).indices  # best first: a query's first k'_i are real candidates
        rank = torch.arange(chosen, device=index.device)
        picked = picked.masked_fill(rank >= kept[:, None], count).sort(-1).values  # by position, the fillers last
        # rank t of k'_i sits (k'_i - t) blocks before the local keys, which start at S + c_i B
        deltas = (index - self.n_sink - seen * self.block)[:, None] + (kept[:, None] - rank) * self.block
        tables = rotation(deltas[..., None], call.inv_freq, q.device)
        turned = apply_rotation(q.permute(0, 1, 3, 2, 4).unsqueeze(3), tables)  # (b, hkv, rows, chosen, group, d)
        turned = turned.reshape(-1, group, d)  # one query group per (row, head, query, rank)
        real = (picked < count).reshape(-1).nonzero().squeeze(1)  # the (row, head, query, rank) pairs with a block
        owner = torch.arange(b * hkv, device=index.device).reshape(b, hkv, 1, 1)
        pair_blocks = (picked + owner * count).reshape(-1)[real]
        order = pair_blocks.argsort()
        blocks, sizes = pair_blocks[order].unique_consecutive(return_counts=True)
        where = (blocks // (hkv * count), blocks // count % hkv, blocks % count)
        offsets = rotation(torch.arange(self.block, device=keys.device), call.inv_freq, keys.device)
        rotated = apply_rotation(keys[where], offsets).float()  # the chosen blocks only, to their in-block offsets
        members_of = real[order].split(sizes.tolist())
        out = turned.new_zeros(len(turned), group, values.shape[-1], dtype=torch.float32)
        lse = turned.new_full((len(turned), group), float("-inf"), dtype=torch.float32)
        for position, (block, members) in enumerate(zip(zip(*(x.tolist() for x in where)), members_of)):
            # each chosen block is read once, by every (query, head) that chose it
            logits = (turned[members].float().reshape(-1, d) @ rotated[position].T) * call.scale
            part_lse = logits.logsumexp(-1)
            weights = (logits - part_lse[:, None]).exp()
            out[members] = (weights @ values[block].float()).reshape(len(members), group, -1)
            lse[members] = part_lse.reshape(len(members), group)
        out = out.reshape(b, hkv, rows, chosen, group, -1)
        lse = lse.reshape(b, hkv, rows, chosen, group)
        merged = merge([Partial(out[:, :, :, t], lse[:, :, :, t]) for t in range(chosen)])  # (b, hkv, rows, group)
        return Partial(
            merged.out.permute(0, 1, 3, 2, 4).reshape(b, hq, rows, -1),
            merged.lse.permute(0, 1, 3, 2).reshape(b, hq, rows),
        )


register(
    AttentionMethod(
        name="block-retrieval",
        config_class=BlockRetrievalConfig,
        runtime=BlockRetrievalRuntime,
        summary="sinks + local window + the top-k middle blocks by position-free score, re-placed before the "
        "window so every distance stays below L",
        paper="https://arxiv.org/abs/2402.04617",
        aliases=("blockretrieval",),
    )
)
