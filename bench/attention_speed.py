"""Prefill time, decode latency and peak memory of the attention-level methods vs the unpatched model.

    .venv/bin/python bench/attention_speed.py --lengths 8192,16384 --device cpu
    python bench/attention_speed.py --lengths 8192,16384,32768 --device cuda --dtype bfloat16

The model has SmolLM2-135M's shape (30 layers, 9 query / 3 key-value heads, head dim 64);
weights are random unless --real (timing does not depend on them). Every method runs in its
own subprocess, so peak memory is its own: on CPU the peak resident set above the loaded
model, on CUDA the peak allocated bytes above the loaded model. Decode is the mean latency
of one token with the cache of the longest prefill. Prints a markdown table of ratios.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

METHODS = ["unpatched", "dca", "string", "self-extend", "ms-poe", "lm-infinite"]


def _model(real: bool, dtype, device):
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    import ctxext
    from ctxext.default_model import default_model_path

    if real:
        return ctxext.from_pretrained(default_model_path(), dtype=dtype).to(device).eval()
    config = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                         rope_parameters={"rope_type": "default", "rope_theta": 100000.0}, tie_word_embeddings=True)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=dtype).to(device).eval()


def _peak_bytes(device) -> int:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure(method: str, lengths: list[int], device_name: str, dtype_name: str, decode_steps: int, real: bool) -> dict:
    import torch

    import ctxext

    device, dtype = torch.device(device_name), getattr(torch, dtype_name)
    model = _model(real, dtype, device)
    if method != "unpatched":
        ctxext.extend(model, method, factor=max(1.0, max(lengths) / model.config.max_position_embeddings))

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    generator = torch.Generator().manual_seed(0)
    result = {"method": method, "prefill_s": {}, "peak_mib": {}}
    with torch.no_grad():
        model(torch.randint(0, 49152, (1, 256), generator=generator).to(device))  # warm-up
        sync()
        resident = _peak_bytes(device)
        for length in lengths:
            ids = torch.randint(0, 49152, (1, length), generator=generator).to(device)
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device) if device.type == "cuda" else resident
            start = time.perf_counter()
            out = model(ids, use_cache=True, logits_to_keep=1)
            sync()
            result["prefill_s"][length] = time.perf_counter() - start
            result["peak_mib"][length] = (_peak_bytes(device) - base) / 2**20
        past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        del out
        times = []
        for _ in range(decode_steps + 1):
            start = time.perf_counter()
            step = model(token, past_key_values=past, use_cache=True)
            sync()
            times.append(time.perf_counter() - start)
            past, token = step.past_key_values, step.logits[:, -1:].argmax(-1)
        result["decode_ms"] = 1000 * sum(times[1:]) / decode_steps
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="8192,16384")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--decode-steps", type=int, default=8)
    parser.add_argument("--real", action="store_true", help="use the SmolLM2-135M-Instruct checkpoint")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    lengths = [int(n) for n in args.lengths.split(",")]
    if args.one:
        print(json.dumps(measure(args.one, lengths, args.device, args.dtype, args.decode_steps, args.real)))
        return
    rows = []
    for method in args.methods.split(","):
        command = [sys.executable, __file__, "--one", method, "--lengths", args.lengths, "--device", args.device,
                   "--dtype", args.dtype, "--decode-steps", str(args.decode_steps)] + (["--real"] if args.real else [])
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            print(f"{method} failed:\n{done.stderr[-2000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    base = rows[0]
    header = "| method | " + " | ".join(f"prefill {n} s (ratio)" for n in lengths) + " | "
    header += " | ".join(f"peak MiB {n} (ratio)" for n in lengths) + f" | decode ms @{lengths[-1]} (ratio) |"
    print(header)
    print("|" + "---|" * (2 * len(lengths) + 2))
    for row in rows:
        cells = [f"{row['prefill_s'][str(n)]:.2f} ({row['prefill_s'][str(n)] / base['prefill_s'][str(n)]:.2f}x)"
                 for n in lengths]
        cells += [f"{row['peak_mib'][str(n)]:.0f} ({row['peak_mib'][str(n)] / max(base['peak_mib'][str(n)], 1):.2f}x)"
                  for n in lengths]
        cells.append(f"{row['decode_ms']:.1f} ({row['decode_ms'] / base['decode_ms']:.2f}x)")
        print(f"| {row['method']} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
