"""Training curves: loss and accuracy per epoch (train, validation, test) as one PNG."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

__all__ = ["plot_metrics", "pyplot", "save_figure"]


def pyplot() -> Any:
    """matplotlib.pyplot on the non-interactive Agg backend (imported on first use: matplotlib is optional)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 90) -> None:
    """Lay out ``fig``, write it as PNG to ``path`` atomically (temporary file, then ``os.replace``) and close it."""
    fig.tight_layout()
    path = os.fspath(path)
    tmp = path + ".tmp"
    fig.savefig(tmp, dpi=dpi, format="png")
    pyplot().close(fig)
    os.replace(tmp, path)


def plot_metrics(history: Sequence[dict], path: str | os.PathLike, title: str = "") -> None:
    """Write a two-panel PNG (loss, accuracy vs. epoch) of the metric rows ``history`` to ``path``, atomically."""
    plt = pyplot()
    epochs = [row["epoch"] for row in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "acc"), strict=True):
        for split in ("train", "val", "test"):
            values = [row.get(f"{split}_{metric}") for row in history]
            if any(v is not None and v == v for v in values):
                ax.plot(epochs, values, marker="o", label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy" if metric == "acc" else "cross-entropy loss")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    save_figure(fig, path, dpi=100)
