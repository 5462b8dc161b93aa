"""Checkpoints written atomically: the file on disk is always a complete old version or a complete new one.

A checkpoint is a dict with a format ``version`` (CHECKPOINT_VERSION), the number of completed ``epoch``s, the model,
optimizer and scheduler states (and the fp16 gradient scaler's), the resolved config, the metric history, the best
validation accuracy so far and its epoch, the class names, the GCP method of the last epoch, and the RNG states
(``checkpoint_state``). Writing goes to a temporary file ``<name>.<random>.tmp`` in the same folder, which
``os.replace`` then moves over the target (an atomic rename on POSIX and Windows), so a run killed while saving never
leaves a truncated checkpoint; the temporary file a kill leaves behind is removed when the run resumes
(``eigpool.models.runs``). Every load is ``weights_only=True``: a tampered file cannot run code.

``last.pt`` is written before ``best.pt``. A kill between the two leaves a ``last.pt`` whose own epoch is the best one
while ``best.pt`` still holds an older epoch; ``sync_best`` (run on resume) copies ``last.pt`` over ``best.pt`` in that
case, so ``best.pt`` always holds the epoch ``last.pt`` records as the best.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

import torch

from .errors import CheckpointError

__all__ = ["CHECKPOINT_VERSION", "checkpoint_state", "copy_atomic", "load_checkpoint", "save_atomic", "sync_best",
           "write_atomic"]

CHECKPOINT_VERSION = 1


def write_atomic(path: str | os.PathLike, write: Callable[[Any], None]) -> None:
    """``write(file object)`` into a temporary file beside ``path``, flushed to disk, then ``os.replace`` it."""
    path = os.fspath(path)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=os.path.dirname(path) or ".")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj)`` to ``path`` through a temporary file and ``os.replace``."""
    write_atomic(path, lambda fh: torch.save(obj, fh))


def copy_atomic(source: str | os.PathLike, path: str | os.PathLike) -> None:
    """Copy the file ``source`` to ``path`` through a temporary file and ``os.replace``."""
    with open(source, "rb") as src:
        write_atomic(path, lambda fh: shutil.copyfileobj(src, fh))


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint written by ``eigpool-train`` (tensors on the CPU) and check its format version.

    ``path``: a .pt file, or a run folder (its last.pt). A missing or unreadable file, or another format, raises
    CheckpointError naming the path.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "last.pt")
    if not os.path.isfile(path):
        raise CheckpointError(f"load_checkpoint: no checkpoint at {path!r} (expected a run folder with last.pt, or a "
                              ".pt file)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load raises pickle, zip and runtime errors of several kinds on a bad file
        raise CheckpointError(f"load_checkpoint: cannot read {path!r} as a checkpoint: {type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''}") from None
    version = ckpt.get("version") if isinstance(ckpt, dict) else None
    if version != CHECKPOINT_VERSION:
        raise CheckpointError(f"load_checkpoint: {path!r} has format version {version!r}; this eigpool reads version "
                              f"{CHECKPOINT_VERSION}")
    return ckpt


def checkpoint_state(*, epoch: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                     config: dict[str, Any], history: list[dict[str, Any]], best: tuple[float, int | None],
                     classes: list[str], method: str, rng: tuple[torch.Tensor, Any],
                     scaler: torch.amp.GradScaler | None = None) -> dict[str, Any]:
    """The checkpoint dict after ``epoch`` completed epochs (module docstring); ``best``: (validation accuracy,
    1-based epoch or None); ``method``: the GCP method of that epoch; ``rng``: (torch, Python) generator states;
    ``scaler``: the gradient scaler (its state is empty when it is disabled)."""
    return {"version": CHECKPOINT_VERSION, "epoch": epoch, "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else {}, "config": config,
            "history": history, "best_val_acc": best[0], "best_epoch": best[1], "classes": classes, "method": method,
            "torch_rng": rng[0], "python_rng": rng[1]}


def sync_best(run_dir: str, last: dict[str, Any], last_path: str) -> str | None:
    """Make ``run_dir/best.pt`` hold the epoch that ``last`` (loaded from ``last_path``) records as the best.

    When that epoch is last's own (a kill came between the writes of last.pt and best.pt), ``last_path`` is copied
    over best.pt. Returns a warning when best.pt holds another epoch that cannot be restored (it was replaced or
    removed by hand), else None.
    """
    best_path, best_epoch = os.path.join(run_dir, "best.pt"), last["best_epoch"]
    if best_epoch is None:
        return None
    try:
        held = load_checkpoint(best_path)["epoch"] if os.path.isfile(best_path) else None
    except CheckpointError:
        held = None
    if held == best_epoch:
        return None
    if best_epoch == last["epoch"]:
        copy_atomic(last_path, best_path)
        return None
    return (f"{best_path!r} holds epoch {held}, but the checkpoint records epoch {best_epoch} as the best; that "
            "epoch's weights are not on disk")
