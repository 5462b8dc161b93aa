"""The benchmark's tables: the ratio columns, the lines printed while it runs, and the Markdown table."""

from __future__ import annotations

import math
from collections.abc import Sequence

from .cases import Case

__all__ = ["RANK_RATIOS", "RATIOS", "header", "markdown", "ratios", "row", "row_header"]

#: (column, numerator, denominator) of the ratios the table prints, where both methods ran.
RATIOS: list[tuple[str, str, str]] = [
    ("pade/exact", "svd_pade", "eigpool_exact"),
    ("torch/exact", "torch_eigh", "eigpool_exact"),
    ("sqrth/exact", "torch_sqrth", "eigpool_exact"),
    ("exact/floor", "eigpool_exact", "floor"),
    ("torchNS/NS", "torch_ns", "eigpool_ns"),
]
RANK_RATIOS: list[tuple[str, str, str]] = [
    ("pade/auto", "svd_pade", "eigpool_auto"),
    ("dense/auto", "eigpool_dense", "eigpool_auto"),
    ("sqrth/auto", "torch_sqrth", "eigpool_auto"),
]


def ratios(seconds: dict[str, float], table: Sequence[tuple[str, str, str]] = tuple(RATIOS)) -> dict[str, float]:
    """The ratio columns of ``table`` whose two methods were timed."""
    return {col: seconds[a] / seconds[b] for col, a, b in table if a in seconds and b in seconds}


def header(env: dict, what: str = "covariance -> sqrtm -> triu") -> str:
    """The first printed line: what is timed, the clock, threads, torch and the processor."""
    v = env["versions"]
    clock = f" ({env['clock']} time)" if "clock" in env else ""
    where = env.get("gpu", env["cpu"])
    return (f"eigpool bench: forward + backward of {what}, median ms{clock}; "
            f"{env['threads']} thread(s), torch {v['torch']}, {where}")


def row_header(names: Sequence[str]) -> str:
    """Column titles of the printed table: case, one per method, one per ratio that can be formed."""
    cols = [f"{'case':<28}"] + [f"{n:>13}" for n in names] + [f"{c:>12}" for c, a, b in RATIOS
                                                                if a in names and b in names]
    return " ".join(cols)


def row(case: Case, names: Sequence[str], seconds: dict, ratio_values: dict) -> str:
    """One printed line: milliseconds per method, then the ratios."""
    cols = ([f"{case!s:<28}"] + [f"{1e3 * seconds[n]:>13.2f}" for n in names]
            + [f"{r:>12.2f}" for r in ratio_values.values()])
    return " ".join(cols)


def markdown(report: dict) -> str:
    """The results as a Markdown table (times in ms, then the ratios); a case that failed shows its error."""
    results = report["results"]
    timed = [r for r in results if "seconds" in r]
    names = list(timed[0]["seconds"]) if timed else []
    cols = list(timed[0]["ratios"]) if timed else []
    lines = ["| case | " + " | ".join(names) + " | " + " | ".join(cols) + " |",
             "|---" * (1 + len(names) + len(cols)) + "|"]
    for r in results:
        case = Case(**r["case"])
        if "seconds" not in r:
            lines.append(f"| {case} | failed: {r['error']} |" + " |" * (len(names) + len(cols) - 1))
            continue
        lines.append(f"| {case} | " + " | ".join(_ms(r["seconds"][n]) for n in names) + " | "
                     + " | ".join(_ratio(r["ratios"].get(c)) for c in cols) + " |")
    return "\n".join(lines)


def _ms(seconds: float) -> str:
    return f"{1e3 * seconds:.1f}" if math.isfinite(seconds) else "n/a"


def _ratio(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.2f}"
