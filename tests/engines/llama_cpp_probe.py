"""Runs in the llama-cpp-python venv (not ctxext's): load each GGUF, answer a short passkey prompt, one JSON line each.

llama.cpp's own reading of the rope settings is in its load log (``print_info: rope scaling = yarn``,
``freq_scale_train``, ``n_ctx_orig_yarn``, ...): the probe captures the log and returns those lines.
"""

import json
import sys

import llama_cpp

PROMPT = (
    "There is a pass key hidden in this text. The pass key is 71432. Remember it. 71432 is the pass key. "
    + "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. " * 8
    + "What is the pass key? The pass key is"
)
lines: list[str] = []


@llama_cpp.llama_log_callback
def _log(level, text, user_data):
    lines.append(text.decode(errors="replace"))


llama_cpp.llama_log_set(_log, None)

for path in sys.argv[1:]:
    lines.clear()
    llm = llama_cpp.Llama(model_path=path, n_ctx=512, n_threads=1, verbose=True)
    answer = llm.create_completion(PROMPT, max_tokens=8, temperature=0.0)["choices"][0]["text"]
    info = {}
    for line in "".join(lines).splitlines():
        if line.startswith("print_info:") and "=" in line:
            key, value = line[len("print_info:") :].split("=", 1)
            info[key.strip()] = value.strip()
    print(
        json.dumps(
            {
                "path": path,
                "print_info": info,
                "answer": answer,
                "metadata": {k: v for k, v in llm.metadata.items() if ".rope." in k or "context_length" in k},
            }
        )
    )
    llm.close()
