"""Runs in the llama-cpp-python venv (not ctxext's): load each GGUF, evaluate a few tokens, one JSON line each.

llama.cpp's own reading of the rope settings is in its load log (``print_info: rope scaling = yarn``,
``freq_scale_train``, ``n_ctx_orig_yarn``, ...): the probe captures the log and returns those lines.
"""

import json
import sys

import llama_cpp

lines: list[str] = []


@llama_cpp.llama_log_callback
def _log(level, text, user_data):
    lines.append(text.decode(errors="replace"))


llama_cpp.llama_log_set(_log, None)

for path in sys.argv[1:]:
    lines.clear()
    llm = llama_cpp.Llama(model_path=path, n_ctx=256, n_threads=1, verbose=True)
    tokens = llm.tokenize(b"The pass key is 12345. Remember it. The pass key is")
    llm.eval(tokens)
    info = {}
    for line in "".join(lines).splitlines():
        if line.startswith("print_info:") and "=" in line:
            key, value = line[len("print_info:"):].split("=", 1)
            info[key.strip()] = value.strip()
    top = int(max(range(llm.n_vocab()), key=lambda i: llm.scores[len(tokens) - 1][i]))
    print(json.dumps({"path": path, "n_ctx_train": llm.n_ctx_train() if hasattr(llm, "n_ctx_train") else None,
                      "metadata": {k: v for k, v in llm.metadata.items() if ".rope." in k or "context_length" in k},
                      "print_info": info, "next_token": llm.detokenize([top]).decode(errors="replace")}))
    llm.close()
