"""The serving table: what each engine makes of the config.json ``patch_directory`` writes, per method.

``EXPECTED`` (method -> engine -> loads, rope type, factor, max length without flags, reproduces
the extension) is checked against ``ctxext.serving.engine_view`` by ``test_serving.py`` and
against the real engines by ``test_engines.py``; ``patch_every_method`` writes one patched
directory per row from one tiny Llama.
"""

from __future__ import annotations

import json

import ctxext
from ctxext.serving import ENGINES

from support.models import NATIVE, make_model

FACTOR = 4
TARGET = NATIVE * FACTOR
PARAMS = {"longrope": {"long_factor": 2.0}}
T5, T4, VLLM, SGL = ENGINES

# method -> engine -> (loads, rope type, factor, max length without flags, reproduces the extension)
EXPECTED = {
    "pi": {
        T5: (True, "linear", 4.0, None, True),
        T4: (True, "linear", 4.0, None, True),
        # vLLM/SGLang: max_position_embeddings (already the target) x factor: too long, hence --max-model-len
        VLLM: (True, "linear", 4.0, TARGET * FACTOR, True),
        SGL: (True, "linear", 4.0, TARGET * FACTOR, True),
    },
    "ntk": {
        T5: (True, "default", None, None, True),
        T4: (True, "default", None, None, True),
        VLLM: (True, "default", None, TARGET, True),
        SGL: (True, "default", None, TARGET, True),
    },
    "yarn": {
        T5: (True, "yarn", 4.0, None, True),
        T4: (True, "yarn", 4.0, None, True),
        VLLM: (True, "yarn", 4.0, TARGET, True),
        SGL: (True, "yarn", 4.0, TARGET, True),
    },
    "llama3": {
        T5: (True, "llama3", 4.0, None, True),
        T4: (True, "llama3", 4.0, None, True),
        VLLM: (True, "llama3", 4.0, TARGET, True),
        SGL: (True, "llama3", 4.0, TARGET, True),
    },
    "longrope": {
        T5: (True, "longrope", 4.0, None, True),
        T4: (True, "longrope", 4.0, None, True),
        # vLLM: the top-level original_max_position_embeddings (written for 4.x) unless --max-model-len asks more
        VLLM: (True, "longrope", 4.0, NATIVE, True),
        SGL: (True, "longrope", 4.0, TARGET, True),
    },
    # factor = alpha (1); vLLM's 'dynamic' is a fixed base for L x alpha = L: no extension, capped at L
    "dynamic-ntk": {
        T5: (True, "dynamic", 1.0, None, True),
        T4: (True, "dynamic", 1.0, None, True),
        VLLM: (True, "dynamic", 1.0, NATIVE, False),
        SGL: (True, "dynamic", 1.0, NATIVE, False),
    },
    # ctxext's own rope type: only ctxext.from_pretrained; transformers 4.x has no rope_scaling: plain rope, silently
    "dynamic-yarn": {
        T5: (False, None, None, None, False),
        T4: (True, "default", None, None, False),
        VLLM: (False, None, None, None, False),
        SGL: (False, None, None, None, False),
    },
    # attention-level: config.json keeps the native rope, every engine serves the model unpatched
    "dca": {
        T5: (True, "default", None, None, False),
        T4: (True, "default", None, None, False),
        VLLM: (True, "default", None, NATIVE, False),
        SGL: (True, "default", None, NATIVE, False),
    },
    "self-extend": {
        T5: (True, "default", None, None, False),
        T4: (True, "default", None, None, False),
        VLLM: (True, "default", None, NATIVE, False),
        SGL: (True, "default", None, NATIVE, False),
    },
}


def patch_every_method(root):
    """method -> (output directory, written config.json, PatchResult), all patched from one tiny Llama."""
    make_model("llama").save_pretrained(root / "tiny-llama")
    out = {}
    for method in EXPECTED:
        result = ctxext.patch_directory(
            root / "tiny-llama", method, factor=FACTOR, output=root / method, **PARAMS.get(method, {})
        )
        out[method] = (root / method, json.loads((root / method / "config.json").read_text()), result)
    return out
