"""``python -m eigpool.models.compare``: pooling heads trained with equal budgets over seeds, mean and spread.

Every (setting, head, seed) run is the synthetic preset (tiny ResNet, data, epochs, learning-rate schedule, clipping,
one CPU thread) with the setting's data and the head's options; only the head and the seed vary. The table gives,
per setting and head, the final test accuracy over the seeds as mean, sample standard deviation and range, and the
gradient and spectrum statistics the training loop records (engine.py): the mean over epochs and seeds of the
gradient norms of backbone and head, the fraction of steps that clipping scaled, and the effective rank and the
number of near-zero eigenvalues of the covariance at the last epoch. ``runs.csv`` in the output folder holds every
run; a finished run is reused and an unfinished one resumed, so an interrupted comparison continues where it
stopped. ``--jobs N`` trains N runs at once (one process and one thread each). ``--figures DIR`` writes the curves of
the spectrum and of the gradient norms over training (mean over seeds) for each setting, and the heads' scalar maps
with their slopes.

Settings (data): standard-200 / small-200 (the two embedded variants, 200 training images per class) and
standard-50 / small-50 (50 per class). Heads:

    avg                  global average pooling (first order)
    gcp-exact            eigendecomposition square root, exact (Loewner) gradient
    gcp-ns               Newton-Schulz square root (5 iterations), its own backward
    gcp-ns-spectral      the Newton-Schulz scalar map of 5 iterations as an exact spectral function,
                         sqrt(tr S) p5(S / tr S) by eigendecomposition (function ns_polynomial)
    gcp-shifted          (S + e I)^(1/2) - sqrt(e) I, e = 0.1 tr(S)/d (function shifted_sqrt): a square root
                         with the bounded slope 1 / (2 sqrt(e)) at 0, exact gradient
    gcp-shifted-0.01     the same with e = 0.01 tr(S)/d
    gcp-shifted-1        the same with e = tr(S)/d
    gcp-pade             exact square root, SVD-Pade eigenvector kernel (grad pade)
    gcp-taylor           exact square root, SVD-Taylor eigenvector kernel (grad taylor)
    gcp-trunc            exact square root with the 8 smallest of 32 eigenvalues set to zero
    gcp-seb              exact square root with the scaling eigen branch
    gcp-seb-lr           the same at learning rate 0.01
    gcp-hybrid           Newton-Schulz, then the exact eigen method for the last learning-rate stage
    gcp-exact-noclip     gcp-exact without gradient clipping
    gcp-exact-clip-groups  gcp-exact, clipping backbone, head and classifier each to its own norm
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from typing import Any

from .config import Config, load_preset, parse_yaml
from .errors import SettingsError

__all__ = ["DEFAULT_HEADS", "DEFAULT_SEEDS", "HEAD_SETTINGS", "SETTINGS", "aggregate", "main", "markdown_table",
           "plot_scalar_maps", "run_config"]

#: The data of each setting, on top of the synthetic preset.
SETTINGS: dict[str, dict[str, Any]] = {
    "standard-200": {"variant": "standard"},
    "small-200": {"variant": "small"},
    "standard-50": {"variant": "standard", "synthetic_train": 50},
    "small-50": {"variant": "small", "synthetic_train": 50},
}
#: The seeds of each setting without ``--seeds``: 3 with 200 images per class, 5 with 50 (four times cheaper runs,
#: and a larger spread over seeds).
DEFAULT_SEEDS = {"standard-200": (0, 1, 2), "small-200": (0, 1, 2), "standard-50": (0, 1, 2, 3, 4),
                 "small-50": (0, 1, 2, 3, 4)}

HEAD_SETTINGS: dict[str, dict[str, Any]] = {
    "avg": {"head": "avg"},
    "gcp-exact": {"head": "gcp", "method": "eigen", "function": "sqrt"},
    "gcp-ns": {"head": "gcp", "method": "newton_schulz"},
    "gcp-ns-spectral": {"head": "gcp", "method": "eigen", "function": "ns_polynomial"},
    "gcp-shifted": {"head": "gcp", "method": "eigen", "function": "shifted_sqrt", "shift": 0.1},
    "gcp-shifted-0.01": {"head": "gcp", "method": "eigen", "function": "shifted_sqrt", "shift": 0.01},
    "gcp-shifted-1": {"head": "gcp", "method": "eigen", "function": "shifted_sqrt", "shift": 1.0},
    "gcp-pade": {"head": "gcp", "method": "eigen", "function": "sqrt", "grad": "pade"},
    "gcp-taylor": {"head": "gcp", "method": "eigen", "function": "sqrt", "grad": "taylor"},
    "gcp-trunc": {"head": "gcp", "method": "eigen", "function": "sqrt", "truncate": 8},
    "gcp-seb": {"head": "gcp", "method": "eigen", "function": "sqrt", "seb": True},
    "gcp-seb-lr": {"head": "gcp", "method": "eigen", "function": "sqrt", "seb": True, "lr": 0.01},
    "gcp-hybrid": {"head": "gcp", "method": "eigen", "function": "sqrt", "hybrid": True},
    "gcp-exact-noclip": {"head": "gcp", "method": "eigen", "function": "sqrt", "clip_grad_norm": None},
    "gcp-exact-clip-groups": {"head": "gcp", "method": "eigen", "function": "sqrt",
                              "clip_scope": "groups"},
}

#: The heads of the study in docs/models.md (the default of ``--heads``).
DEFAULT_HEADS = ("avg", "gcp-exact", "gcp-ns", "gcp-ns-spectral", "gcp-shifted-0.01", "gcp-shifted", "gcp-shifted-1",
                 "gcp-pade", "gcp-taylor", "gcp-trunc", "gcp-seb-lr", "gcp-hybrid")

#: Per-run summary columns of runs.csv.
RUN_COLUMNS = ("setting", "head", "seed", "final_test_acc", "best_val_test_acc", "grad_norm_backbone",
               "grad_norm_head", "clip_fraction", "spectrum_eff_rank", "spectrum_small", "images_per_s", "run_dir")


def run_config(setting: str, head: str, seed: int, common: dict[str, Any]) -> Config:
    """The validated Config of one run: the synthetic preset, ``common``, the setting's data, the head, the seed."""
    settings = load_preset("synthetic") | {"progress": False} | common | SETTINGS[setting] | HEAD_SETTINGS[head]
    return Config(**settings, seed=seed, name=f"{setting}-{head}-s{seed}").validate()


#: Settings of the GCP head and of its eigen method, which the average-pooling head (and Newton-Schulz) do not read.
_GCP_KEYS = ("method", "grad", "function", "shift", "seb", "truncate", "iterations", "reduction", "compute_dtype",
             "hybrid")
_EIGEN_KEYS = ("grad", "function", "shift", "seb", "truncate")


def _effective(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings that shape a run: without those its head does not read (a run is reused when these agree)."""
    unused = set()
    if settings.get("head") == "avg":
        unused |= set(_GCP_KEYS)
    elif settings.get("method") == "newton_schulz" and not settings.get("hybrid"):
        unused |= set(_EIGEN_KEYS)
    if settings.get("seb"):
        unused |= {"function", "shift"}  # SEB's function is sqrt
    elif settings.get("function") != "shifted_sqrt":
        unused.add("shift")
    return {k: v for k, v in settings.items() if k not in unused}


def _check_existing(config: Config) -> None:
    """Raise SettingsError when the run folder of ``config`` holds a run with other settings (it would be reused)."""
    from .checkpoint import load_checkpoint  # noqa: PLC0415
    from .config import RESUMABLE  # noqa: PLC0415

    last = os.path.join(config.out_dir, config.name, "last.pt")
    if not os.path.isfile(last):
        return
    saved, wanted = _effective(load_checkpoint(last)["config"]), _effective(config.to_dict())
    differ = sorted(k for k in wanted.keys() | saved.keys()
                    if k not in RESUMABLE and k not in ("name", "out_dir") and saved.get(k) != wanted.get(k))
    if differ:
        raise SettingsError(f"compare: {os.path.dirname(last)!r} holds a run with other settings ({differ}): use "
                            "another --out-dir, or remove that folder")


def _mean(rows: Sequence[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return sum(values) / len(values) if values else None


def _run(config: Config) -> dict[str, Any]:
    """Train (or reuse, or resume) one run in this process; its summary row."""
    from .checkpoint import load_checkpoint  # noqa: PLC0415
    from .engine import TrainingDiverged  # noqa: PLC0415
    from .study import train_model  # noqa: PLC0415 (torch is imported in the worker, not by the parent's parser)

    if config.threads:
        import torch  # noqa: PLC0415

        torch.set_num_threads(config.threads)
    try:
        run_dir = train_model(config)
    except TrainingDiverged as err:
        print(f"compare: {config.name} diverged: {err}", file=sys.stderr, flush=True)
        return {"final_test_acc": None, "run_dir": os.path.join(config.out_dir, config.name), "history": []}
    history = load_checkpoint(os.path.join(run_dir, "last.pt"))["history"]
    best = max(history, key=lambda r: r["val_acc"] if r["val_acc"] is not None else -1.0)
    last = history[-1]
    return {"final_test_acc": last["test_acc"], "best_val_test_acc": best["test_acc"],
            "grad_norm_backbone": _mean(history, "grad_norm_backbone"),
            "grad_norm_head": _mean(history, "grad_norm_head"),
            "clip_fraction": _mean(history, "clip_fraction"), "spectrum_eff_rank": last.get("spectrum_eff_rank"),
            "spectrum_small": last.get("spectrum_small"), "images_per_s": _mean(history, "images_per_s"),
            "run_dir": run_dir, "history": history}


def aggregate(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (setting, head), in order of appearance: n, the final test accuracy's mean, sample standard
    deviation (0 for one seed), min and max, and the means of the diagnostics."""
    cells: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        cells.setdefault((row["setting"], row["head"]), []).append(row)
    out = []
    for (setting, head), runs in cells.items():
        acc = [r["final_test_acc"] for r in runs if r["final_test_acc"] is not None]
        if not acc:
            out.append({"setting": setting, "head": head, "n": 0, "diverged": len(runs)})
            continue
        mean = sum(acc) / len(acc)
        std = math.sqrt(sum((a - mean) ** 2 for a in acc) / (len(acc) - 1)) if len(acc) > 1 else 0.0
        out.append({"setting": setting, "head": head, "n": len(acc), "diverged": len(runs) - len(acc),
                    "mean": mean, "std": std, "min": min(acc),
                    "max": max(acc), **{k: _mean(runs, k) for k in ("grad_norm_backbone", "grad_norm_head",
                                                                     "clip_fraction", "spectrum_eff_rank",
                                                                     "spectrum_small")}})
    return out


def _fmt(value: float | None, spec: str) -> str:
    return "" if value is None else format(value, spec)


def markdown_table(cells: Sequence[dict[str, Any]]) -> str:
    """The aggregated cells as a Markdown table."""
    lines = ["| setting | head | seeds | test acc mean | std | min - max | grad norm backbone | grad norm head | "
             "clipped steps | eff. rank of S | eigenvalues < 1e-2 mean |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in cells:
        seeds = f"{c['n']}" + (f" (+{c['diverged']} diverged)" if c["diverged"] else "")
        if not c["n"]:
            lines.append(f"| {c['setting']} | {c['head']} | {seeds} |" + " |" * 8)
            continue
        lines.append(f"| {c['setting']} | {c['head']} | {seeds} | {c['mean']:.3f} | {c['std']:.3f} | "
                     f"{c['min']:.3f} - {c['max']:.3f} | {_fmt(c['grad_norm_backbone'], '.3f')} | "
                     f"{_fmt(c['grad_norm_head'], '.3f')} | {_fmt(c['clip_fraction'], '.2f')} | "
                     f"{_fmt(c['spectrum_eff_rank'], '.1f')} | {_fmt(c['spectrum_small'], '.1f')} |")
    return "\n".join(lines)


def _plot(rows: Sequence[dict[str, Any]], setting: str, path: str) -> None:
    """Effective rank of S, backbone gradient norm and test accuracy over the epochs, mean over seeds, per head."""
    from .plots import pyplot, save_figure  # noqa: PLC0415

    fig, axes = pyplot().subplots(1, 3, figsize=(13, 3.6))
    heads = list(dict.fromkeys(r["head"] for r in rows if r["setting"] == setting))
    for head in heads:
        runs = [r["history"] for r in rows if r["setting"] == setting and r["head"] == head and r["history"]]
        if not runs:
            continue
        epochs = range(1, min(len(h) for h in runs) + 1)
        for ax, key in zip(axes, ("spectrum_eff_rank", "grad_norm_backbone", "test_acc"), strict=True):
            values = [[h[e - 1].get(key) for h in runs] for e in epochs]
            if all(v is not None for vs in values for v in vs):
                ax.plot(list(epochs), [sum(vs) / len(vs) for vs in values], marker=".", label=head)
    for ax, label in zip(axes, ("effective rank of S (probe batch)", "backbone gradient norm", "test accuracy"),
                         strict=True):
        ax.set(xlabel="epoch", ylabel=label)
        ax.grid(alpha=0.3)
    axes[1].set_yscale("log")
    axes[2].legend(fontsize=7)
    fig.suptitle(f"{setting}: mean over seeds", fontsize=10)
    save_figure(fig, path)


def plot_scalar_maps(path: str, d: int = 32) -> None:
    """The scalar maps of the heads on the normalised eigenvalue a = l / tr(S) (value and slope, with tr(S)
    scaled out), over l from 0 to 3 times the mean eigenvalue tr(S) / d: the square root, the Newton-Schulz map of 5
    steps and the shifted roots."""
    import numpy as np  # noqa: PLC0415

    import eigpool  # noqa: PLC0415

    from .plots import pyplot, save_figure  # noqa: PLC0415

    x = np.linspace(0.0, 3.0, 601)[1:]  # l in units of the mean eigenvalue
    a = x / d
    maps = {"sqrt (gcp-exact)": (np.sqrt(a), 0.5 / np.sqrt(a)),
            "Newton-Schulz, 5 steps (gcp-ns)": (eigpool.ns_polynomial(5).f(np, a), eigpool.ns_polynomial(5).df(np, a))}
    for shift in (0.01, 0.1, 1.0):
        fn = eigpool.shifted_sqrt(shift / d)
        maps[f"shifted sqrt, e = {shift:g} tr(S)/d"] = (fn.f(np, a), fn.df(np, a))
    fig, axes = pyplot().subplots(1, 2, figsize=(10, 3.6))
    for label, (value, slope) in maps.items():
        axes[0].plot(x, value, label=label)
        axes[1].plot(x, slope, label=label)
    axes[0].set(xlabel="eigenvalue / mean eigenvalue", ylabel="f(l / tr S)")
    axes[1].set(xlabel="eigenvalue / mean eigenvalue", ylabel="slope f'(l / tr S)", yscale="log")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.suptitle(f"the heads' scalar maps (d = {d}; F = sqrt(tr S) U f(L / tr S) U^T)", fontsize=10)
    save_figure(fig, path)


def _write_runs(path: str, rows: Sequence[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=RUN_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and print the table; returns the exit status (2 for a bad setting)."""
    parser = argparse.ArgumentParser(prog="python -m eigpool.models.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--heads", nargs="+", default=list(DEFAULT_HEADS), choices=list(HEAD_SETTINGS))
    parser.add_argument("--seeds", nargs="+", type=int,
                        help="training seeds of every setting (default: 0 1 2 with 200 images per class, 0 1 2 3 4 "
                             "with 50)")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at once, one process each (default 1)")
    parser.add_argument("--out-dir", default="runs/compare")
    parser.add_argument("--figures", help="write <setting>_training.png curves to this folder")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="settings for every run on top of the synthetic preset (YAML values)")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    common: dict[str, Any] = {"out_dir": args.out_dir}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set takes KEY=VALUE items, got {item!r}")
        common[key.replace("-", "_")] = parse_yaml(value, f"--set {key}")
    jobs = [(s, h, seed) for s in args.settings for h in args.heads for seed in args.seeds or DEFAULT_SEEDS[s]]
    try:
        configs = {job: run_config(*job, common) for job in jobs}
        for config in configs.values():
            _check_existing(config)
    except (SettingsError, TypeError) as err:
        print(f"compare: error: {err}", file=sys.stderr)
        return 2
    os.makedirs(args.out_dir, exist_ok=True)
    results: dict[tuple, dict[str, Any]] = {}
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(_run, configs[job]): job for job in jobs}
        for done, future in enumerate(as_completed(futures), 1):
            job = futures[future]
            results[job] = {"setting": job[0], "head": job[1], "seed": job[2], **future.result()}
            print(f"[{done}/{len(jobs)}] {job[0]} {job[1]} seed {job[2]}: final test accuracy "
                  f"{results[job]['final_test_acc']:.4f}", file=sys.stderr, flush=True)
    rows = [results[job] for job in jobs]
    _write_runs(os.path.join(args.out_dir, "runs.csv"), rows)
    if args.figures:
        os.makedirs(args.figures, exist_ok=True)
        for setting in args.settings:
            _plot(rows, setting, os.path.join(args.figures, f"compare_{setting}_training.png"))
        plot_scalar_maps(os.path.join(args.figures, "compare_scalar_maps.png"))
    print(markdown_table(aggregate(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
