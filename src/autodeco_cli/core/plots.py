"""Figures. matplotlib with the Agg backend: works headless, on clusters and in CI."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .safe_writes import staged


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path) -> Path:
    """Lay out, write (creating the folder) and close a figure."""
    plt = _pyplot()
    fig.tight_layout()
    path = Path(path)
    if not path.suffix:
        path = path.with_suffix(".png")  # what matplotlib does with a bare name
    try:
        with staged(path) as temporary:  # a full disk leaves no half image
            fig.savefig(temporary, dpi=130, format=path.suffix.lstrip("."))
    finally:
        plt.close(fig)
    return path


def plot_token_trace(trace: Sequence, path: str | Path, title: str = "AutoDeco per-token decoding") -> Path:
    """The paper's Figure-5 view: predicted T̂ and P̂ for every generated token."""
    plt = _pyplot()
    steps = list(range(len(trace)))
    fig, ax = plt.subplots(figsize=(max(6, min(18, len(trace) * 0.18)), 3.6))
    ax.plot(steps, [t.temperature for t in trace], color="tab:red", label="temperature T̂", linewidth=1.4)
    ax.plot(steps, [t.top_p for t in trace], color="tab:blue", label="top-p P̂", linewidth=1.4)
    ax.set_xlabel("generated token")
    ax.set_ylim(0, max(1.05, max((t.temperature for t in trace), default=1) * 1.05))
    if len(trace) <= 60:
        ax.set_xticks(steps)
        ax.set_xticklabels([t.token.replace("\n", "\\n") for t in trace], rotation=90, fontsize=7)
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_decoding_distribution(temperatures: Sequence[float], top_ps: Sequence[float], path: str | Path) -> Path:
    """Histograms of the per-token T̂ and P̂ the heads predicted."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    left.hist(temperatures, bins=40, range=(0, 2), color="tab:red", alpha=0.85)
    left.set_xlabel("predicted temperature T̂")
    left.set_ylabel("tokens")
    right.hist(top_ps, bins=40, range=(0, 1), color="tab:blue", alpha=0.85)
    right.set_xlabel("predicted top-p P̂")
    for ax, values in ((left, temperatures), (right, top_ps)):
        if values:
            mean = sum(values) / len(values)
            ax.axvline(mean, color="black", linestyle="--", linewidth=1)
            ax.set_title(f"mean {mean:.3f} over {len(values)} tokens", fontsize=9)
    return save_figure(fig, path)
