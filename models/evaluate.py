"""``eigpool-evaluate``: accuracy and loss of a saved checkpoint on the validation and test splits.

The checkpoint carries the resolved training config, so the network and the data pipeline are rebuilt exactly;
``--data-root`` points at the data set if it has moved, ``--split`` picks the splits.
"""

from __future__ import annotations

import argparse
import sys

import torch

from .checkpoint import load_checkpoint
from .config import Config
from .data import build_datasets
from .heads import FGVCNet, set_gcp_method
from .train import evaluate, model_from_config

__all__ = ["load_model", "main"]


def load_model(path: str) -> tuple[FGVCNet, Config]:
    """The network of checkpoint ``path`` (a .pt file or a run folder: its last.pt) with its weights, in eval mode,
    and the checkpoint's config. A hybrid run's model uses the method of its last trained epoch."""
    ckpt = load_checkpoint(path)
    config = Config(**ckpt["config"]).validate()
    model = model_from_config(config, len(ckpt["classes"]), pretrained=False)
    if config.head == "gcp" and ckpt["method"] != ("newton_schulz" if config.hybrid else config.method):
        set_gcp_method(model, ckpt["method"], grad=config.grad, seb=config.seb, truncate=config.truncate,
                       iterations=config.iterations, compute_dtype=config.compute_dtype)
    model.load_state_dict(ckpt["model"])
    return model.eval(), config


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; prints one row per split and returns the exit status."""
    parser = argparse.ArgumentParser(prog="eigpool-evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a .pt checkpoint or a run folder (uses its last.pt)")
    parser.add_argument("--split", choices=("val", "test", "both"), default="both")
    parser.add_argument("--data-root", help="where the data set is now (default: the path saved in the checkpoint)")
    parser.add_argument("--batch-size", type=int, help="evaluation batch size (default: the training one)")
    parser.add_argument("--workers", type=int, help="data-loading worker processes")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    model, config = load_model(args.checkpoint)
    for key in ("data_root", "batch_size", "workers", "device"):
        if getattr(args, key) is not None:
            setattr(config, key, getattr(args, key))
    config.progress = False
    splits = build_datasets(config)
    device = torch.device(config.device)
    model.to(device)
    print(f"{'split':>6} {'images':>7} {'loss':>8} {'accuracy':>9}")
    for split in ("val", "test") if args.split == "both" else (args.split,):
        data = getattr(splits, split)
        if data is None:
            print(f"{split:>6} {'-':>7} {'-':>8} {'-':>9}  (no validation split: val_fraction = 0)")
            continue
        loss, acc, n = evaluate(model, data, config, device)
        print(f"{split:>6} {n:>7} {loss:>8.4f} {acc:>9.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
