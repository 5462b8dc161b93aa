"""The CPU benchmark: every method of ``BASELINES`` on a case table, and the rank-aware table with peak memory.

Protocol: torch's threads set (one by default), ``warmup`` untimed rounds, then rounds in which every method runs
once (round robin, so that drift hits all alike) until ``repeats`` rounds and ``min_seconds``; the median per method.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict

from .cases import RANK_CASES, Case
from .layers import BASELINES, RANK_BASELINES
from .memory import peak_memory
from .table import RANK_RATIOS, header, ratios, row, row_header
from .timing import CLOCKS, setup, time_case

__all__ = ["run", "run_rank_aware"]


def run(cases: Sequence[Case], methods: Sequence[str] | None = None, *, threads: int = 1, warmup: int = 1,
        repeats: int = 5, min_seconds: float = 1.0, seed: int = 0, clock: str = "auto",
        log: Callable[[str], None] = print) -> dict:
    """Time every method on every case; returns {"environment": ..., "results": [{case, seconds, ratios}, ...]}.

    clock: "wall" (elapsed time), "cpu" (this process's CPU time: with one thread it equals the elapsed time on an
    idle machine and does not count time spent waiting for other processes on a shared one), or "auto" (cpu with one
    thread, wall otherwise).
    """
    names, clock, env = setup(BASELINES, methods, threads, clock)
    log(header(env))
    log(row_header(names))
    results = []
    for case in cases:
        seconds = time_case(case, {n: BASELINES[n] for n in names}, warmup, repeats, min_seconds, seed, CLOCKS[clock])
        ratio_values = ratios(seconds)
        results.append({"case": asdict(case), "seconds": seconds, "ratios": ratio_values})
        log(row(case, names, seconds, ratio_values))
    return {"environment": env, "results": results}


def run_rank_aware(cases: Sequence[Case] = tuple(RANK_CASES), methods: Sequence[str] | None = None, *,
                   threads: int = 1, warmup: int = 1, repeats: int = 3, min_seconds: float = 0.0, seed: int = 0,
                   clock: str = "auto", log: Callable[[str], None] = print,
                   memory: Callable[[Case, str, int, int], dict[str, float]] = peak_memory) -> dict:
    """Time and peak memory of ``RANK_BASELINES`` (or the ``methods`` named) on ``cases``: {"environment": ...,
    "results": [{case, seconds, peak_mib, ratios}, ...]}; ratios > 1 mean the automatic (Gram) path is faster or
    smaller, given where both of their methods ran. ``clock`` as in ``run``; ``memory(case, method, threads, seed)``
    measures the peak memory (default ``peak_memory``: a fresh process per method)."""
    names, clock, env = setup(RANK_BASELINES, methods, threads, clock)
    log(header(env, "covariance -> sqrtm -> triu, float64 compute"))
    pairs = [(c, a, b) for c, a, b in RANK_RATIOS if a in names and b in names]
    cols = [c for c, _, _ in pairs] + (["MiB dense/auto"] if {"eigpool_auto", "eigpool_dense"} <= set(names) else [])
    log(" ".join([f"{'case':<28}"] + [f"{n:>13}" for n in names] + [f"{n + ' MiB':>18}" for n in names]
                 + [f"{c:>15}" for c in cols]))
    results = []
    for case in cases:
        seconds = time_case(case, {n: RANK_BASELINES[n] for n in names}, warmup, repeats, min_seconds, seed,
                            CLOCKS[clock])
        peaks = {name: memory(case, name, threads, seed) for name in names}
        ratio_values = ratios(seconds, pairs)
        if "MiB dense/auto" in cols:
            ratio_values["MiB dense/auto"] = peaks["eigpool_dense"]["peak"] / peaks["eigpool_auto"]["peak"]
        results.append({"case": asdict(case), "seconds": seconds, "peak_mib": peaks, "ratios": ratio_values})
        log(" ".join([f"{case!s:<28}"] + [f"{1e3 * seconds[n]:>13.1f}" for n in names]
                     + [f"{peaks[n]['peak']:>18.0f}" for n in names] + [f"{ratio_values[c]:>15.2f}" for c in cols]
                     + [f"  (before the layer: {min(m['before'] for m in peaks.values()):.0f} MiB)"]))
    return {"environment": env, "results": results}
