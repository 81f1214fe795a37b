"""Attention kernels that also return the log-sum-exp, the merge of partial results, and RoPE re-rotation.

Attention-level methods split the keys of a query into parts that see different relative
positions. Each part is computed by a fast fused kernel that returns its log-sum-exp, and
the parts are merged exactly in fp32. ``_kernel`` is the one place that chooses: on CPU
PyTorch's flash attention for CPU; on CUDA the flash kernel for unmasked fp16/bf16 parts
(compute capability 8.0 or newer, head dim at most 256) and the memory-efficient kernel
for the rest; elsewhere a plain matmul path. Grouped-query
attention never copies the whole key cache: for unmasked parts the query heads of one
key/value head are folded into the query axis instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_CPU_FLASH = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
_CUDA_EFFICIENT = getattr(torch.ops.aten, "_scaled_dot_product_efficient_attention", None)
_CUDA_FLASH = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention", None)


@dataclass
class Partial:
    """Attention over a subset of the keys: output (b, h, q, d) and log-sum-exp (b, h, q), fp32."""

    out: torch.Tensor
    lse: torch.Tensor


def merge(parts: list[Partial]) -> Partial:
    """Exact softmax over the union of the parts' keys (the parts must not share keys)."""
    if len(parts) == 1:
        return parts[0]
    lses = torch.stack([p.lse for p in parts])
    lse = lses.logsumexp(0)
    weights = (lses - lse.nan_to_num(0.0, 0.0, 0.0)).exp().unsqueeze(-1)  # rows that see no key: exp(-inf) = 0
    out = parts[0].out * weights[0]
    for part, weight in zip(parts[1:], weights[1:]):
        out.addcmul_(part.out, weight)
    return Partial(out, lse)


def _kernel(q, k, v, scale: float, causal: bool, mask: torch.Tensor | None):
    """Fused attention on equal head counts; returns (out, lse) with lse in fp32."""
    if q.device.type == "cpu" and _CPU_FLASH is not None:
        additive = None if mask is None else torch.zeros(mask.shape, dtype=q.dtype).masked_fill(~mask, float("-inf"))
        return _CPU_FLASH(q, k, v, 0.0, causal, attn_mask=additive, scale=scale)
    if mask is None and _cuda_flash_fits(q):  # pieces are squares, so the kernel's causal alignment does not matter
        out, lse = _CUDA_FLASH(q, k, v, 0.0, causal, False, scale=scale)[:2]
        return out, lse.float()
    if (
        q.device.type == "cuda"
        and _CUDA_EFFICIENT is not None
        and q.dtype in (torch.float16, torch.bfloat16, torch.float32)
    ):
        bias = None
        if mask is not None:  # the kernel wants the bias rows aligned to 8 elements
            rows, width = mask.shape
            bias = torch.zeros(rows, -(-width // 8) * 8, dtype=q.dtype, device=q.device)[:, :width]
            bias.masked_fill_(~mask, float("-inf"))
            bias = bias.expand(q.shape[0], q.shape[1], rows, width)
        out, lse = _CUDA_EFFICIENT(q, k, v, bias, True, 0.0, causal, scale=scale)[:2]
        return out, lse[..., : q.shape[2]].float()
    logits = (q.float() @ k.float().transpose(-1, -2)) * scale
    if causal:
        mask = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool, device=q.device).tril()
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    lse = logits.logsumexp(-1)
    weights = (logits - lse.unsqueeze(-1)).exp().nan_to_num(0.0)
    return (weights @ v.float()).to(q.dtype), lse


def _cuda_flash_fits(q: torch.Tensor) -> bool:
    return (
        q.device.type == "cuda"
        and _CUDA_FLASH is not None
        and q.dtype in (torch.float16, torch.bfloat16)
        and q.shape[-1] <= 256
        and q.shape[-1] % 8 == 0
        and torch.cuda.get_device_capability(q.device) >= (8, 0)
    )


def attend(q, k, v, scale: float, causal: bool = False, mask: torch.Tensor | None = None) -> Partial:
    """Attention of q (b, hq, n, d) over k, v (b, hkv, m, d); hq a multiple of hkv.

    ``causal`` needs n == m (query t sees keys u <= t). ``mask`` (n, m) bool, True = visible.
    Rows that see no key get lse = -inf and a zero output.
    """
    b, hq, n, d = q.shape
    hkv = k.shape[1]
    group = hq // hkv
    if group > 1 and not causal:
        folded = q.reshape(b, hkv, group * n, d)
        fold_mask = None if mask is None else mask.repeat(group, 1)
        out, lse = _kernel(folded, k, v, scale, False, fold_mask)
        out, lse = out.reshape(b, hq, n, -1), lse.reshape(b, hq, n)
    else:
        if group > 1:
            k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
        out, lse = _kernel(q, k, v, scale, causal, mask)
    lse = lse.float()
    if mask is not None:
        seen = mask.any(-1)
        if not bool(seen.all()):
            lse = lse.masked_fill(~seen, float("-inf"))
            out = out.masked_fill(~seen.unsqueeze(-1), 0.0)
    return Partial(out.float(), lse)


def rotate(x: torch.Tensor, delta, inv_freq: torch.Tensor) -> torch.Tensor:
    """Rotate x (..., n, d) by RoPE angle ``delta * inv_freq`` on its first 2*len(inv_freq) dims.

    ``delta`` is a number or a tensor broadcastable to ``x.shape[:-1]``. Rotations compose, so
    a query already rotated at position p and rotated by delta is the query at p + delta
    (the rope's attention factor, applied once by the model, is kept). Computed in fp32.
    """
    return apply_rotation(x, rotation(delta, inv_freq, x.device))


def rotation(delta, inv_freq: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The cos and sin tables (delta's shape + (2*len(inv_freq),), fp32) that ``rotate`` applies.

    Computed once, they can be applied to every layer's queries or keys of the same positions.
    """
    delta = torch.as_tensor(delta, dtype=torch.float32, device=device)
    angles = delta.unsqueeze(-1) * inv_freq.to(device=device, dtype=torch.float32)
    return torch.cat((angles.cos(),) * 2, dim=-1), torch.cat((angles.sin(),) * 2, dim=-1)


def apply_rotation(x: torch.Tensor, tables: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """x rotated by ``rotation`` tables; the result has the broadcast shape of x and the tables."""
    cos, sin = tables
    rotary = cos.shape[-1]
    part = x[..., :rotary].float()
    first, second = part.chunk(2, dim=-1)
    turned = part * cos
    turned.addcmul_(torch.cat((-second, first), dim=-1), sin)  # in place: one temporary of the result's size less
    if rotary == x.shape[-1]:
        return turned.to(x.dtype)
    return torch.cat((turned.to(x.dtype), x[..., rotary:].expand(*turned.shape[:-1], -1)), dim=-1)
