"""The small-eigenvalue study: ``python -m eigpool.models.study``.

Trains three GCP models with the same budget (data, epochs, learning-rate schedule, seed, backbone, d) through the
training entry point's ``train`` function, then runs the attribution command on each:

- ``plain``: GCP with the exact matrix square root;
- ``truncate``: the same with the ``--truncate`` smallest eigenvalues set to zero (default d / 2), in training and test;
- ``seb``: GCP + SEB, the scaling eigen branch that amplifies the gradient of the small eigenvalues;
- ``seb-lr`` (only with ``--seb-lr LR``): GCP + SEB with the learning rate LR, everything else equal. SEB multiplies
  the representation by 1 + ||R||_F (about 3 at initialisation on the embedded set), which scales the classifier's
  gradient and its effective step; this model separates that from the branch itself.

Each run goes to ``<out>/study-<variant>-<model>`` (an existing finished run is reused, an unfinished one resumed).
The attribution outputs go to ``<out>/attribution-<variant>-<model>``, and ``<out>/study_<variant>_curves.png`` overlays
the three models' accuracy curves; with ``--figures DIR`` the PNGs are also copied there as
``attribution_<variant>_<model>_<figure>.png`` and ``attribution_<variant>_curves.png`` (the docs' figures).
``<out>/study.csv`` holds the accuracy table: final and best-validation test accuracy of each model, and the accuracy
with the k smallest / largest eigenvalues removed at test time. Any data set the training entry point reads can be
used: ``--preset cub --set data_root=/data/CUB_200_2011`` (the variant is then ignored); ``--set key=value`` overrides
any training setting.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from typing import Any

import torch

from .attribute import run_attribution, write_csv
from .checkpoint import load_checkpoint
from .config import PRESETS, Config, load_preset, parse_yaml
from .plots import pyplot, save_figure
from .train import train

__all__ = ["MODELS", "main", "plot_study_curves", "study_config", "train_model"]

MODELS = ("plain", "truncate", "seb", "seb-lr")


def study_config(model: str, variant: str, truncate: int | None, overrides: dict[str, Any], out: str,
                 preset: str = "synthetic", seb_lr: float | None = None) -> Config:
    """The Config of one study model: the preset with the overrides and the model's head (all else equal)."""
    settings = {**load_preset(preset), "variant": variant, "progress": False, **overrides}
    d = settings.get("reduction") or 32
    if model == "seb-lr" and seb_lr is None:
        raise ValueError("study: model 'seb-lr' needs the learning rate seb_lr")
    exact = {"head": "gcp", "method": "eigen", "function": "sqrt"}  # whatever the preset's default head is
    head = exact | {"plain": {}, "truncate": {"truncate": d // 2 if truncate is None else truncate},
                    "seb": {"seb": True}, "seb-lr": {"seb": True, "lr": seb_lr}}[model]
    settings = {k: v for k, v in settings.items() if k not in head}
    data = variant if settings.get("dataset", "synthetic") == "synthetic" else settings["dataset"]
    return Config(**settings, **head, name=f"study-{data}-{model}", out_dir=out).validate()


def train_model(config: Config) -> str:
    """Train (or resume, or reuse) the run of ``config``; return its folder."""
    run_dir = os.path.join(config.out_dir, config.name)
    last = os.path.join(run_dir, "last.pt")
    if os.path.isfile(last):
        if load_checkpoint(last)["epoch"] >= config.epochs:
            return run_dir
        return train(config, resume=run_dir).run_dir
    return train(config).run_dir


def _row(run_dir: str, model: str, variant: str, curves: list[dict[str, Any]], d: int) -> dict[str, Any]:
    history = load_checkpoint(os.path.join(run_dir, "last.pt"))["history"]
    best = max(history, key=lambda r: (r["val_acc"] if r["val_acc"] is not None else -1.0))
    acc = {(r["removed"], r["k"]): r["accuracy"] for r in curves}
    half = d // 2
    return {"variant": variant, "model": model, "epochs": len(history), "final_test_acc": history[-1]["test_acc"],
            "best_val_epoch": best["epoch"], "best_val_test_acc": best["test_acc"],
            f"acc_smallest_{half}_removed": acc.get(("smallest", half)),
            f"acc_largest_{half}_removed": acc.get(("largest", half))}


def plot_study_curves(curves: dict[str, list[dict[str, Any]]], path: str | os.PathLike, title: str = "") -> None:
    """Accuracy against k smallest (solid) / k largest (dashed) eigenvalues removed, one colour per model; PNG.

    curves: model name -> rows of ``accuracy_curves`` (or of a curves.csv written by the attribution command).
    """
    fig, ax = pyplot().subplots(figsize=(5.6, 3.6))
    for (model, rows), color in zip(curves.items(), ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"),
                                    strict=False):
        for side, style in (("smallest", "-"), ("largest", "--")):
            sel = [r for r in rows if r["removed"] == side]
            ax.plot([int(r["k"]) for r in sel], [float(r["accuracy"]) for r in sel], style, color=color,
                    label=f"{model}: {side} k removed")
    ax.set(xlabel="k eigenvalues removed at test time", ylabel="test accuracy", ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    save_figure(fig, path, dpi=90)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the process exit status."""
    parser = argparse.ArgumentParser(prog="python -m eigpool.models.study", description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="synthetic", choices=PRESETS, help="training recipe of the three models")
    parser.add_argument("--variants", nargs="+", default=["small"], help="synthetic variants (small, standard)")
    parser.add_argument("--models", nargs="+", choices=MODELS,
                        help="default: plain truncate seb, and seb-lr with --seb-lr")
    parser.add_argument("--seb-lr", type=float, help="learning rate of the extra model seb-lr")
    parser.add_argument("--truncate", type=int, help="eigenvalues truncated by the 'truncate' model (default d / 2)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="training settings for every model (YAML values), e.g. epochs=10 synthetic_train=120")
    parser.add_argument("--out", default="runs", help="folder of the runs and the attribution outputs")
    parser.add_argument("--figures", help="also copy the attribution PNGs here (attribution_<variant>_<model>_*.png)")
    parser.add_argument("--images", type=int, default=4, help="images in the map figures")
    parser.add_argument("--train-only", action="store_true", help="train, skip the attribution")
    args = parser.parse_args(argv)
    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set takes KEY=VALUE items, got {item!r}")
        overrides[key.replace("-", "_")] = parse_yaml(value, f"--set {key}")
    models = args.models or [m for m in MODELS if m != "seb-lr" or args.seb_lr is not None]
    rows = []
    for variant in args.variants:
        curves = {}
        for model in models:
            config = study_config(model, variant, args.truncate, overrides, args.out, args.preset, args.seb_lr)
            print(f"study: {config.name}", flush=True)
            if config.threads:
                # train() sets this too, but a finished run is reused without training.
                torch.set_num_threads(config.threads)
            run_dir = train_model(config)
            if args.train_only:
                continue
            out = os.path.join(args.out, config.name.replace("study-", "attribution-"))
            summary = run_attribution(os.path.join(run_dir, "last.pt"), out, images=args.images,
                                      title=f"{variant} variant, {model}")
            if args.figures:
                os.makedirs(args.figures, exist_ok=True)
                tag = config.name.removeprefix("study-").replace("-", "_")
                for name in summary["figures"]:
                    shutil.copy(os.path.join(out, name), os.path.join(args.figures, f"attribution_{tag}_{name}"))
            rows.append(_row(run_dir, model, variant, summary["curves"], summary["d"]))
            write_csv(os.path.join(args.out, "study.csv"), rows)
            curves[model] = summary["curves"]
        if curves:
            path = os.path.join(args.out, f"study_{variant}_curves.png")
            plot_study_curves(curves, path, f"{variant}: accuracy with eigenvalues removed")
            if args.figures:
                shutil.copy(path, os.path.join(args.figures, f"attribution_{variant}_curves.png"))
    for row in rows:
        print(", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
