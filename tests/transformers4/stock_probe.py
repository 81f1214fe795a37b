"""Runs in the transformers 4.x venv (no ctxext there): what stock ``AutoModelForCausalLM.from_pretrained`` builds
from each model directory, one JSON line each: the rope type, attention scaling and cos/sin table at the given
positions of each layer type's rotary embedding. ``python stock_probe.py POSITIONS [--ctxext] DIR...``; with
``--ctxext`` (in ctxext's own venv) it loads through ``ctxext.from_pretrained`` instead: the reference."""

import inspect
import json
import logging
import sys

import torch
import transformers

positions = torch.tensor([json.loads(sys.argv[1])])
paths = sys.argv[2:]
if paths[:1] == ["--ctxext"]:
    import ctxext

    load, paths = ctxext.from_pretrained, paths[1:]
else:
    load = transformers.AutoModelForCausalLM.from_pretrained
    assert "ctxext" not in sys.modules
warnings = []
handler = logging.Handler()
handler.emit = lambda record: warnings.append(record.getMessage()[:300])
logging.getLogger("transformers").addHandler(handler)


def tables(module, layer_type=None) -> dict:
    args = () if layer_type is None else (layer_type,)
    with torch.no_grad():
        cos, sin = module(torch.zeros(1, dtype=torch.float32), positions, *args)
    rope_type = getattr(module, "rope_type", None)
    scaling = getattr(module, "attention_scaling", 1.0)
    if layer_type is not None:  # transformers 5: one module for every layer type
        rope_type, scaling = rope_type[layer_type], getattr(module, f"{layer_type}_attention_scaling", scaling)
    return {"rope_type": rope_type, "attention_scaling": float(scaling), "cos": cos[0].tolist(), "sin": sin[0].tolist()}


for path in paths:
    warnings.clear()
    try:
        model = load(path).eval()
    except Exception as error:  # the test compares "does not load" with ctxext's prediction
        message = f"{type(error).__name__}: {error}"[:400]
        print(json.dumps({"path": path, "loads": False, "error": message}))
        continue
    config = model.config
    rotary = {}  # layer type -> tables; transformers 4's Gemma 3 keeps its sliding layers' rope in rotary_emb_local
    for name, module in model.named_modules():
        if "rotary" not in type(module).__name__.lower():
            continue
        if "layer_type" in inspect.signature(module.forward).parameters:
            rotary.update({t: tables(module, t) for t in module.layer_types})
        else:
            rotary["sliding_attention" if name.endswith("_local") else "full_attention"] = tables(module)
    scaling = getattr(config, "rope_scaling", None) or {}
    print(
        json.dumps(
            {
                "path": path,
                "loads": True,
                "transformers": transformers.__version__,
                "rope_scaling": scaling,
                "rope_theta": getattr(config, "rope_theta", None),
                "rotary": rotary,
                "warnings": list(warnings),
            }
        )
    )
