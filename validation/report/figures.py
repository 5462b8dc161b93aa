"""The report's figures (PNG, matplotlib with the Agg backend): gradient error against the eigen-gap and the condition
number, the kernel approximations of 1/(1 - x), and a heat map of every method over every family."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .cases import REFERENCES
from .iccv import original_pade, pade_kernel, taylor_kernel

__all__ = ["plot_heatmap", "plot_kernels", "plot_sweep"]

#: The methods drawn in the sweep plots, besides the exact gradient in float64 and float32.
PLOT_METHODS = ["taylor K=10", "taylor K=100", "pade", "clip", "power_iteration", "Newton-Schulz T=5",
                "Newton-Schulz T=10", "SEB pade"]
#: Errors below this (0 included) are drawn at it, on the log axes.
FLOOR = 1e-17


def _pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (imported on first use: the report's only user)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_sweep(results: dict, sweep: str, path: Path, title: str, xlabel: str, mp_d: int) -> None:
    """Gradient error of every method over the families of one ``sweep`` ("gap" or "condition")."""
    plt = _pyplot()
    fams = [f for f in results["families"] if f["sweep"] == sweep]
    xs = [f["value"] for f in fams]
    fig, ax = plt.subplots(figsize=(9.5, 4.8), dpi=110)
    ref = {r["family"]: r for r in results["reference"]}
    ax.plot(xs, [max(ref[f["key"]]["gradient"], FLOOR) if f["key"] in ref else np.nan for f in fams], "k-o", lw=2.2,
            label=f"exact, float64 (vs mpmath, d = {mp_d})")
    ax.plot(xs, [max(results["methods"]["exact (float32)"][f["key"]]["gradient"], FLOOR) for f in fams], "k--s",
            label="exact, computed in float32")
    markers = "v^<>dph*"
    for k, name in enumerate(PLOT_METHODS):
        ys = [max(results["methods"][f"{name} (float64)"][f["key"]]["gradient"], FLOOR) for f in fams]
        ax.plot(xs, ys, marker=markers[k % len(markers)], label=f"{name}, float64")
    ax.set_xscale("log")
    ax.set_yscale("log")
    if sweep == "gap":
        ax.invert_xaxis()
    ax.set_xlabel(xlabel)
    ax.set_ylabel("relative gradient error (max over samples)")
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_kernels(kernel: dict, path: Path) -> None:
    """Relative error of the Taylor-100, original Pade [50/50] and eigpool pade kernels, with the paper's points."""
    plt = _pyplot()
    xs = 1 - np.geomspace(0.9, 1e-4, 200)
    exact = 1 / (1 - xs)
    p, q = original_pade()
    pf, qf = np.array([float(c) for c in p]), np.array([float(c) for c in q])
    taylor = np.array([taylor_kernel(x) for x in xs])
    pade50 = np.polyval(pf[::-1], xs) / np.polyval(qf[::-1], xs)
    ours = np.array([pade_kernel(x) for x in xs])
    fig, ax = plt.subplots(figsize=(7.5, 4.6), dpi=110)
    ax.loglog(1 - xs, np.maximum(np.abs(taylor - exact) / exact, FLOOR), label="Taylor, degree 100 (eigpool 'taylor')")
    ax.loglog(1 - xs, np.maximum(np.abs(pade50 - exact) / exact, FLOOR),
              label="original Pade [50/50] (mpmath.pade, evaluated in float64)")
    ax.loglog(1 - xs, np.abs(ours - exact) / exact, label="eigpool 'pade' (order 2, delta 1e-3)")
    for row in kernel["rows"]:
        if row["paper_taylor"] is not None:
            ax.plot(1 - row["x"], row["paper_taylor"] / row["exact"], "kx")
            ax.plot(1 - row["x"], row["paper_pade"] / row["exact"], "k+")
    ax.plot([], [], "kx", label="ICCV 2021 Table 3, Taylor")
    ax.plot([], [], "k+", label="ICCV 2021 Table 3, Pade")
    ax.set_xlabel("relative eigen-gap 1 - x = (l_i - l_j) / l_i")
    ax.set_ylabel("relative error of the kernel vs 1/(1 - x)")
    ax.set_title("Kernel approximations of 1/(1 - x)")
    ax.invert_xaxis()
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_heatmap(results: dict, path: Path) -> None:
    """log10 gradient error of every non-reference variant (rows) over every family (columns)."""
    plt = _pyplot()
    keys = [k for k in results["methods"] if k not in REFERENCES]
    fams = results["families"]
    data = np.array([[results["methods"][k][f["key"]]["gradient"] for f in fams] for k in keys])
    logs = np.log10(np.maximum(np.nan_to_num(data, nan=1e3, posinf=1e3), FLOOR))
    fig, ax = plt.subplots(figsize=(3.6 + 0.55 * len(fams), 1.2 + 0.3 * len(keys)), dpi=110)
    im = ax.imshow(logs, cmap="viridis_r", vmin=-16, vmax=1, aspect="auto")
    ax.set_xticks(range(len(fams)), [f["short"] for f in fams], rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(len(keys)), keys, fontsize=8)
    for i in range(len(keys)):
        for j in range(len(fams)):
            ax.text(j, i, f"{round(float(logs[i, j])):d}", ha="center", va="center", fontsize=6.5,
                    color="white" if logs[i, j] < -8 else "black")
    fig.colorbar(im, ax=ax, label="log10 relative gradient error")
    ax.set_title("Gradient error vs the exact float64 gradient\n(sqrtm; SEB rows: SEB)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
