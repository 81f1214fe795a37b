"""The report's pictures (PNG, matplotlib's Agg backend, no display needed): the needle
heatmap (depth x length, coloured by score, one panel per method) and perplexity against
length (one line per method) with the NLL per position bucket at the longest length.
``save_png`` is the one way a figure becomes a file (bench/attention_speed.py uses it too)."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..checkpoint.atomic import atomic_write  # noqa: E402
from .lengths import format_length  # noqa: E402


def save_png(fig, path: Path) -> Path:
    """The figure as a PNG at ``path``, written atomically (never half a picture)."""
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    finally:
        plt.close(fig)
    atomic_write(path, buffer.getvalue())
    return path


def heatmap(task: str, grid: dict, lengths: list[int], path: Path) -> Path:
    """``grid``: method -> {depth -> {length -> score 0..100}}."""
    methods = list(grid)
    depths = sorted({d for rows in grid.values() for d in rows})
    fig, axes = plt.subplots(
        1,
        len(methods),
        figsize=(1.2 + 1.1 * len(lengths) * len(methods), 0.5 * len(depths) + 1.6),
        squeeze=False,
        sharey=True,
    )
    for ax, method in zip(axes[0], methods):
        cells = [[grid[method].get(d, {}).get(L, float("nan")) for L in lengths] for d in depths]
        image = ax.imshow(cells, cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
        for i, row in enumerate(cells):
            for j, value in enumerate(row):
                if value == value:
                    ax.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=8)
        ax.set_xticks(range(len(lengths)), [format_length(L) for L in lengths])
        ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths])
        ax.set_title(method)
        ax.set_xlabel("length (tokens)")
    axes[0][0].set_ylabel("needle depth")
    fig.colorbar(image, ax=axes[0].tolist(), label=f"{task} score")
    return save_png(fig, path)


def perplexity_curves(ppl: dict, native_length: int, path: Path) -> Path:
    """``ppl``: method -> {length -> {"ppl", "bucket_nll", "bucket_size", ...}}."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for method, by_length in ppl.items():
        lengths = sorted(by_length)
        left.plot(lengths, [by_length[L]["ppl"] for L in lengths], marker="o", label=method)
        longest = by_length[lengths[-1]]
        size = longest["bucket_size"]
        right.plot(
            [size * (i + 0.5) for i in range(len(longest["bucket_nll"]))],
            longest["bucket_nll"],
            marker=".",
            label=method,
        )
    for ax in (left, right):
        ax.axvline(native_length, color="grey", linestyle=":", label="native length")
        ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
    left.set(xlabel="window (tokens)", ylabel="perplexity", title="perplexity vs window length")
    right.set(
        xlabel="position in window (tokens)",
        ylabel="mean NLL",
        title=f"NLL per position, {format_length(max(max(v) for v in ppl.values()))} window",
    )
    left.legend()
    fig.tight_layout()
    return save_png(fig, path)
