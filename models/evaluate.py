"""``eigpool-evaluate``: accuracy and loss of a saved checkpoint on the validation and test splits.

The checkpoint carries the resolved training config, so the network (``factory.load_network``) and the data pipeline
are rebuilt exactly; ``--data-root`` points at the data set if it has moved, ``--split`` picks the splits. A missing
or unreadable checkpoint, a checkpoint of another network, bad options and data-set errors end with a message and
exit status 2.
"""

from __future__ import annotations

import argparse
import sys

import torch

from .config import check_environment
from .data import DatasetLayoutError, ImageReadError, build_datasets
from .engine import NonFiniteOutputs, SkipLog, evaluate
from .errors import CheckpointError, SettingsError
from .factory import load_network

__all__ = ["main"]


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _natural(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; prints one row per split and returns the exit status (2: a reported error)."""
    parser = argparse.ArgumentParser(prog="eigpool-evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a .pt checkpoint or a run folder (uses its last.pt)")
    parser.add_argument("--split", choices=("val", "test", "both"), default="both", help="splits to evaluate")
    parser.add_argument("--data-root", help="where the data set is now (default: the path saved in the checkpoint)")
    parser.add_argument("--batch-size", type=_positive, help="evaluation batch size (default: the training one)")
    parser.add_argument("--workers", type=_natural, help="data-loading worker processes (default: the training one)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="device to evaluate on")
    args = parser.parse_args(argv)
    try:
        model, config, _ = load_network(args.checkpoint)
        for key in ("data_root", "batch_size", "workers", "device"):
            if getattr(args, key) is not None:
                setattr(config, key, getattr(args, key))
        config.progress = False
        check_environment(config)
        splits = build_datasets(config)
        device = torch.device(config.device)
        model.to(device)
        skips = SkipLog(config.bad_images)
        rows = []
        for split in ("val", "test") if args.split == "both" else (args.split,):
            data = getattr(splits, split)
            rows.append((split, None if data is None else evaluate(model, data, config, device, split=split,
                                                                   skips=skips)))
    except (CheckpointError, SettingsError, DatasetLayoutError, ImageReadError, NonFiniteOutputs) as err:
        print(f"eigpool-evaluate: error: {err}", file=sys.stderr)
        return 2
    print(f"{'split':>6} {'images':>7} {'loss':>8} {'accuracy':>9}")
    for split, result in rows:
        if result is None:
            print(f"{split:>6} {'-':>7} {'-':>8} {'-':>9}  (no validation split: val_fraction = 0)")
            continue
        skipped = f"  ({result.skipped} unreadable images skipped)" if result.skipped else ""
        print(f"{split:>6} {result.images:>7} {result.loss:>8.4f} {result.accuracy:>9.4f}{skipped}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
