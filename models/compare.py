"""``python -m eigpool.models.compare``: the embedded-data comparison of pooling heads, as a Markdown table.

Trains every (variant, head) pair with the same budget (the synthetic preset: same backbone, data, epochs, learning
rate schedule, seed) and reports the final test accuracy, the test accuracy at the best validation epoch, and the
training throughput. The heads:

    avg          global average pooling (first order)
    gcp-exact    GCP, eigendecomposition square root with the exact (Loewner) gradient
    gcp-ns       GCP, Newton-Schulz square root (5 iterations), its own backward
    gcp-trunc    GCP, exact, with the ``truncate`` smallest eigenvalues set to zero (TopN)
    gcp-seb      GCP, exact, with the scaling eigen branch
    gcp-hybrid   GCP, Newton-Schulz, then the exact eigen method for the last learning-rate stage
"""

from __future__ import annotations

import argparse
import sys

from .config import Config, load_preset, parse_yaml
from .train import train

__all__ = ["HEAD_SETTINGS", "main"]

HEAD_SETTINGS: dict[str, dict] = {
    "avg": {"head": "avg"},
    "gcp-exact": {"head": "gcp", "method": "eigen"},
    "gcp-ns": {"head": "gcp", "method": "newton_schulz"},
    "gcp-trunc": {"head": "gcp", "method": "eigen", "truncate": 8},
    "gcp-seb": {"head": "gcp", "method": "eigen", "seb": True},
    "gcp-hybrid": {"head": "gcp", "method": "eigen", "hybrid": True},
}


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and print the table; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m eigpool.models.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", default=["standard", "small"])
    parser.add_argument("--heads", nargs="+", default=list(HEAD_SETTINGS), choices=list(HEAD_SETTINGS))
    parser.add_argument("--out-dir", default="runs/compare")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="settings for every run on top of the synthetic preset (YAML values)")
    args = parser.parse_args(argv)
    common = load_preset("synthetic") | {"out_dir": args.out_dir, "progress": False}
    for item in args.set:
        key, _, value = item.partition("=")
        common[key] = parse_yaml(value, f"--set {key}")
    rows = []
    for variant in args.variants:
        for head in args.heads:
            config = Config(**(common | HEAD_SETTINGS[head] | {"variant": variant, "name": f"{variant}-{head}"}))
            result = train(config.validate())
            last = result.history[-1]
            at_best = result.history[result.best_epoch - 1] if result.best_epoch else last
            speed = sum(r["images_per_s"] for r in result.history) / len(result.history)
            rows.append((variant, head, last["test_acc"], at_best["test_acc"], at_best["epoch"], speed))
            print(f"{variant} {head}: final test accuracy {last['test_acc']:.4f}", file=sys.stderr, flush=True)
    print("| variant | head | test acc (final) | test acc (best val epoch) | best val epoch | train images/s |")
    print("|---|---|---|---|---|---|")
    for variant, head, final, best, epoch, speed in rows:
        print(f"| {variant} | {head} | {final:.3f} | {best:.3f} | {epoch} | {speed:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
