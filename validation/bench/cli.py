"""``eigpool-bench`` and ``python -m eigpool.validation.bench``: the CPU benchmark's command line."""

from __future__ import annotations

import argparse
import itertools
import json
from collections.abc import Sequence

from .cases import CASES, QUICK_CASES, RANK_CASES, Case
from .cpu import run, run_rank_aware
from .layers import BASELINES, RANK_BASELINES
from .table import markdown
from .timing import CLOCKS

__all__ = ["cases_from", "main", "parse"]

DESCRIPTION = ("Benchmark of the GCP layer: forward + backward of covariance -> matrix square root -> "
               "upper-triangular vector.")


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """The parsed command line; an error (SystemExit) for a method of the other table."""
    ap = argparse.ArgumentParser(prog="eigpool-bench", description=DESCRIPTION)
    ap.add_argument("--quick", action="store_true", help="a small subset of cases (under a minute)")
    ap.add_argument("--batch", type=int, nargs="+", help="batch sizes (replaces the case table)")
    ap.add_argument("--dim", type=int, nargs="+", help="channel counts d (replaces the case table)")
    ap.add_argument("--positions", type=int, nargs="+", help="positions N (replaces the case table)")
    ap.add_argument("--dtype", nargs="+", choices=("float32", "float64"), help="dtypes (replaces the case table)")
    ap.add_argument("--methods", nargs="+", choices=sorted({*BASELINES, *RANK_BASELINES}),
                    help=f"methods to run (default: all; with --rank-aware: {', '.join(RANK_BASELINES)})")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1; set OMP_NUM_THREADS too)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds per case (default 1)")
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds per case, at least (default 5)")
    ap.add_argument("--min-seconds", type=float, default=2.0, help="keep timing a case until this much time has passed "
                    "(up to 10x the repeats; default 2)")
    ap.add_argument("--clock", default="auto", choices=("auto", *CLOCKS), help="wall or process CPU time (default "
                    "auto: cpu with one thread, wall otherwise)")
    ap.add_argument("--json", default="eigpool_bench.json", help="output file (default eigpool_bench.json; '' none)")
    ap.add_argument("--markdown", action="store_true", help="also print the table as Markdown")
    ap.add_argument("--rank-aware", action="store_true", help="the rank-aware table (default cases RANK_CASES: B=4, "
                    "d=1024 and 2048, N=196, float32 features computed in float64; --batch etc. replace them) with "
                    "peak memory; several minutes")
    args = ap.parse_args(argv)
    known = RANK_BASELINES if args.rank_aware else BASELINES
    if args.methods and set(args.methods) - set(known):
        ap.error(f"--methods {' '.join(sorted(set(args.methods) - set(known)))}: not a method of this table "
                 f"({', '.join(known)})")
    return args


def cases_from(args: argparse.Namespace, base: Sequence[Case] | None = None) -> list[Case]:
    """The case table ``base`` (default: CASES, or QUICK_CASES with --quick), or the grid the options give, each
    unspecified field taking the table's values."""
    base = list(base if base is not None else QUICK_CASES if args.quick else CASES)
    if not any((args.batch, args.dim, args.positions, args.dtype)):
        return base

    def pick(given: list | None, field: str) -> list:
        return given or sorted({getattr(c, field) for c in base})

    grid = itertools.product(pick(args.dtype, "dtype"), pick(args.batch, "batch"), pick(args.dim, "dim"),
                             pick(args.positions, "positions"))
    return [Case(b, d, n, t) for t, b, d, n in grid]


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (``eigpool-bench``); returns the exit status."""
    args = parse(argv)
    if args.quick:
        args.repeats, args.min_seconds = min(args.repeats, 3), min(args.min_seconds, 0.5)
    if args.rank_aware:
        report = run_rank_aware(cases_from(args, RANK_CASES), args.methods, threads=args.threads, warmup=args.warmup,
                                repeats=min(args.repeats, 3), clock=args.clock)
    else:
        report = run(cases_from(args), args.methods, threads=args.threads, warmup=args.warmup, repeats=args.repeats,
                     min_seconds=args.min_seconds, clock=args.clock)
    if args.markdown:
        print(markdown(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
        print(f"wrote {args.json}")
    return 0
