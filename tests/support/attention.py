"""Tiny models under an attention-level method, and the same models under its dense reference.

``extend_tiny`` extends a fresh tiny model with a method and the parameters of its row in
``method_cases.CASES`` (or the ones given); ``dense_reference`` installs the method's dense
O(n^2) reference (``attention_reference.py``) into an unpatched tiny model. A test compares the
two models' logits. The ``block`` fixture (``conftest.py``) runs a test at two block sizes.
"""

from __future__ import annotations

import torch

import ctxext

from support import attention_reference
from support.method_cases import CASES
from support.models import make_model


def extend_tiny(family: str, method: str, params: dict | None = None, dtype=torch.float32):
    model = make_model(family, dtype=dtype)
    case = CASES[method]
    return ctxext.extend(model, method, factor=case.factor, **(case.params if params is None else params))


def dense_reference(family: str, method: str, params: dict | None = None, model=None):
    model = make_model(family) if model is None else model
    heads = getattr(model.config, "num_key_value_heads", None) or model.config.num_attention_heads
    params = {**(CASES[method].params if params is None else params), "num_kv_heads": heads}
    attention_reference.install(model, method, params)
    return model
