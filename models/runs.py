"""The run folder and its logs: claiming the folder, config.yaml, metrics.csv, metrics.png, last.pt and best.pt, and
the printed table.

A run folder belongs to one run. ``claim_run_dir`` creates it with an exclusive ``mkdir``: a ``name`` that exists
already is refused (continue that run with ``--resume``), and a default name (``<data>-<backbone>-<method>-<time>``)
that another run took in the same second gets a ``-2``, ``-3``, ... suffix. Every file is written to a temporary
``*.tmp`` file and moved into place with ``os.replace``; ``remove_partial_files`` deletes the ``*.tmp`` files that a
killed write left behind.
"""

from __future__ import annotations

import csv
import glob
import io
import os
import time
from dataclasses import dataclass, field
from typing import Any

import torch.distributed as dist
import yaml

from .checkpoint import save_atomic, write_atomic
from .config import Config
from .engine import Distributed
from .errors import SettingsError
from .plots import plot_metrics

__all__ = ["METRIC_COLUMNS", "TrainResult", "claim_run_dir", "epoch_line", "format_table", "record_epoch",
           "remove_partial_files", "write_config"]

METRIC_COLUMNS = ("epoch", "method", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc",
                  "images_per_s", "epoch_seconds", "skipped_images", "val_skipped_images", "test_skipped_images",
                  "grad_norm_backbone", "grad_norm_head", "grad_norm_classifier", "clip_fraction", "clip_scale",
                  "spectrum_min", "spectrum_small", "spectrum_max", "spectrum_eff_rank")


@dataclass
class TrainResult:
    """What a run produced: its folder, the metric rows, and the epoch (1-based) with the best validation accuracy."""

    run_dir: str
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None


def _default_name(config: Config) -> str:
    head = "avg" if config.head == "avg" else ("hybrid" if config.hybrid else config.method)
    data = f"{config.dataset}-{config.variant}" if config.dataset == "synthetic" else config.dataset
    backbone = config.backbone.replace(":", "-")  # timm:NAME; a colon is not valid in every file system's names
    return f"{data}-{backbone}-{head}-{time.strftime('%Y%m%d-%H%M%S')}"


def _claim(config: Config) -> str:
    """Create the run folder (exclusively) and return its path; raises SettingsError."""
    try:
        os.makedirs(config.out_dir, exist_ok=True)
        if config.name:
            path = os.path.join(config.out_dir, config.name)
            try:
                os.mkdir(path)
            except FileExistsError:
                raise SettingsError(f"run folder {path!r} exists already (another run's): continue it with --resume "
                                    f"{path}, or choose another name") from None
            return path
        base = os.path.join(config.out_dir, _default_name(config))
        for suffix in range(1, 10_000):
            path = base if suffix == 1 else f"{base}-{suffix}"
            try:
                os.mkdir(path)
                return path
            except FileExistsError:
                continue
        raise SettingsError(f"no free run folder name {base}-<n> in {config.out_dir!r}")
    except OSError as err:
        raise SettingsError(f"cannot create the run folder in out_dir {config.out_dir!r}: {err}") from None


def claim_run_dir(config: Config, ctx: Distributed) -> str:
    """The new run's folder, created by process 0 (``config.name`` under ``config.out_dir``, or a unique default
    name); every process gets its path, or the same SettingsError."""
    outcome: list[Any] = [None, None]
    if ctx.main:
        try:
            outcome[0] = _claim(config)
        except SettingsError as err:
            outcome[1] = str(err)
    if ctx.enabled:
        dist.broadcast_object_list(outcome, src=0)
    if outcome[1]:
        raise SettingsError(outcome[1])
    return outcome[0]


def remove_partial_files(run_dir: str) -> list[str]:
    """Delete the temporary ``*.tmp`` files of writes that a kill interrupted; returns their names."""
    removed = []
    for path in sorted(glob.glob(os.path.join(glob.escape(run_dir), "*.tmp"))):
        os.unlink(path)
        removed.append(os.path.basename(path))
    return removed


def _write_text(path: str, text: str) -> None:
    write_atomic(path, lambda fh: fh.write(text.encode("utf-8")))


def write_config(config: Config, run_dir: str) -> None:
    """``run_dir/config.yaml``: the resolved settings."""
    _write_text(os.path.join(run_dir, "config.yaml"), yaml.safe_dump(config.to_dict(), sort_keys=False))


def _write_csv(history: list[dict[str, Any]], path: str) -> None:
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS)
    writer.writeheader()
    writer.writerows(history)
    _write_text(path, buffer.getvalue())


def record_epoch(run_dir: str, state: dict[str, Any], history: list[dict[str, Any]], is_best: bool) -> None:
    """After an epoch: metrics.csv and metrics.png, then last.pt (``state``), then best.pt when ``is_best``.

    best.pt comes last: a kill between the two leaves a last.pt that is itself the best epoch, which
    ``checkpoint.sync_best`` copies to best.pt on resume."""
    _write_csv(history, os.path.join(run_dir, "metrics.csv"))
    plot_metrics(history, os.path.join(run_dir, "metrics.png"), title=os.path.basename(run_dir))
    save_atomic(state, os.path.join(run_dir, "last.pt"))
    if is_best:
        save_atomic(state, os.path.join(run_dir, "best.pt"))


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def epoch_line(row: dict[str, Any], config: Config) -> str:
    """The line printed after each epoch."""
    skipped = sum(row.get(k) or 0 for k in ("skipped_images", "val_skipped_images", "test_skipped_images"))
    return (f"epoch {row['epoch']:>3}/{config.epochs}  lr {row['lr']:.2g}  train loss {row['train_loss']:.4f} "
            f"acc {row['train_acc']:.4f}  val acc {_fmt(row['val_acc'], '.4f')}  test acc "
            f"{_fmt(row['test_acc'], '.4f')}  {row['images_per_s']:.0f} img/s"
            + (f"  {skipped} unreadable images skipped" if skipped else ""))


def format_table(result: TrainResult) -> str:
    """The per-epoch table and the summary lines that ``eigpool-train`` prints at the end."""
    header = f"{'epoch':>5} {'method':>13} {'lr':>8} {'train loss':>10} {'train acc':>9} {'val acc':>8} " \
             f"{'test acc':>8} {'img/s':>7}"
    lines = [header, "-" * len(header)]
    for r in result.history:
        lines.append(f"{r['epoch']:>5} {r['method']:>13} {r['lr']:>8.2g} {r['train_loss']:>10.4f} "
                     f"{r['train_acc']:>9.4f} {_fmt(r['val_acc'], '>8.4f')} {_fmt(r['test_acc'], '>8.4f')} "
                     f"{r['images_per_s']:>7.0f}")
    last = result.history[-1]
    lines.append(f"final test accuracy {_fmt(last['test_acc'], '.4f')} (epoch {last['epoch']})")
    if result.best_epoch is not None:
        best = result.history[result.best_epoch - 1]
        lines.append(f"best validation accuracy {best['val_acc']:.4f} at epoch {best['epoch']}: test accuracy "
                     f"{_fmt(best['test_acc'], '.4f')} (best.pt)")
    skipped = {split: last.get(f"{split}_skipped_images") or 0 for split in ("val", "test")}
    if any(skipped.values()):
        lines.append("unreadable images skipped in each evaluation: " +
                     ", ".join(f"{n} {split}" for split, n in skipped.items()))
    mean_speed = sum(r["images_per_s"] for r in result.history) / len(result.history)
    lines.append(f"training throughput {mean_speed:.0f} images/s (mean over epochs); run folder {result.run_dir}")
    return "\n".join(lines)
