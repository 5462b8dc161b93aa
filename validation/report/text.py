"""The report's Markdown: ``accuracy_template.md`` (package data) filled with the measured figures.

The template holds the prose; its fields are ``str.format`` fields over the mapping ``fields(results)`` builds:
``meta``, ``kernel`` (the kernel-table rows by x), ``tie``, ``bounds`` (by method), ``errors`` (the figures section 6
quotes, by name) and the tables and lists, already rendered.
"""

from __future__ import annotations

import math
from importlib import resources
from typing import Any

import numpy as np

from .cases import METHODS, REFERENCES

__all__ = ["fields", "markdown", "table"]

TEMPLATE = "accuracy_template.md"


def markdown(results: dict) -> str:
    """The report ``accuracy.md`` for the results of ``eigpool.validation.report.run``."""
    template = resources.files(__package__).joinpath(TEMPLATE).read_text(encoding="utf-8")
    return template.format_map(fields(results))


def fields(results: dict) -> dict[str, Any]:
    """The values of the template's fields."""
    fams = results["families"]
    reference = results["reference"]
    benign = [r["gradient"] for r in reference if not r["family"].startswith("ill_conditioned")]
    conds = {r["label"]: r["gradient"] for r in reference if r["family"].startswith("ill_conditioned")}
    header = ["method (precision)"] + [f["short"] for f in fams]
    shown = {k: v for k, v in results["methods"].items() if k not in REFERENCES}
    kernel = results["kernel_table"]
    return {
        "meta": results["meta"],
        "reference_table": table(["family", "sqrtm forward", "sqrtm gradient", "SEB forward", "SEB gradient"],
                                 [[r["label"], r["forward"], r["gradient"], r["seb_forward"], r["seb_gradient"]]
                                  for r in reference]),
        "benign_error": max(benign),
        "condition_errors": ", ".join(f"{v:.1e} ({k})" for k, v in conds.items()),
        "methods": "; ".join(f"`{m.name}`" + (f" ({m.note})" if m.note else "") for m in METHODS),
        "gradient_table": table(header, [[k] + [v[f["key"]]["gradient"] for f in fams] for k, v in shown.items()]),
        "forward_table": table(header, [[k] + [v[f["key"]]["forward"] for f in fams] for k, v in shown.items()]),
        "refused": _refused(results),
        "families": "; ".join(f"`{f['short']}` = {f['label']}" for f in fams),
        "kernel_table": _kernel_table(kernel["rows"]),
        "lower_degrees": "; ".join(f"{k} {v}" for k, v in kernel["lower_degrees"].items()),
        "tie": kernel["tie"],
        "tie_bound": _fmt(kernel["tie"]["-P(1)/Q(1)/eps"]),
        "bounds_table": table(["method", "paper", "eigpool: max abs K", "eigpool: max abs dS through sqrtm"],
                              [[b["method"]] + [_fmt3(b.get(k)) for k in ("paper", "eigpool_kernel", "sqrt_gradient")]
                               for b in results["bounds"]]),
        "fd_table": table(["framework", "function", "family", "order", "relative error", "passed"],
                          [[r["framework"], r["function"], r["family"], str(r["order"]), r["error"],
                            r.get("skipped", str(r["passed"]))] for r in results["fd_checks"]]),
        "kernel": {str(r["x"]): r for r in kernel["rows"]},
        "bounds": {b["method"]: b for b in results["bounds"]},
        "errors": _quoted_errors(results),
    }


def _refused(results: dict) -> str:
    """The block listing refused inputs (a leading and a trailing newline), or nothing when none was refused."""
    failures = [(k, f["key"], v[f["key"]]["failures"][0]) for k, v in results["methods"].items()
                for f in results["families"] if v[f["key"]]["failures"]]
    if not failures:
        return ""
    items = "".join(f"- {k}, {fam}: {msg}\n" for k, fam, msg in failures[:8])
    return f"\nRefused inputs (an exception, counted as n/a when every sample failed):\n\n{items}"


def _kernel_table(rows: list[dict]) -> str:
    return table(["x", "1/(1-x)", "Taylor-100", "paper", "Pade [50/50] (30 dig.)", "Pade [50/50] float64", "paper",
                  "eigpool pade", "its bound"],
                 [[f"{r['x']:g}", r["exact"], r["taylor100_error"], r["paper_taylor"], r["pade50_mp_error"],
                   r["pade50_f64_error"], r["paper_pade"], r["eigpool_pade_error"], r["eigpool_pade_bound"]]
                  for r in rows])


def _quoted_errors(results: dict) -> dict[str, float]:
    """The gradient errors section 6 quotes: the worst finite one over the named families (nan if none)."""
    m = results["methods"]
    fams = [f["key"] for f in results["families"]]
    gaps = [f["key"] for f in results["families"] if f["sweep"] == "gap"]
    conds = [f["key"] for f in results["families"] if f["sweep"] == "condition"]
    benign = ["distinct", *gaps, "repeated"]

    def err(method: str, family: str | list[str]) -> float:
        keys = [family] if isinstance(family, str) else family
        values = [m[method][k]["gradient"] for k in keys if k in fams and np.isfinite(m[method][k]["gradient"])]
        return max(values, default=math.nan)

    return {
        "taylor_repeated": err("taylor K=100 (float64)", "repeated"),
        "pade_repeated": err("pade (float64)", "repeated"),
        "clip_repeated": err("clip (float64)", "repeated"),
        "taylor_distinct": err("taylor K=100 (float64)", "distinct"),
        "pade_distinct": err("pade (float64)", "distinct"),
        "power_iteration_distinct": err("power_iteration (float64)", "distinct"),
        "clip_smallest_gap": err("clip (float64)", gaps[-1] if gaps else "distinct"),
        "ns5_distinct": err("Newton-Schulz T=5 (float64)", "distinct"),
        "ns5_ill_conditioned": err("Newton-Schulz T=5 (float64)", conds),
        "ns5_singular": err("Newton-Schulz T=5 (float64)", "singular"),
        "ns10_singular": err("Newton-Schulz T=10 (float64)", "singular"),
        "float32_benign": err("exact (float32)", benign),
        "float32_in_benign": err("exact (float32 in, float64 compute)", benign),
        "float32_in_ill_conditioned": err("exact (float32 in, float64 compute)", conds),
    }


def _fmt(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, str):
        return x
    if isinstance(x, float) and math.isnan(x):
        return "n/a"
    if isinstance(x, float) and math.isinf(x):
        return "inf"
    if x == 0:
        return "0"
    return f"{x:.1e}"


def _fmt3(x: Any) -> str:
    """Three significant digits (the bounds are compared with the paper's 4.55e17)."""
    return _fmt(x) if x is None or not math.isfinite(x) else f"{x:.3g}"


def table(header: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table; numbers as ``_fmt`` writes them (1.2e-15, 0, n/a, inf; strings as they are)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
