"""``python -m eigpool.validation`` or ``eigpool-validate``: write the accuracy report (eigpool.validation.report)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, run the report, print where it went; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="eigpool-validate",
        description="Accuracy report of eigpool's gradient methods: Markdown, JSON and PNG plots.")
    parser.add_argument("--out", default="eigpool-accuracy",
                        help="output folder (accuracy.md, accuracy.json, figures/); default: %(default)s")
    parser.add_argument("--quick", action="store_true", help="small matrices and few samples: seconds, for tests")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random matrices (default: %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    from .report import run

    results = run(args.out, quick=args.quick, seed=args.seed, progress=not args.no_progress)
    print(f"eigpool-validate: wrote {args.out}/accuracy.md, accuracy.json and "
          f"{len(results['meta']['figures'])} figures in {results['meta']['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
