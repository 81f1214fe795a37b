"""A stand-in for vLLM's offline API (``LLM``, ``SamplingParams``) for the engine worker's tests: put
``tests/support/fake_engine`` on the worker's PYTHONPATH and ``--backend vllm`` runs on it, without vLLM.

Its answers are a rule of the prompt, so a test can predict them: counting down from the prompt's last id, one id
per step, until a stop id or ``max_tokens``. Its log probability of prompt token k is ``-k / 100``. It prints on
stdout while it loads, as engines do, and a model path containing ``crash`` makes it die as an engine that runs
out of memory does.
"""

import os
import sys
from types import SimpleNamespace

__version__ = "0.0.fake"


class SamplingParams:
    def __init__(self, **options):
        self.__dict__.update(options)


class LLM:
    def __init__(self, model, max_model_len, dtype, **options):
        print(f"fake vLLM: loading {model}")
        if "crash" in model:
            print("fake vLLM: out of memory", file=sys.stderr, flush=True)
            os._exit(3)
        if not os.path.isfile(os.path.join(model, "config.json")):
            raise ValueError(f"{model} has no config.json")
        self.max_model_len = max_model_len

    def generate(self, prompts, params, use_tqdm=True):
        ids = prompts[0]["prompt_token_ids"]
        if len(ids) + params.max_tokens > self.max_model_len:
            raise ValueError(f"{len(ids)} prompt ids + {params.max_tokens} do not fit in {self.max_model_len}")
        out = []
        token = ids[-1]
        while len(out) < params.max_tokens:
            token -= 1
            out.append(token)
            if token in (getattr(params, "stop_token_ids", None) or ()):
                break
        scored = None
        if getattr(params, "prompt_logprobs", None) is not None:
            scored = [None] + [{t: SimpleNamespace(logprob=-k / 100)} for k, t in enumerate(ids[1:], 1)]
        return [SimpleNamespace(outputs=[SimpleNamespace(token_ids=out)], prompt_logprobs=scored)]
