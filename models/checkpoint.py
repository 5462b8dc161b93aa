"""Checkpoints written atomically: the file on disk is always a complete old version or a complete new one.

A checkpoint is a dict with a format ``version`` (CHECKPOINT_VERSION), the number of completed ``epoch``s, the model,
optimizer and scheduler states, the resolved config, the metric history, the best validation accuracy so far, and the
RNG states. Writing goes to a temporary file in the same folder, which ``os.replace`` then moves over the target (an
atomic rename on POSIX and Windows), so a run killed while saving never leaves a truncated ``last.pt``.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import torch

__all__ = ["CHECKPOINT_VERSION", "load_checkpoint", "save_atomic"]

CHECKPOINT_VERSION = 1


def save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj)`` to ``path`` through a temporary file and ``os.replace``."""
    path = os.fspath(path)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=os.path.dirname(path) or ".")
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint written by ``eigpool-train`` (tensors on the CPU) and check its format version."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "last.pt")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"load_checkpoint: no checkpoint at {path!r} (expected a run folder with last.pt, or a "
                                ".pt file)")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    version = ckpt.get("version") if isinstance(ckpt, dict) else None
    if version != CHECKPOINT_VERSION:
        raise ValueError(f"load_checkpoint: {path!r} has format version {version!r}; this eigpool reads version "
                         f"{CHECKPOINT_VERSION}")
    return ckpt
