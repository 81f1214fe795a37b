"""Runs in the vLLM venv (not ctxext's): what vllm.config.ModelConfig reads from each directory, one JSON line each."""

import json
import sys

from vllm.config import ModelConfig


def _flat(rope):
    if isinstance(rope, dict) and rope and all(isinstance(v, dict) for v in rope.values()):
        return rope.get("full_attention") or next(iter(rope.values()))
    return rope or {}


for path in sys.argv[1:]:
    try:
        config = ModelConfig(model=path, skip_tokenizer_init=True)
    except Exception as error:  # the test compares "does not load" with ctxext's prediction
        print(json.dumps({"path": path, "loads": False, "error": f"{type(error).__name__}: {error}"[:400]}))
        continue
    hf = config.hf_config
    rope = _flat(getattr(hf, "rope_parameters", None) or getattr(hf, "rope_scaling", None))
    print(json.dumps({"path": path, "loads": True, "max_model_len": config.max_model_len,
                      "rope_type": rope.get("rope_type", rope.get("type", "default")), "factor": rope.get("factor"),
                      "rope_theta": rope.get("rope_theta", getattr(hf, "rope_theta", None))}))
