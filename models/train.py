"""``eigpool-train``: train a fine-grained network (backbone + GCP or average-pooling head + linear classifier).

With no arguments it trains the GCP network on the embedded synthetic data set on the CPU (about a minute) and
prints a final table. ``--preset cub|cars|aircraft`` selects a published recipe, ``--config FILE`` a YAML file, and
``--key value`` overrides any setting (config.py). Multi-process: ``torchrun --nproc_per_node N -m
eigpool.models.train ...`` (gloo on CPU, nccl on GPU).

A run folder (runs.py) holds ``config.yaml``, ``metrics.csv``, ``metrics.png``, ``last.pt`` (every epoch) and
``best.pt`` (best validation accuracy), all written atomically. ``--resume RUN`` continues an interrupted run to the
same result as an uninterrupted one: every epoch reseeds its shuffling and augmentation from (seed, epoch), and the
checkpoint carries the model, optimizer and scheduler states; ``--epochs``, ``--lr-steps`` (future steps only),
``--threads``, ``--workers`` and ``--progress`` may change on resume, every other setting is the run's own.

The steps of ``train``: setup (process group, threads, seed) -> data -> model -> optimizer (and the fp16 gradient
scaler) -> run folder or resume -> compilation (``--compile``: the training network, and the model that evaluates) ->
per epoch (hybrid method switch, train, evaluate, schedule, record) -> summary. The network comes from factory.py,
the epoch and the evaluation from engine.py, the files from runs.py and checkpoint.py. Every user error (a setting,
a file, the data, a diverged run) ends with a message and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from collections import Counter
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .checkpoint import checkpoint_state, load_checkpoint, sync_best
from .config import RESUMABLE, Config, add_config_arguments, check_environment, config_from_args, flag_settings
from .data import DatasetLayoutError, ImageReadError, Splits, build_datasets
from .engine import (
    Distributed,
    NonFiniteOutputs,
    SkipLog,
    TrainingDiverged,
    build_optimizer,
    build_scaler,
    build_scheduler,
    epoch_seed,
    evaluate,
    make_loader,
    parameter_groups,
    setup_distributed,
    spectrum_statistics,
    train_epoch,
)
from .errors import CheckpointError, SettingsError
from .factory import build_network, method_for_epoch, switch_method
from .runs import TrainResult, claim_run_dir, epoch_line, format_table, record_epoch, remove_partial_files, write_config

__all__ = ["USER_ERRORS", "TrainResult", "TrainingDiverged", "build_parser", "main", "resumed_config", "train"]

#: The errors ``main`` reports as a message with exit status 2.
USER_ERRORS = (SettingsError, CheckpointError, DatasetLayoutError, ImageReadError, TrainingDiverged)


def _check_training_split(splits: Splits, config: Config, ctx: Distributed) -> None:
    per_process = len(splits.train) // ctx.world
    if per_process < config.batch_size:
        where = " per process" if ctx.enabled else ""
        raise SettingsError(f"config: the training split has {per_process} images{where}, fewer than batch_size "
                            f"{config.batch_size}: an epoch would have no training step (lower batch_size)")


def _diverged(message: str, epoch: int, run_dir: str, config: Config) -> TrainingDiverged:
    last = os.path.join(run_dir, "last.pt")
    kept = f"the last good checkpoint {last!r} (after epoch {epoch}) is kept" if epoch else "no epoch finished"
    return TrainingDiverged(
        f"{message}; {kept}. Lower the learning rate (lr={config.lr}), keep gradient clipping on (clip_grad_norm="
        f"{config.clip_grad_norm}), use a more stable GCP method or check the data for NaN or inf, then start again "
        "or --resume.")


def train(config: Config, *, resume: str | None = None, stop_after: int | None = None) -> TrainResult:
    """Train as the validated ``config`` says (module docstring); ``resume``: a run folder or checkpoint to continue.

    ``stop_after``: return after that many completed epochs (the run can then be resumed), as an interruption would.
    Raises TrainingDiverged on a non-finite loss, gradient or output, SettingsError on a setting that cannot run.
    """
    ctx = setup_distributed(config.device)
    check_environment(config)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = torch.device(config.device if config.device == "cpu" else f"cuda:{ctx.rank}")
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    splits = build_datasets(config)
    _check_training_split(splits, config, ctx)
    ckpt = load_checkpoint(resume) if resume else None
    start_epoch = ckpt["epoch"] if ckpt else 0
    # The head for the next epoch's method: the matrix function has no parameters, so a checkpoint fits either.
    model = build_network(config, len(splits.classes), method=method_for_epoch(config, start_epoch),
                          pretrained=ckpt is None).to(device)
    optimizer = build_optimizer(config, model)
    scheduler = build_scheduler(config, optimizer)
    scaler = build_scaler(config, device)
    history: list[dict[str, Any]] = []
    best: tuple[float, int | None] = (-1.0, None)
    if ckpt:
        run_dir = os.path.dirname(os.path.abspath(resume)) if os.path.isfile(resume) else resume
        history, best = _restore(ckpt, resume, model, optimizer, scheduler, scaler)
        scheduler.milestones = Counter(config.lr_steps)  # a resume may add future steps
        if ctx.main:
            _repair_run_dir(run_dir, ckpt, resume, config)
    else:
        run_dir = claim_run_dir(config, ctx)
        if ctx.main:
            write_config(config, run_dir)
    if ctx.main:
        print(f"eigpool-train: {len(splits.train)} train / {len(splits.val) if splits.val else 0} val / "
              f"{len(splits.test)} test images, {len(splits.classes)} classes; model {config.backbone} + {config.head}"
              f"{'' if config.head == 'avg' else ' (' + method_for_epoch(config, start_epoch) + ')'}; "
              f"{ctx.world} process(es); run folder {run_dir}", flush=True)
        if start_epoch >= config.epochs:
            print(f"eigpool-train: the run has completed its {config.epochs} epochs; nothing to train (--epochs N "
                  "extends it)", flush=True)
    net = model
    if ctx.enabled:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    # Compiled wrappers share the model's parameters; checkpoints keep saving the model itself (no _orig_mod. keys).
    runner = torch.compile(model) if config.compile else model
    if config.compile:
        net = torch.compile(net) if ctx.enabled else runner
    skips = SkipLog(config.bad_images)
    groups = parameter_groups(model)
    probe = _probe_images(splits, config, ctx, device)
    current_method = method_for_epoch(config, start_epoch)
    for epoch in range(start_epoch, config.epochs):
        method = method_for_epoch(config, epoch)
        if method != current_method:
            # Hybrid protocol: the last lr stage trains with the eigen method.
            switch_method(model, config, method)
            current_method = method
        torch.manual_seed(epoch_seed(config, epoch))
        row: dict[str, Any] = {"epoch": epoch + 1, "method": method, "lr": optimizer.param_groups[0]["lr"]}
        try:
            loader = make_loader(splits.train, config, ctx, epoch=epoch)
            row |= train_epoch(net, loader, optimizer, config, ctx, device, epoch, skips, scaler, groups)
            row |= spectrum_statistics(model, probe)
            if ctx.enabled:
                # Every process evaluates its shard with the same BatchNorm statistics: rank 0's.
                for buffer in model.buffers():
                    dist.broadcast(buffer, src=0)
            row |= _evaluate_splits(runner, splits, config, device, ctx, skips)
        except (TrainingDiverged, NonFiniteOutputs) as err:
            text = str(err) if isinstance(err, TrainingDiverged) else f"training diverged in epoch {epoch + 1}: {err}"
            raise _diverged(text, epoch, run_dir, config) from None
        scheduler.step()
        history.append(row)
        is_best = row["val_acc"] is not None and row["val_acc"] > best[0]
        if is_best:
            best = (row["val_acc"], epoch + 1)
        if ctx.main:
            state = checkpoint_state(epoch=epoch + 1, model=model, optimizer=optimizer, scheduler=scheduler,
                                     config=config.to_dict(), history=history, best=best, classes=splits.classes,
                                     method=method, rng=(torch.get_rng_state(), random.getstate()), scaler=scaler)
            record_epoch(run_dir, state, history, is_best)
            print(epoch_line(row, config), flush=True)
        if stop_after is not None and epoch + 1 >= stop_after and epoch + 1 < config.epochs:
            break
    return TrainResult(run_dir, history, best[1])


def _restore(ckpt: dict[str, Any], resume: str, model: nn.Module, optimizer: torch.optim.Optimizer,
             scheduler: Any, scaler: torch.amp.GradScaler) -> tuple[list[dict[str, Any]], tuple[float, int | None]]:
    """Load the states of a checkpoint; returns (history, best). Raises CheckpointError if they do not fit."""
    try:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if scaler.is_enabled():  # amp fp16 (a resume keeps the run's amp)
            scaler.load_state_dict(ckpt["scaler"])
        # Each epoch reseeds from (seed, epoch); the generators are restored too, for code that draws outside epochs.
        torch.set_rng_state(ckpt["torch_rng"])
        random.setstate(ckpt["python_rng"])
        return list(ckpt["history"]), (ckpt["best_val_acc"], ckpt["best_epoch"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"--resume: {resume!r} does not fit the network its settings describe: "
                              f"{type(err).__name__}: {err}") from None


def _probe_images(splits: Splits, config: Config, ctx: Distributed, device: torch.device) -> torch.Tensor:
    """The first training batch, in order: the images whose covariance spectrum each epoch records."""
    for images, _, _ in make_loader(splits.train, config, ctx, epoch=None):
        if len(images):
            return images.to(device)
    raise SettingsError("config: the training split has no readable image")


def _evaluate_splits(model: nn.Module, splits: Splits, config: Config, device: torch.device, ctx: Distributed,
                     skips: SkipLog) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for split in ("val", "test"):
        data = getattr(splits, split)
        result = evaluate(model, data, config, device, ctx, split, skips) if data is not None else None
        row |= {f"{split}_loss": result and result.loss, f"{split}_acc": result and result.accuracy,
                f"{split}_skipped_images": result and result.skipped}
    return row


def _repair_run_dir(run_dir: str, ckpt: dict[str, Any], resume: str, config: Config) -> None:
    """Before a resumed run's first epoch: remove killed writes' temporary files, make best.pt match the record,
    save the (possibly extended) settings."""
    for name in remove_partial_files(run_dir):
        print(f"eigpool-train: removed {name}, left by an interrupted write", file=sys.stderr)
    last_path = resume if os.path.isfile(resume) else os.path.join(resume, "last.pt")
    warning = sync_best(run_dir, ckpt, last_path)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    write_config(config, run_dir)


def resumed_config(ckpt: dict[str, Any], given: dict[str, Any]) -> Config:
    """The settings of a resumed run: the checkpoint's, with the flags ``given`` applied where a resume allows.

    Only the RESUMABLE settings may change; more ``epochs`` extend a run (fewer than it completed are refused);
    ``lr_steps`` may add or move steps after the completed epochs, not before, and not the hybrid switch of a
    completed epoch. Anything else raises SettingsError.
    """
    saved = Config(**ckpt["config"]).validate()
    config = Config(**(saved.to_dict() | given)).validate()
    fixed = sorted(k for k in given if k not in RESUMABLE and getattr(config, k) != getattr(saved, k))
    if fixed:
        raise SettingsError(f"--resume: {fixed} cannot change in a resumed run (it would no longer be the same run); "
                            f"a resume may change {list(RESUMABLE)}; start a new run to change the others")
    done = ckpt["epoch"]
    if config.epochs < done:
        raise SettingsError(f"--resume: the run has completed {done} epochs; epochs must be >= {done}, got "
                            f"{config.epochs}")
    if [s for s in config.lr_steps if s <= done] != [s for s in saved.lr_steps if s <= done] or any(
            method_for_epoch(config, e) != method_for_epoch(saved, e) for e in range(done)):
        raise SettingsError(f"--resume: lr_steps {config.lr_steps} change the schedule of the {done} completed "
                            f"epochs (saved lr_steps {saved.lr_steps}); only steps after epoch {done} may change")
    return config


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``eigpool-train``: --resume, --stop-after, --preset, --config and one flag per setting."""
    parser = argparse.ArgumentParser(prog="eigpool-train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--resume", metavar="RUN", help="continue the run in folder RUN (or from checkpoint RUN) with "
                                                        f"its saved settings; may change {', '.join(RESUMABLE)}")
    parser.add_argument("--stop-after", type=int, metavar="EPOCHS", help="stop after this many completed epochs (>= 1;"
                                                                           " the run can be resumed)")
    add_config_arguments(parser)
    return parser


def _settings(args: argparse.Namespace) -> Config:
    if args.stop_after is not None and args.stop_after < 1:
        raise SettingsError(f"--stop-after must be >= 1, got {args.stop_after}")
    if not args.resume:
        return config_from_args(args)
    if args.preset or args.config:
        raise SettingsError("--resume continues a run with its own settings; it takes no --preset or --config")
    return resumed_config(load_checkpoint(args.resume), flag_settings(args))


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the process exit status (2: a bad setting, file or data set, or a diverged
    run, reported as a message)."""
    args = build_parser().parse_args(argv)
    try:
        result = train(_settings(args), resume=args.resume, stop_after=args.stop_after)
    except USER_ERRORS as err:
        print(f"eigpool-train: error: {err}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if int(os.environ.get("RANK", "0")) == 0:
        print(format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
