"""How attention-level methods plug into transformers: one attention function and one mask
function registered under the same name, per-instance hooks, exact padding handling.

``AttentionRuntime.install`` selects the method's attention implementation on one model
(``set_attn_implementation``), attaches itself to that model's attention modules and adds
a pre-hook to the rotary module that records the position ids of each forward (and remaps
them for methods whose keys live at remapped positions, such as DCA and SelfExtend). The
mask function does not build an (n x n) mask: it hands the 2D padding mask to the attention
function, which splits the batch into rows that share the same valid range and position
offset and runs the method on each with no padding at all. Rows must be contiguous runs of
tokens (left or right padding); holes or packed sequences raise an error.

Every attention method's parameters derive from :class:`AttentionConfig`, which declares the
one option they all share: ``log_scaling`` (log-n attention scaling, applied here once to
the queries of every call, never by a method itself).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, causal_mask_function

from ...core.params import MethodConfig, param
from ...core.registry import Scaling
from ...errors import CtxextError
from ..rotary import find_rotary_modules

RUNTIME_ATTRIBUTE = "_ctxext_runtime"


@dataclass
class AttentionConfig(MethodConfig):
    """Parameters every attention-level method has; each method's config derives from it."""

    log_scaling: bool = param(
        False,
        "log-n scaling: logits of the query at position p (0-based) times max(1, ln(p+1)/ln L), "
        "so nothing changes inside the original length L (default off)",
    )

    def check(self) -> None:
        super().check()
        if not isinstance(self.log_scaling, bool):
            raise CtxextError(f"parameter log_scaling must be true or false, got {self.log_scaling!r}")


def log_scale(q: torch.Tensor, first_position: int, length: int) -> torch.Tensor:
    """q (b, h, n, d) of queries at positions first_position + t, times max(1, ln(position + 1) / ln length).

    Returned unchanged (the same tensor) when every query sits inside the first ``length``
    positions. The factor is computed in fp32 and applied in fp32.
    """
    n = q.shape[2]
    if first_position + n <= length:
        return q
    positions = first_position + 1 + torch.arange(n, device=q.device, dtype=torch.float32)
    factor = torch.where(positions > length, positions.log() / math.log(length), 1.0).clamp(min=1.0)
    return (q.float() * factor[:, None]).to(q.dtype)


@dataclass
class RowGroup:
    """Batch rows sharing key range [start, end) (kv index) and position = index + offset."""

    rows: slice | list[int]
    start: int
    end: int
    query_start: int  # first valid query (kv index)
    offset: int


class KeyLayout:
    """What the registered mask function returns: the padding mask, read by the attention function."""

    def __init__(self, padding: torch.Tensor | None, batch: int, q_length: int, kv_length: int):
        self.padding, self.batch, self.q_length, self.kv_length = padding, batch, q_length, kv_length
        self._groups: list[RowGroup] | None = None

    def groups(self, positions: torch.Tensor) -> list[RowGroup]:
        if self._groups is None:
            self._groups = _row_groups(self.padding, self.batch, self.q_length, self.kv_length, positions)
        return self._groups


def _row_groups(padding, batch: int, q_length: int, kv_length: int, positions: torch.Tensor) -> list[RowGroup]:
    first_query = kv_length - q_length
    if padding is None:
        valid = torch.ones(batch, kv_length, dtype=torch.bool, device=positions.device)
    else:
        valid = padding[:, :kv_length].to(torch.bool)
    counts = valid.sum(-1)
    starts = valid.int().argmax(-1)
    ends = starts + counts
    index = torch.arange(kv_length, device=valid.device)
    contiguous = ((index >= starts[:, None]) & (index < ends[:, None])) == valid
    if not bool(contiguous.all()):
        raise CtxextError(
            "ctxext attention methods need each row's tokens to be one contiguous run (left or right padding)"
        )
    positions = positions.expand(batch, q_length).to(valid.device)
    offsets = positions - (first_query + torch.arange(q_length, device=valid.device))
    query_valid = valid[:, first_query:]
    keyed: dict[tuple[int, int, int, int], list[int]] = {}
    for row in range(batch):
        row_offsets = offsets[row][query_valid[row]]
        if row_offsets.numel() == 0:
            continue  # no real query in this row: its output stays zero
        if bool((row_offsets != row_offsets[0]).any()):
            raise CtxextError(
                "ctxext attention methods need consecutive position ids within a row "
                "(packed sequences are not supported)"
            )
        start, end = int(starts[row]), int(ends[row])
        key = (start, end, max(start, first_query), int(row_offsets[0]))
        keyed.setdefault(key, []).append(row)
    groups = []
    for (start, end, query_start, offset), rows in keyed.items():
        as_slice = slice(rows[0], rows[-1] + 1) if rows == list(range(rows[0], rows[-1] + 1)) else rows
        groups.append(RowGroup(as_slice, start, end, query_start, offset))
    return groups


@dataclass
class Call:
    """One method call on rows without padding: queries are the last ``n`` of ``m`` keys."""

    q: torch.Tensor  # (b, hq, n, d), rotated by the model at (remapped) positions
    k: torch.Tensor  # (b, hkv, m, d)
    v: torch.Tensor
    position: int  # position of key 0; key t sits at position + t
    scale: float
    inv_freq: torch.Tensor
    module: nn.Module
    rows: slice | list[int]

    @property
    def q0(self) -> int:
        return self.k.shape[2] - self.q.shape[2]

    @property
    def key_positions(self) -> torch.Tensor:
        """Absolute positions of the keys (int64, on the keys' device)."""
        return self.position + torch.arange(self.k.shape[2], device=self.k.device)


class AttentionRuntime:
    """Base of every attention-level method; subclasses implement ``attend``."""

    implementation: str  # name registered with transformers' attention and mask interfaces

    def __init__(self, config: Any, scaling: Scaling):
        self.config, self.scaling = config, scaling
        self.log_scaling = bool(getattr(config, "log_scaling", False))
        if self.log_scaling and scaling.original_length < 2:
            raise CtxextError(f"log_scaling needs an original length of at least 2, got {scaling.original_length}")
        self.temperatures = [
            name for name in (self.temperature_option(config), self.log_scaling and "log_scaling") if name
        ]
        if len(self.temperatures) > 1:
            raise CtxextError(f"{' and '.join(self.temperatures)} would stack two temperatures; choose one")
        self.positions: torch.Tensor | None = None
        self._per_forward: dict = {}
        self._hooks: list[Any] = []
        self._attention_modules: list[nn.Module] = []
        self._previous_implementation: str | None = None
        self.rotary: nn.Module | None = None

    # -- what a method defines -------------------------------------------------------
    def remap_positions(self, positions: torch.Tensor) -> torch.Tensor | None:
        """Positions the model's rotary embedding should use, or None to keep them."""
        return None

    def attend(self, call: Call) -> torch.Tensor:
        """Attention output (b, hq, n, d) for one padding-free call."""
        raise NotImplementedError

    def temperature_option(self, config: Any) -> str | None:
        """The name of the method's own option that scales the logits, when it is on (never stacked)."""
        return None

    def prepare(
        self, module: nn.Module, query: torch.Tensor, key: torch.Tensor, groups: list[RowGroup], scale: float
    ) -> None:
        """Hook before the per-row calls of one layer (Ms-PoE uses it); nothing by default."""

    def per_forward(self, key, build):
        """``build()``, computed once per model forward for ``key`` and shared by every layer.

        ``key`` must hold everything the result depends on besides the method's parameters
        and the rotary module (positions, lengths, the device: layers may sit on different
        devices), so that a call outside a model forward is never handed another call's tensors.
        """
        if key not in self._per_forward:
            self._per_forward[key] = build()
        return self._per_forward[key]

    # -- install / remove --------------------------------------------------------------
    def install(self, model: nn.Module) -> None:
        if not getattr(type(model), "_supports_attention_backend", False):
            raise CtxextError(
                f"{type(model).__name__} does not route attention through transformers' AttentionInterface; "
                "attention-level methods cannot patch it"
            )
        rotary = find_rotary_modules(model)
        if len(rotary) != 1:
            raise CtxextError("attention-level methods need a model with a single rotary embedding module")
        self.rotary = rotary[0][2]
        if self.temperatures and float(getattr(self.rotary, "attention_scaling", 1.0)) != 1.0:
            raise CtxextError(f"{self.temperatures[0]} would stack on the rope's own attention factor; leave it off")
        attention_modules = [
            m
            for m in model.modules()
            if hasattr(m, "layer_idx") and hasattr(m, "config") and type(m).__name__.endswith("Attention")
        ]
        if not attention_modules:
            raise CtxextError(f"no attention modules found in {type(model).__name__}")
        self._previous_implementation = model.config._attn_implementation
        model.set_attn_implementation(self.implementation)
        if model.config._attn_implementation != self.implementation:
            raise CtxextError(f"{type(model).__name__} refused the attention implementation '{self.implementation}'")
        for module in attention_modules:
            module.__dict__[RUNTIME_ATTRIBUTE] = self
        self._attention_modules = attention_modules
        self._hooks.append(self.rotary.register_forward_pre_hook(self._rotary_hook, with_kwargs=True))

    def uninstall(self, model: nn.Module) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        for module in self._attention_modules:
            module.__dict__.pop(RUNTIME_ATTRIBUTE, None)
        model.set_attn_implementation(self._previous_implementation or "sdpa")

    def _rotary_hook(self, module, args, kwargs):
        if "position_ids" in kwargs:
            positions = kwargs["position_ids"]
        else:
            positions = args[1]
        self.positions = positions
        self._per_forward.clear()
        remapped = self.remap_positions(positions)
        if remapped is None:
            return None
        if "position_ids" in kwargs:
            return args, {**kwargs, "position_ids": remapped}
        return (args[0], remapped, *args[2:]), kwargs

    # -- the attention call ------------------------------------------------------------
    def forward(self, module, query, key, value, layout: KeyLayout, scale: float) -> torch.Tensor:
        groups = layout.groups(self.positions)
        self.prepare(module, query, key, groups, scale)
        batch, heads, n, dim = query.shape
        first_query = key.shape[2] - n
        whole = (
            len(groups) == 1
            and groups[0].rows == slice(0, batch)
            and groups[0].start == 0
            and groups[0].end == key.shape[2]
            and groups[0].query_start == first_query
        )
        output = None if whole else query.new_zeros(batch, heads, n, value.shape[-1])
        inv_freq = self.rotary.inv_freq
        for group in groups:
            call = Call(
                q=query[group.rows, :, group.query_start - first_query : group.end - first_query],
                k=key[group.rows, :, group.start : group.end],
                v=value[group.rows, :, group.start : group.end],
                position=group.start + group.offset,
                scale=scale,
                inv_freq=inv_freq,
                module=module,
                rows=group.rows,
            )
            if self.log_scaling:
                call.q = log_scale(call.q, call.position + call.q0, self.scaling.original_length)
            result = self.attend(call).to(query.dtype)
            if whole:
                return result
            output[group.rows, :, group.query_start - first_query : group.end - first_query] = result
        return output


def _attention_function(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    runtime = module.__dict__.get(RUNTIME_ATTRIBUTE)
    if runtime is None:
        raise CtxextError(
            "this attention implementation is set by ctxext.extend(); use it instead of setting it by hand"
        )
    for unsupported in ("sliding_window", "softcap", "s_aux"):
        if kwargs.get(unsupported) is not None:
            raise CtxextError(f"ctxext attention methods do not support {unsupported} attention")
    if dropout and module.training:
        raise CtxextError("ctxext attention methods do not support attention dropout in training")
    if not isinstance(attention_mask, KeyLayout):
        raise CtxextError("ctxext attention methods build their own masks; pass a 2D attention mask, not a 4D one")
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    output = runtime.forward(module, query, key, value, attention_mask, scale)
    return output.transpose(1, 2).contiguous(), None


def _mask_function(
    batch_size,
    q_length,
    kv_length,
    q_offset=0,
    kv_offset=0,
    mask_function=causal_mask_function,
    attention_mask=None,
    **kwargs,
):
    if mask_function is not causal_mask_function:
        raise CtxextError(
            "ctxext attention methods support plain causal masks only (no packed sequences or custom masks)"
        )
    if kv_offset:
        raise CtxextError("ctxext attention methods do not support sliding-window caches")
    return KeyLayout(attention_mask, batch_size, q_length, kv_length)


def register_implementation(name: str) -> str:
    """Register the shared attention and mask functions under ``name`` (both, so padding is honoured)."""
    AttentionInterface.register(name, _attention_function)
    AttentionMaskInterface.register(name, _mask_function)
    return name
