"""The attribution command: ``python -m eigpool.models.attribute`` (or ``eigpool-attribute``).

For a trained checkpoint and a data set split (or one image file) it writes, into ``--out``:

- ``curves.csv`` / ``curves.png``: accuracy and mean true-class score drop against the number k of smallest / largest
  eigenvalues removed (definition 1 of ``eigpool.models.attribution``), over the data set;
- ``spectrum.csv`` / ``spectrum.png``: the distribution of each eigenvalue (ascending) of the head's covariance over
  the data set, and the fraction of images where it is numerically zero (dead or collinear channels);
- ``groups.csv`` / ``groups.png``: the same two measures for the bands of a partition of the spectrum (``--bands``);
- ``perturbation_maps.png``: the occlusion scan of each band (definition 2) for ``--images`` images;
- ``backprop_maps.png``: the back-propagated maps of each band (definition 3), on the feature map (gradient x centred
  feature) and on the image (gradient x input);
- ``maps.csv``: per image, band and map kind, the sum and the absolute mass of the map (the figures' numbers).

Maps are signed (red: the region supports the true class through that band; blue: it opposes it) and share one colour
scale per image and map kind, so bands can be compared along a row. With ``--image`` only the maps are written, for
the predicted class (or ``--target``).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from . import attribution as A
from .config import Config
from .data import Skipped, build_datasets, collate_skipping, handle_skipped, image_transform
from .factory import load_network
from .heads import FGVCNet
from .plots import pyplot, save_figure

__all__ = ["attribution_maps", "load_model", "main", "plot_curves", "plot_groups", "plot_maps", "plot_spectrum",
           "run_attribution", "run_image", "write_csv"]


# ---------------------------------------------------------------------------------------------------------------------
# Files: CSV and figures.

def write_csv(path: str | os.PathLike, rows: Sequence[dict[str, Any]]) -> None:
    """Write ``rows`` (dicts with the same keys) to ``path`` as CSV with a header."""
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def plot_curves(rows: Sequence[dict[str, Any]], path: str | os.PathLike, title: str = "") -> None:
    """Accuracy and score drop against k for the "smallest" and "largest" rows of ``accuracy_curves``; PNG."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for side, style in (("smallest", "o-"), ("largest", "s--")):
        sel = [r for r in rows if r["removed"] == side]
        ks = [r["k"] for r in sel]
        axes[0].plot(ks, [r["accuracy"] for r in sel], style, ms=3, label=f"{side} k removed")
        axes[1].plot(ks, [r["score_drop"] for r in sel], style, ms=3, label=f"{side} k removed")
    axes[0].set(xlabel="k eigenvalues removed", ylabel="accuracy", ylim=(0, 1.02))
    axes[1].set(xlabel="k eigenvalues removed", ylabel="mean true-class score drop")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    save_figure(fig, path, dpi=90)


def plot_spectrum(rows: Sequence[dict[str, Any]], path: str | os.PathLike, title: str = "") -> None:
    """The rows of ``spectrum_stats``: median and 10-90 % band of each ascending eigenvalue, log scale; PNG."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.8, 3.4))
    idx = [r["index"] for r in rows]
    floor = max(min(r["q90"] for r in rows), 1e-12) * 1e-3
    ax.fill_between(idx, [max(r["q10"], floor) for r in rows], [max(r["q90"], floor) for r in rows], alpha=0.3,
                    label="10-90 % of images")
    ax.plot(idx, [max(r["median"], floor) for r in rows], "o-", ms=3, label="median")
    ax.set(yscale="log", xlabel="eigenvalue index (ascending)", ylabel="eigenvalue of S")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    save_figure(fig, path, dpi=90)


def plot_groups(rows: Sequence[dict[str, Any]], path: str | os.PathLike, title: str = "") -> None:
    """Bar charts of the accuracy and the score drop of each group row (keys "group", "accuracy", "score_drop"); PNG."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    names = [r["group"] for r in rows]
    pos = range(len(rows))
    axes[0].bar(pos, [r["accuracy"] for r in rows], color="tab:blue")
    axes[1].bar(pos, [r["score_drop"] for r in rows], color="tab:red")
    axes[0].set(ylabel="accuracy with the group removed", ylim=(0, 1.02))
    axes[1].set(ylabel="mean true-class score drop")
    for ax in axes:
        ax.set_xticks(list(pos), names, rotation=30, ha="right", fontsize=7)
        ax.grid(alpha=0.3, axis="y")
    if title:
        fig.suptitle(title, fontsize=10)
    save_figure(fig, path, dpi=90)


def _gray(image: Tensor) -> Tensor:
    """(3, H, W) -> (H, W) in [0, 1]: the channel mean, min-max scaled (images arrive normalised)."""
    g = image.mean(0)
    return (g - g.min()) / (g.max() - g.min()).clamp(min=1e-12)


def plot_maps(images: Tensor, panels: Sequence[tuple[str, Tensor]], columns: Sequence[str],
              path: str | os.PathLike, row_labels: Sequence[str] = (), title: str = "") -> None:
    """A grid: one row per image, the image first, then the maps.

    images: (B, 3, H, W); panels: (kind, maps (G, B, H, W)) pairs, each a block of G columns named by ``columns``
    (same length G) and sharing one symmetric colour scale per image. Maps are drawn in RdBu_r over the image in gray.
    """
    plt = pyplot()
    B = images.shape[0]
    n_cols = 1 + sum(m.shape[0] for _, m in panels)
    fig, axes = plt.subplots(B, n_cols, figsize=(1.5 * n_cols, 1.5 * B + 0.4), squeeze=False)
    for b in range(B):
        axes[b, 0].imshow(_gray(images[b]).numpy(), cmap="gray")
        axes[b, 0].set_ylabel(row_labels[b] if row_labels else "", fontsize=7)
        col = 1
        for kind, maps in panels:
            scale = float(maps[:, b].abs().max().clamp(min=1e-30))
            for g in range(maps.shape[0]):
                ax = axes[b, col]
                ax.imshow(_gray(images[b]).numpy(), cmap="gray", alpha=0.5)
                ax.imshow(maps[g, b].numpy(), cmap="RdBu_r", vmin=-scale, vmax=scale, alpha=0.8)
                if b == 0:
                    ax.set_title(f"{kind}\n{columns[g]}", fontsize=6)
                col += 1
    axes[0, 0].set_title("image", fontsize=6)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=9)
    save_figure(fig, path, dpi=80)


# ---------------------------------------------------------------------------------------------------------------------
# Loading a trained model and its data.

def load_model(checkpoint: str | os.PathLike) -> tuple[FGVCNet, Config, list[str]]:
    """(model in eval mode, its Config, class names) from an ``eigpool-train`` checkpoint (a .pt file or run folder).

    The head's matrix function is the one the checkpoint was saved with (the hybrid protocol switches it).
    """
    model, config, classes = load_network(checkpoint)
    if config.head != "gcp":
        raise ValueError(f"attribute: {os.fspath(checkpoint)!r} is a {config.head!r} model; eigenvalue attribution "
                         "needs a GCP head")
    return model, config, classes


def _batches(dataset: Dataset, batch_size: int, limit: int | None, bad_images: str
             ) -> Iterator[tuple[Tensor, Tensor]]:
    if limit is not None:
        dataset = Subset(dataset, range(min(limit, len(dataset))))
    for images, labels, skipped in DataLoader(dataset, batch_size=batch_size, collate_fn=collate_skipping):
        handle_skipped(skipped, bad_images)
        if labels.numel():
            yield images, labels


def _pick(dataset: Dataset, count: int, bad_images: str) -> tuple[list[int], Tensor, Tensor]:
    """``count`` images spread evenly over the data set (data sets stored in class order then show several classes)."""
    n = len(dataset)
    wanted = sorted({round(i * (n - 1) / max(count - 1, 1)) for i in range(min(count, n))})
    items = [(i, dataset[i]) for i in wanted]
    handle_skipped([item for _, item in items if isinstance(item, Skipped)], bad_images)
    items = [(i, item) for i, item in items if not isinstance(item, Skipped)]
    if not items:
        raise ValueError(f"attribute: none of the images {wanted} of the split could be read")
    return ([i for i, _ in items], torch.stack([item[0] for _, item in items]),
            torch.tensor([item[1] for _, item in items]))


def _default_ks(d: int) -> list[int]:
    step = max(1, d // 32)
    return sorted({*range(0, d + 1, step), d})


# ---------------------------------------------------------------------------------------------------------------------
# The run.

def attribution_maps(parts: A.GCPParts, images: Tensor, targets: Tensor, groups: Sequence[A.EigenGroup],
                     alpha: float = 0.0) -> dict[str, Tensor]:
    """The three maps of each group at the image's resolution, (G, B, H, W) each: "perturbation" (definition 2),
    "backprop feature" (definition 3, gradient x centred feature, upsampled) and "backprop input" (gradient x input)."""
    size = tuple(images.shape[-2:])
    occlusion = torch.stack([A.perturbation_map(parts, images, targets, g, alpha) for g in groups])
    back = A.backprop_attribution(parts, images, targets, groups)
    return {"perturbation": A.upsample(occlusion.float(), size),
            "backprop feature": A.upsample(back.feature.float(), size), "backprop input": back.input.detach().float()}


def run_attribution(checkpoint: str | os.PathLike, out: str | os.PathLike, *, split: str = "test",
                    data_root: str | None = None, images: int = 4, bands: int = 4, ks: Sequence[int] | None = None,
                    alpha: float = 0.0, limit: int | None = None, batch_size: int = 50, title: str = ""
                    ) -> dict[str, Any]:
    """Write the curves, group bars and maps of a checkpoint on a data set split into ``out`` (module docstring).

    Returns {"d", "curves" (rows of ``accuracy_curves``), "groups" (rows of ``group_effects``), "spectrum" (rows of
    ``spectrum_stats``), "figures" (PNG file names)}.
    """
    model, config, _ = load_model(checkpoint)
    if data_root is not None:
        config.data_root = data_root
    splits = build_datasets(config)
    dataset = getattr(splits, split)
    if dataset is None:
        raise ValueError(f"attribute: the run has no {split!r} split (val_fraction = 0)")
    parts = A.from_model(model)
    d = model.head.dim
    os.makedirs(out, exist_ok=True)
    ks = ks or _default_ks(d)
    groups = A.partition(d, bands)
    spectra: list[Tensor] = []
    # One pass over the data for the curves, the bands and the spectrum (the backbone dominates the cost).
    rows = A.group_effects(parts, _batches(dataset, batch_size, limit, config.bad_images),
                           [*A.curve_groups(ks), *groups], alpha, spectra=spectra)
    curves = A.curve_rows(rows[:2 * len(ks)], ks)
    group_rows = rows[2 * len(ks):]
    spectrum = A.spectrum_stats(torch.cat(spectra))
    write_csv(os.path.join(out, "curves.csv"), curves)
    plot_curves(curves, os.path.join(out, "curves.png"), title)
    write_csv(os.path.join(out, "spectrum.csv"), spectrum)
    plot_spectrum(spectrum, os.path.join(out, "spectrum.png"), title)
    write_csv(os.path.join(out, "groups.csv"), group_rows)
    plot_groups(group_rows, os.path.join(out, "groups.png"), title)
    indices, pictures, targets = _pick(dataset, images, config.bad_images)
    maps = attribution_maps(parts, pictures, targets, groups, alpha)
    _write_maps(out, maps, groups, pictures, [f"#{i} class {int(t)}" for i, t in zip(indices, targets, strict=True)],
                indices, targets, title)
    return {"d": d, "curves": curves, "groups": group_rows, "spectrum": spectrum,
            "figures": ["curves.png", "spectrum.png", "groups.png", "perturbation_maps.png", "backprop_maps.png"]}


def _write_maps(out: str | os.PathLike, maps: dict[str, Tensor], groups: Sequence[A.EigenGroup], pictures: Tensor,
                labels: Sequence[str], indices: Sequence[int], targets: Tensor, title: str) -> None:
    """perturbation_maps.png, backprop_maps.png and maps.csv (sum and absolute mass of every map)."""
    names = [g.name for g in groups]
    plot_maps(pictures, [("occlusion", maps["perturbation"])], names, os.path.join(out, "perturbation_maps.png"),
              labels, f"{title}: true-class score drop, eigen-subspace occlusion".lstrip(": "))
    plot_maps(pictures, [("grad x feature", maps["backprop feature"]), ("grad x input", maps["backprop input"])],
              names + names, os.path.join(out, "backprop_maps.png"), labels,
              f"{title}: back-propagated through each band only".lstrip(": "))
    rows = [{"image": idx, "target": int(t), "map": kind, "group": name, "sum": float(m[g, b].sum()),
             "abs_sum": float(m[g, b].abs().sum())}
            for kind, m in maps.items() for g, name in enumerate(names)
            for b, (idx, t) in enumerate(zip(indices, targets, strict=True))]
    write_csv(os.path.join(out, "maps.csv"), rows)


def run_image(checkpoint: str | os.PathLike, image: str | os.PathLike, out: str | os.PathLike, *,
              target: int | None = None, bands: int = 4, alpha: float = 0.0) -> dict[str, Any]:
    """The maps of one image file (read with PIL, transformed as the checkpoint's evaluation pipeline) into ``out``,
    for class ``target`` (default: the predicted class). Returns {"d", "target", "figures"}."""
    from PIL import Image

    model, config, classes = load_model(checkpoint)
    transform = image_transform(config.resize, config.crop, False)
    with Image.open(image) as img:
        picture = transform(img.convert("RGB"))[None]
    parts = A.from_model(model)
    if target is None:
        with torch.no_grad():
            target = int(model(picture).argmax(1))
    groups = A.partition(model.head.dim, bands)
    targets = torch.tensor([target])
    os.makedirs(out, exist_ok=True)
    maps = attribution_maps(parts, picture, targets, groups, alpha)
    _write_maps(out, maps, groups, picture, [classes[target]], [0], targets, os.path.basename(os.fspath(image)))
    return {"d": model.head.dim, "target": target, "figures": ["perturbation_maps.png", "backprop_maps.png"]}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eigpool-attribute", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("checkpoint", help="an eigpool-train checkpoint (.pt) or run folder (its last.pt)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--image", help="one image file: write its maps only (no curves)")
    parser.add_argument("--target", type=int, help="class of the maps for --image (default: the predicted class)")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"), help="data set split")
    parser.add_argument("--data-root", help="where the data set is (overrides the checkpoint's data_root)")
    parser.add_argument("--images", type=int, default=4, help="images in the map figures")
    parser.add_argument("--bands", type=int, default=4, help="bands of the spectrum for the maps and the bars")
    parser.add_argument("--ks", type=int, nargs="+", help="k values of the curves (default: about 32 from 0 to d)")
    parser.add_argument("--alpha", type=float, default=0.0, help="attenuation factor of a group (0 removes it)")
    parser.add_argument("--limit", type=int, help="use only the first LIMIT images of the split for the curves")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--title", default="", help="title of the figures")
    parser.add_argument("--threads", type=int, help="torch threads (1 is fastest for small d on a busy machine)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the process exit status."""
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.image:
        summary = run_image(args.checkpoint, args.image, args.out, target=args.target, bands=args.bands,
                            alpha=args.alpha)
    else:
        summary = run_attribution(args.checkpoint, args.out, split=args.split, data_root=args.data_root,
                                  images=args.images, bands=args.bands, ks=args.ks, alpha=args.alpha,
                                  limit=args.limit, batch_size=args.batch_size, title=args.title)
        for row in summary["curves"]:
            if row["k"] in (0, summary["d"] // 4, summary["d"] // 2):
                print(f"{row['removed']:>8} k={row['k']:<4d} accuracy {row['accuracy']:.4f}  "
                      f"score drop {row['score_drop']:+.4f}")
    print(f"eigpool-attribute: wrote {', '.join(summary['figures'])} (+ CSV) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
