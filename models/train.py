"""``eigpool-train``: train a fine-grained network (backbone + GCP or average-pooling head + linear classifier).

With no arguments it trains the GCP network on the embedded synthetic data set on the CPU (a couple of minutes) and
prints a final table. ``--preset cub|cars|aircraft`` selects a published recipe, ``--config FILE`` a YAML file, and
``--key value`` overrides any setting (config.py). Multi-process: ``torchrun --nproc_per_node N -m
eigpool.models.train ...`` (gloo on CPU, nccl on GPU).

A run folder holds ``config.yaml`` (the resolved settings), ``metrics.csv`` (one row per epoch), ``metrics.png``,
``last.pt`` (every epoch) and ``best.pt`` (best validation accuracy), all written atomically. ``--resume RUN`` continues
an interrupted run to the same result as an uninterrupted one: every epoch reseeds its shuffling and augmentation from
(seed, epoch), and the checkpoint carries the model, optimizer and scheduler states.

The steps of ``train``: setup (process group, threads, seed) -> data -> model -> optimizer -> run folder or resume ->
per epoch (hybrid method switch, train, evaluate, schedule, record, checkpoint) -> summary.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
import yaml
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler, Subset
from torch.utils.data.distributed import DistributedSampler

from .checkpoint import CHECKPOINT_VERSION, load_checkpoint, save_atomic
from .config import Config, add_config_arguments, config_from_args
from .data import DatasetLayoutError, ImageReadError, Splits, build_datasets, collate_skipping
from .heads import FGVCNet, build_model, set_gcp_method
from .plots import plot_metrics

__all__ = ["TrainingDiverged", "TrainResult", "evaluate", "format_table", "main", "model_from_config", "train"]

METRIC_COLUMNS = ("epoch", "method", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc",
                  "images_per_s", "epoch_seconds", "skipped_images")


class TrainingDiverged(RuntimeError):
    """The loss or the gradient became NaN or infinite; the run stopped and its last good checkpoint is kept."""


@dataclass
class TrainResult:
    """What a run produced: its folder, the metric rows, and the epoch (1-based) with the best validation accuracy."""

    run_dir: str
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def _setup_distributed(device: str) -> _Dist:
    """Join the process group torchrun describes in the environment (WORLD_SIZE > 1); otherwise a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return _Dist(dist.get_rank(), dist.get_world_size())


def _epoch_seed(config: Config, epoch: int) -> int:
    return (config.seed * 1_000_003 + epoch * 7_919 + 17) % (2**63)


def model_from_config(config: Config, num_classes: int, *, pretrained: bool = True) -> FGVCNet:
    """The network a Config describes (the hybrid protocol starts with Newton-Schulz)."""
    method = "newton_schulz" if config.hybrid else config.method
    options = {} if config.head == "avg" else {
        "reduction": config.reduction, "method": method, "grad": config.grad if method == "eigen" else "exact",
        "seb": config.seb and method == "eigen", "truncate": config.truncate if method == "eigen" else 0,
        "iterations": config.iterations, "compute_dtype": config.compute_dtype}
    return build_model(config.backbone, config.head, num_classes, pretrained=config.pretrained if pretrained else None,
                       **options)


def _method_for_epoch(config: Config, epoch: int) -> str:
    """The GCP matrix-function method used in ``epoch`` (0-based): hybrid switches at the last lr step."""
    if config.head != "gcp":
        return "avg"
    if config.hybrid:
        return "eigen" if epoch >= config.lr_steps[-1] else "newton_schulz"
    return config.method


def _optimizer(config: Config, model: FGVCNet) -> torch.optim.Optimizer:
    """SGD with momentum; the classifier's learning rate is ``classifier_lr_factor`` times the base rate."""
    classifier = list(model.classifier.parameters())
    ids = {id(p) for p in classifier}
    rest = [p for p in model.parameters() if id(p) not in ids]
    groups = [{"params": rest, "lr": config.lr},
              {"params": classifier, "lr": config.lr * config.classifier_lr_factor}]
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


def _run_dir(config: Config, ctx: _Dist) -> str:
    name = config.name
    if not name:
        head = "avg" if config.head == "avg" else ("hybrid" if config.hybrid else config.method)
        data = f"{config.dataset}-{config.variant}" if config.dataset == "synthetic" else config.dataset
        name = f"{data}-{config.backbone}-{head}-{time.strftime('%Y%m%d-%H%M%S')}"
        if ctx.enabled:
            box = [name]
            dist.broadcast_object_list(box, src=0)
            name = box[0]
    return os.path.join(config.out_dir, name)


def _loader(dataset: Dataset, config: Config, ctx: _Dist, *, epoch: int | None) -> DataLoader:
    """Training loader (``epoch`` given: shuffled by a generator seeded from (seed, epoch), sharded across processes)
    or evaluation loader (in order, each process taking every world-th item, without padding)."""
    if epoch is None:
        if ctx.enabled:
            dataset = Subset(dataset, range(ctx.rank, len(dataset), ctx.world))
        return DataLoader(dataset, batch_size=config.batch_size, shuffle=False, num_workers=config.workers,
                          collate_fn=collate_skipping)
    generator = torch.Generator().manual_seed(_epoch_seed(config, epoch))
    if ctx.enabled:
        sampler = DistributedSampler(dataset, num_replicas=ctx.world, rank=ctx.rank, shuffle=True,
                                     seed=config.seed, drop_last=True)
        sampler.set_epoch(epoch)
    else:
        sampler = RandomSampler(dataset, generator=generator)
    # drop_last: a final batch of one image would break BatchNorm's training statistics.
    return DataLoader(dataset, batch_size=config.batch_size, sampler=sampler, num_workers=config.workers,
                      collate_fn=collate_skipping, drop_last=True, generator=generator)


def _sum_across(ctx: _Dist, values: list[float]) -> list[float]:
    if not ctx.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def _batches(loader: DataLoader, device: torch.device, skipped: list[str], bar: Any) -> Iterator[tuple]:
    for images, labels, bad in loader:
        skipped.extend(bad)
        if bar is not None:
            bar.update(1)
        if labels.numel():
            yield images.to(device, non_blocking=True), labels.to(device, non_blocking=True)


def _progress(total: int, desc: str, config: Config, ctx: _Dist) -> Any:
    if not config.progress or not ctx.main:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, disable=None)


def _diverged(ctx: _Dist, loss: torch.Tensor, grad_norm: torch.Tensor) -> bool:
    """True on every process when any process has a non-finite loss or gradient (so all stop together)."""
    bad = float(not (torch.isfinite(loss) and torch.isfinite(grad_norm)))
    return _sum_across(ctx, [bad])[0] > 0


def _train_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer, config: Config, ctx: _Dist,
                 device: torch.device, epoch: int, run_dir: str) -> dict[str, float]:
    model.train()
    loss_sum, correct, count, skipped = 0.0, 0.0, 0, []
    bar = _progress(len(loader), f"epoch {epoch + 1}/{config.epochs} train", config, ctx)
    params = [p for p in model.parameters() if p.requires_grad]
    start = time.perf_counter()
    for step, (images, labels) in enumerate(_batches(loader, device, skipped, bar)):
        logits = model(images)
        loss = nn.functional.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # clip_grad_norm_ with max_norm=inf only measures the norm: the finiteness check needs it either way.
        grad_norm = nn.utils.clip_grad_norm_(params, config.clip_grad_norm or math.inf)
        if _diverged(ctx, loss.detach(), grad_norm):
            if bar is not None:
                bar.close()
            last = os.path.join(run_dir, "last.pt")
            kept = f"the last good checkpoint {last!r} (after epoch {epoch}) is kept" if epoch else "no epoch finished"
            raise TrainingDiverged(
                f"training diverged in epoch {epoch + 1}, step {step + 1}: loss {loss.item():.6g}, gradient norm "
                f"{grad_norm.item():.6g} (non-finite); the step was not applied and {kept}. Lower the learning rate "
                f"(lr={config.lr}), keep gradient clipping on (clip_grad_norm={config.clip_grad_norm}) or use a more "
                "stable GCP method, then start again or --resume.")
        optimizer.step()
        loss_sum += loss.item() * labels.numel()
        correct += (logits.argmax(1) == labels).sum().item()
        count += labels.numel()
        if bar is not None:
            bar.set_postfix(loss=f"{loss_sum / count:.3f}", acc=f"{correct / count:.3f}")
    seconds = time.perf_counter() - start
    if bar is not None:
        bar.close()
    loss_sum, correct, count, n_skipped = _sum_across(ctx, [loss_sum, correct, count, len(skipped)])
    for path in skipped:
        print(f"warning: skipped unreadable image {path}", file=sys.stderr)
    return {"train_loss": loss_sum / max(count, 1), "train_acc": correct / max(count, 1),
            "images_per_s": count / seconds, "epoch_seconds": seconds, "skipped_images": int(n_skipped)}


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Dataset, config: Config, device: torch.device,
             ctx: _Dist | None = None, desc: str = "eval") -> tuple[float, float, int]:
    """(mean cross-entropy loss, accuracy, number of images) of ``model`` on ``dataset``, summed over processes."""
    ctx = ctx or _Dist()
    model.eval()
    loader = _loader(dataset, config, ctx, epoch=None)
    loss_sum, correct, count, skipped = 0.0, 0.0, 0, []
    bar = _progress(len(loader), desc, config, ctx)
    for images, labels in _batches(loader, device, skipped, bar):
        logits = model(images)
        loss_sum += nn.functional.cross_entropy(logits, labels, reduction="sum").item()
        correct += (logits.argmax(1) == labels).sum().item()
        count += labels.numel()
    if bar is not None:
        bar.close()
    loss_sum, correct, count = _sum_across(ctx, [loss_sum, correct, count])
    return loss_sum / max(count, 1), correct / max(count, 1), int(count)


def _write_csv(history: list[dict[str, Any]], path: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=METRIC_COLUMNS)
        writer.writeheader()
        writer.writerows(history)
    os.replace(tmp, path)


def _write_config(config: Config, run_dir: str) -> None:
    tmp = os.path.join(run_dir, "config.yaml.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        yaml.safe_dump(config.to_dict(), fh, sort_keys=False)
    os.replace(tmp, os.path.join(run_dir, "config.yaml"))


def _checkpoint(model: FGVCNet, optimizer: torch.optim.Optimizer, scheduler: Any, config: Config, epoch: int,
                history: list[dict[str, Any]], best: tuple[float, int | None], classes: list[str]) -> dict[str, Any]:
    return {"version": CHECKPOINT_VERSION, "epoch": epoch, "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "config": config.to_dict(),
            "history": history, "best_val_acc": best[0], "best_epoch": best[1], "classes": classes,
            "method": _method_for_epoch(config, max(epoch - 1, 0)), "torch_rng": torch.get_rng_state(),
            "python_rng": random.getstate()}


def train(config: Config, *, resume: str | None = None, stop_after: int | None = None) -> TrainResult:
    """Train as ``config`` says (module docstring); ``resume``: a run folder or checkpoint to continue from.

    ``stop_after``: return after that many completed epochs (the run can then be resumed), as an interruption would.
    Raises TrainingDiverged on a non-finite loss or gradient.
    """
    ctx = _setup_distributed(config.device)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = torch.device(config.device if not config.device.startswith("cuda") else f"cuda:{ctx.rank}")
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    splits: Splits = build_datasets(config)
    model = model_from_config(config, len(splits.classes), pretrained=resume is None).to(device)
    optimizer = _optimizer(config, model)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=config.lr_steps, gamma=config.lr_gamma)
    history: list[dict[str, Any]] = []
    best: tuple[float, int | None] = (-1.0, None)
    start_epoch = 0
    if resume:
        ckpt = load_checkpoint(resume)
        run_dir = os.path.dirname(os.path.abspath(resume)) if os.path.isfile(resume) else resume
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        history, start_epoch = list(ckpt["history"]), ckpt["epoch"]
        best = (ckpt["best_val_acc"], ckpt["best_epoch"])
        # Each epoch reseeds from (seed, epoch); the generators are restored too, for code that draws outside epochs.
        torch.set_rng_state(ckpt["torch_rng"])
        random.setstate(ckpt["python_rng"])
    else:
        run_dir = _run_dir(config, ctx)
        if ctx.main:
            os.makedirs(run_dir, exist_ok=True)
            _write_config(config, run_dir)
    if ctx.main:
        print(f"eigpool-train: {len(splits.train)} train / {len(splits.val) if splits.val else 0} val / "
              f"{len(splits.test)} test images, {len(splits.classes)} classes; model {config.backbone} + {config.head}"
              f"{'' if config.head == 'avg' else ' (' + _method_for_epoch(config, start_epoch) + ')'}; "
              f"{ctx.world} process(es); run folder {run_dir}", flush=True)
    net = model
    if ctx.enabled:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    current_method = _method_for_epoch(config, 0)
    for epoch in range(start_epoch, config.epochs):
        method = _method_for_epoch(config, epoch)
        if method != current_method:
            # Hybrid protocol: the last lr stage trains with the eigen method (also right after a resume).
            set_gcp_method(model, method, grad=config.grad, seb=config.seb, truncate=config.truncate,
                           iterations=config.iterations, compute_dtype=config.compute_dtype)
            current_method = method
        torch.manual_seed(_epoch_seed(config, epoch))
        lr = optimizer.param_groups[0]["lr"]
        loader = _loader(splits.train, config, ctx, epoch=epoch)
        row: dict[str, Any] = {"epoch": epoch + 1, "method": method, "lr": lr}
        row |= _train_epoch(net, loader, optimizer, config, ctx, device, epoch, run_dir)
        if ctx.enabled:
            # Every process evaluates its shard with the same BatchNorm statistics: rank 0's.
            for buffer in model.buffers():
                dist.broadcast(buffer, src=0)
        for split in ("val", "test"):
            data = getattr(splits, split)
            loss, acc, _ = evaluate(model, data, config, device, ctx, split) if data is not None else (None, None, 0)
            row |= {f"{split}_loss": loss, f"{split}_acc": acc}
        scheduler.step()
        history.append(row)
        if row["val_acc"] is not None and row["val_acc"] > best[0]:
            best = (row["val_acc"], epoch + 1)
        if ctx.main:
            _record(model, optimizer, scheduler, config, history, best, splits.classes, run_dir)
            print(_epoch_line(row, config), flush=True)
        if stop_after is not None and epoch + 1 >= stop_after and epoch + 1 < config.epochs:
            break
    return TrainResult(run_dir, history, best[1])


def _record(model: FGVCNet, optimizer: torch.optim.Optimizer, scheduler: Any, config: Config,
            history: list[dict[str, Any]], best: tuple[float, int | None], classes: list[str], run_dir: str) -> None:
    """Metrics CSV and plot, then last.pt, and best.pt when this epoch is the best on validation."""
    epoch = history[-1]["epoch"]
    _write_csv(history, os.path.join(run_dir, "metrics.csv"))
    plot_metrics(history, os.path.join(run_dir, "metrics.png"), title=os.path.basename(run_dir))
    state = _checkpoint(model, optimizer, scheduler, config, epoch, history, best, classes)
    save_atomic(state, os.path.join(run_dir, "last.pt"))
    if best[1] == epoch:
        save_atomic(state, os.path.join(run_dir, "best.pt"))


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _epoch_line(row: dict[str, Any], config: Config) -> str:
    return (f"epoch {row['epoch']:>3}/{config.epochs}  lr {row['lr']:.2g}  train loss {row['train_loss']:.4f} "
            f"acc {row['train_acc']:.4f}  val acc {_fmt(row['val_acc'], '.4f')}  test acc "
            f"{_fmt(row['test_acc'], '.4f')}  {row['images_per_s']:.0f} img/s")


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
    mean_speed = sum(r["images_per_s"] for r in result.history) / len(result.history)
    lines.append(f"training throughput {mean_speed:.0f} images/s (mean over epochs); run folder {result.run_dir}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eigpool-train", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--resume", metavar="RUN", help="continue the run in folder RUN (or from checkpoint RUN) with "
                                                        "its saved settings")
    parser.add_argument("--stop-after", type=int, metavar="EPOCHS", help="stop after this many completed epochs (the "
                                                                           "run can be resumed)")
    add_config_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the process exit status (2: bad settings, data or a diverged run)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.resume:
            config = Config(**load_checkpoint(args.resume)["config"]).validate()
            if hasattr(args, "progress"):
                config.progress = bool(yaml.safe_load(args.progress))
        else:
            config = config_from_args(args)
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    try:
        result = train(config, resume=args.resume, stop_after=args.stop_after)
    except (TrainingDiverged, DatasetLayoutError, ImageReadError, FileNotFoundError) as err:
        print(f"eigpool-train: {err}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if int(os.environ.get("RANK", "0")) == 0:
        print(format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
