"""Runs in the vLLM venv (not ctxext's): what vllm.config.ModelConfig reads from each directory, one JSON line each."""

import json
import sys

import torch
from vllm.config import ModelConfig, VllmConfig, set_current_vllm_config
from vllm.model_executor.layers.rotary_embedding import get_rope


def _flat(rope):
    if isinstance(rope, dict) and rope and all(isinstance(v, dict) for v in rope.values()):
        return rope.get("full_attention") or next(iter(rope.values()))
    return rope or {}


for path in sys.argv[1:]:
    try:
        config = ModelConfig(model=path, skip_tokenizer_init=True)
    except Exception as error:  # the test compares "does not load" with ctxext's prediction
        message = f"{type(error).__name__}: {error}"[:400]
        print(json.dumps({"path": path, "loads": False, "stage": "config", "error": message}))
        continue
    hf = config.hf_config
    rope = _flat(getattr(hf, "rope_parameters", None) or getattr(hf, "rope_scaling", None))
    dual_chunk = getattr(hf, "dual_chunk_attention_config", None)
    head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
    try:  # what vLLM's Llama layers build from the config: an unknown rope type fails here
        with set_current_vllm_config(VllmConfig(model_config=config)):
            rotary = get_rope(
                head_dim,
                max_position=hf.max_position_embeddings,
                rope_parameters=rope,
                dtype=torch.float32,
                dual_chunk_attention_config=dual_chunk,
            )
    except Exception as error:
        print(
            json.dumps(
                {
                    "path": path,
                    "loads": False,
                    "stage": "rotary",
                    "dual_chunk": dual_chunk,
                    "error": f"{type(error).__name__}: {error}"[:400],
                }
            )
        )
        continue
    positions = [0, 1, 37, config.max_model_len - 1]
    cache = getattr(rotary, "cos_sin_cache", None)  # LongRoPE keeps a short and a long cache instead
    cos_sin = cache[positions].tolist() if cache is not None and cache.shape[0] >= config.max_model_len else None
    print(
        json.dumps(
            {
                "path": path,
                "loads": True,
                "max_model_len": config.max_model_len,
                "rotary": type(rotary).__name__,
                "positions": positions,
                "cos_sin": cos_sin,
                "dual_chunk": dual_chunk,
                "rope_type": rope.get("rope_type", rope.get("type", "default")),
                "factor": rope.get("factor"),
                "rope_theta": rope.get("rope_theta", getattr(hf, "rope_theta", None)),
            }
        )
    )
