"""Prefill time, decode latency and peak memory of the attention-level methods vs the unpatched model.

    .venv/bin/python bench/attention_speed.py --lengths 8192,16384 --device cpu
    python bench/attention_speed.py --lengths 8192,16384,32768 --device cuda --dtype bfloat16
    .venv/bin/python bench/attention_speed.py --sweep 1024,2048,4096,8192 --out docs/attention-cost-cpu

The model has SmolLM2-135M's shape (30 layers, 9 query / 3 key-value heads, head dim 64);
weights are random unless --real (timing does not depend on them). Every method runs in its
own subprocess. Peak memory is that of one prefill above what was in use just before it:
on CPU the peak resident set (Linux: freed heap handed back with malloc_trim, then the
high-water mark VmHWM reset through /proc/self/clear_refs), on CUDA the peak allocated
bytes. Decode is the mean latency of one token with the cache of the longest prefill, or
with --decode-only a cache of random keys and values as long as the longest length and no
prefill (decode time does not depend on the cached values). Prints a markdown table of ratios.

``--sweep`` measures prefill time and peak memory only (no decode) at each of its lengths
and writes OUT.png (log-log, time and memory against length, one line per method), OUT.json
and OUT.md (one row per method and length, with ratios against unpatched).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import re
import subprocess
import sys
import time
from pathlib import Path

METHODS = ["unpatched", "dca", "string", "self-extend", "ms-poe", "lm-infinite"]


def _model(real: bool, dtype, device, layers: int):
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    import ctxext
    from ctxext.checkpoint.default_model import default_model_path

    if real:
        return ctxext.from_pretrained(default_model_path(), dtype=dtype).to(device).eval()
    config = LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=layers,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=8192,
        rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=dtype).to(device).eval()


def _process_kib(field: str) -> int:
    return int(re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1))


def _start_peak(device) -> int:
    """Restart the peak count; returns the bytes in use now, the baseline of the next peak."""
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    ctypes.CDLL(None).malloc_trim(0)  # else the next prefill could reuse freed pages the peak never sees
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    return _process_kib("VmRSS") * 1024


def _peak_bytes(device) -> int:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return _process_kib("VmHWM") * 1024


def _random_cache(model, length: int, generator, device):
    """A KV cache of ``length`` random keys and values per layer, as a prefill would leave it."""
    import torch
    from transformers import DynamicCache

    config = model.config
    shape = (1, config.num_key_value_heads, length, config.hidden_size // config.num_attention_heads)
    cache = DynamicCache(config=config)
    for layer in range(config.num_hidden_layers):
        key, value = (torch.randn(shape, generator=generator, dtype=model.dtype).to(device) for _ in range(2))
        cache.update(key, value, layer)
    return cache


def measure(
    method: str,
    lengths: list[int],
    device_name: str,
    dtype_name: str,
    decode_steps: int,
    real: bool,
    layers: int,
    decode_only: bool = False,
) -> dict:
    import torch

    import ctxext

    device, dtype = torch.device(device_name), getattr(torch, dtype_name)
    model = _model(real, dtype, device, layers)
    name, params = method_spec(method)
    if name != "unpatched":
        ctxext.extend(model, name, factor=max(1.0, max(lengths) / model.config.max_position_embeddings), **params)
    generator = torch.Generator().manual_seed(0)
    result = {"method": method, "threads": torch.get_num_threads(), "prefill_s": {}, "peak_mib": {}}
    with torch.no_grad():
        model(torch.randint(0, 49152, (1, 256), generator=generator).to(device))  # warm-up
        _sync(device)
        out = None
        for length in [] if decode_only else lengths:
            ids = torch.randint(0, 49152, (1, length), generator=generator).to(device)
            out = None  # the previous prefill's cache is not part of this one's baseline
            base = _start_peak(device)
            start = time.perf_counter()
            out = model(ids, use_cache=True, logits_to_keep=1)
            _sync(device)
            result["prefill_s"][length] = time.perf_counter() - start
            result["peak_mib"][length] = (_peak_bytes(device) - base) / 2**20
        if decode_steps:
            if decode_only:
                past = _random_cache(model, max(lengths), generator, device)
                token = torch.randint(0, 49152, (1, 1), generator=generator).to(device)
            else:
                past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
            del out
            result["decode_ms"] = _decode_ms(model, past, token, decode_steps, device)
    return result


def method_spec(text: str) -> tuple[str, dict]:
    """``"lm-infinite@window=4096+top_k=5"`` -> ("lm-infinite", {"window": 4096, "top_k": 5})."""
    name, _, rest = text.partition("@")
    params = {}
    for item in filter(None, rest.split("+")):
        key, _, value = item.partition("=")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    return name, params


def combine_rounds(rounds: list[dict]) -> dict:
    """One method's rows from several rounds: the fastest prefill and decode of each, the first round's peak."""
    row = dict(rounds[0], rounds=len(rounds))
    row["prefill_s"] = {n: min(r["prefill_s"][n] for r in rounds) for n in rounds[0]["prefill_s"]}
    if "decode_ms" in row:
        row["decode_ms"] = min(r["decode_ms"] for r in rounds)
    return row


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _decode_ms(model, past, token, steps: int, device) -> float:
    """Mean latency of one greedy token over ``steps`` tokens, after one untimed token."""
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        step = model(token, past_key_values=past, use_cache=True)
        _sync(device)
        times.append(time.perf_counter() - start)
        past, token = step.past_key_values, step.logits[:, -1:].argmax(-1)
    return 1000 * sum(times[1:]) / steps


def _run_method(method: str, lengths: str, args, decode_steps: int) -> dict | None:
    """``measure`` in a fresh process (its own peak memory); None when it failed."""
    command = [
        sys.executable,
        __file__,
        "--one",
        method,
        "--lengths",
        lengths,
        "--device",
        args.device,
        "--dtype",
        args.dtype,
        "--decode-steps",
        str(decode_steps),
        "--layers",
        str(args.layers),
    ]
    command += (["--real"] if args.real else []) + (["--decode-only"] if args.decode_only else [])
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        print(f"{method} failed:\n{done.stderr[-2000:]}", file=sys.stderr)
        return None
    row = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


def ratio_table(rows: list[dict], lengths: list[int]) -> str:
    """Prefill, peak memory (when measured) and decode per method, with ratios against the first row."""
    base = rows[0]
    prefilled = lengths if base["prefill_s"] else []
    decoded = "decode_ms" in base
    columns = ["method"] + [f"prefill {n} s (ratio)" for n in prefilled] + [f"peak MiB {n} (ratio)" for n in prefilled]
    columns += [f"decode ms @{lengths[-1]} (ratio)"] if decoded else []
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [
            f"{row['prefill_s'][str(n)]:.2f} ({row['prefill_s'][str(n)] / base['prefill_s'][str(n)]:.2f}x)"
            for n in prefilled
        ]
        cells += [
            f"{row['peak_mib'][str(n)]:.0f} ({row['peak_mib'][str(n)] / max(base['peak_mib'][str(n)], 1):.2f}x)"
            for n in prefilled
        ]
        if decoded:
            cells.append(f"{row['decode_ms']:.1f} ({row['decode_ms'] / base['decode_ms']:.2f}x)")
        lines.append(f"| {row['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sweep_points(rows: list[dict], lengths: list[int]) -> list[dict]:
    """One point per method and length, with ratios against the unpatched row."""
    base = next(row for row in rows if row["method"] == "unpatched")
    points = []
    for row in rows:
        for n in lengths:
            seconds, mib = row["prefill_s"][str(n)], row["peak_mib"][str(n)]
            points.append(
                {
                    "method": row["method"],
                    "length": n,
                    "prefill_s": seconds,
                    "peak_mib": mib,
                    "prefill_ratio": seconds / base["prefill_s"][str(n)],
                    "peak_ratio": mib / max(base["peak_mib"][str(n)], 1),
                }
            )
    return points


def sweep_markdown(points: list[dict]) -> str:
    lines = ["| method | length | prefill s (ratio) | peak MiB (ratio) |", "|---|---|---|---|"]
    lines += [
        f"| {p['method']} | {p['length']} | {p['prefill_s']:.2f} ({p['prefill_ratio']:.2f}x) "
        f"| {p['peak_mib']:.0f} ({p['peak_ratio']:.2f}x) |"
        for p in points
    ]
    return "\n".join(lines) + "\n"


def sweep_plot(points: list[dict], title: str, path: Path) -> Path:
    """Prefill time and peak memory against length, log-log, unpatched drawn as the black reference."""
    from ctxext.eval import plots
    from ctxext.eval.lengths import format_length

    fig, axes = plots.plt.subplots(1, 2, figsize=(11, 4.2))
    methods = list(dict.fromkeys(p["method"] for p in points))
    lengths = sorted({p["length"] for p in points})
    for ax, key, label in zip(
        axes, ("prefill_s", "peak_mib"), ("prefill time (s)", "peak memory above the model (MiB)")
    ):
        for method in methods:
            mine = [p for p in points if p["method"] == method]
            style = {"color": "black", "linestyle": "--", "linewidth": 2} if method == "unpatched" else {}
            values = [max(p[key], 1e-3) for p in mine]  # a log axis cannot show a peak of 0 MiB
            ax.plot([p["length"] for p in mine], values, marker="o", label=method, **style)
        ax.set_xscale("log", base=2)
        ax.set_xticks(lengths, [format_length(n) for n in lengths])
        ax.minorticks_off()
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
        ax.set(xlabel="prefill length (tokens)", ylabel=label)
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    return plots.save_png(fig, path)


def write_sweep(rows: list[dict], lengths: list[int], out: Path, setup: str) -> list[Path]:
    """OUT.png, OUT.json and OUT.md of a sweep."""
    from ctxext.checkpoint.atomic import atomic_write

    points = sweep_points(rows, lengths)
    out.parent.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out.with_suffix(".json"), out.with_suffix(".md")
    atomic_write(json_path, (json.dumps({"setup": setup, "points": points}, indent=1) + "\n").encode())
    atomic_write(md_path, f"{setup}\n\n{sweep_markdown(points)}".encode())
    return [sweep_plot(points, setup, out.with_suffix(".png")), json_path, md_path]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="8192,16384")
    parser.add_argument(
        "--methods",
        default=",".join(METHODS),
        help="comma-separated; parameters after @, joined by +: lm-infinite@window=4096+top_k=5",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run every method this many times, round-robin, and keep each one's fastest times",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--decode-steps", type=int, default=8)
    parser.add_argument("--real", action="store_true", help="use the SmolLM2-135M-Instruct checkpoint")
    parser.add_argument(
        "--decode-only",
        action="store_true",
        help="no prefill: decode with a random cache as long as the longest length",
    )
    parser.add_argument("--layers", type=int, default=30, help="decoder layers of the random model (default 30)")
    parser.add_argument("--sweep", metavar="LENGTHS", help="prefill time and peak memory at these lengths, no decode")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("docs/attention-cost"),
        help="where --sweep writes OUT.png, OUT.json, OUT.md (default docs/attention-cost)",
    )
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sweep and args.decode_only:
        parser.error("--sweep measures prefills only; --decode-only measures decoding only")
    if args.one:
        lengths = [int(n) for n in args.lengths.split(",")]
        print(
            json.dumps(
                measure(
                    args.one,
                    lengths,
                    args.device,
                    args.dtype,
                    args.decode_steps,
                    args.real,
                    args.layers,
                    args.decode_only,
                )
            )
        )
        return
    methods = args.methods.split(",")
    if args.sweep:
        methods = ["unpatched"] + [m for m in methods if m != "unpatched"]
    lengths_text = args.sweep or args.lengths
    lengths = [int(n) for n in lengths_text.split(",")]
    measured: dict[str, list[dict]] = {}
    for _ in range(args.rounds):
        for method in methods:
            row = _run_method(method, lengths_text, args, 0 if args.sweep else args.decode_steps)
            if row:
                measured.setdefault(method, []).append(row)
    rows = [combine_rounds(rounds) for rounds in measured.values()]
    if not args.sweep:
        print(ratio_table(rows, lengths))
        return
    setup = (
        f"{args.device}, {args.dtype}, {rows[0]['threads']} thread(s), {args.layers} layers, "
        f"{'real' if args.real else 'random'} weights, fastest of {args.rounds} round(s)"
    )
    for path in write_sweep(rows, lengths, args.out, setup):
        print(path)


if __name__ == "__main__":
    main()
