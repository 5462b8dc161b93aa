"""Timing of forward + backward steps, round robin over the methods, and the record of the machine it ran on."""

from __future__ import annotations

import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from .cases import Case
from .layers import Builder

__all__ = ["CLOCKS", "environment", "inputs", "setup", "time_case"]

CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


def inputs(case: Case, seed: int, device: str = "cpu") -> tuple[Any, Any]:
    """Features X (B, d, N) and the cotangent w (B, d(d+1)/2) of a case, drawn in float64 on the CPU (the same
    numbers on every device), then cast to the case's dtype and moved to ``device``."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    dtype = getattr(torch, case.dtype)
    X = torch.randn(case.batch, case.dim, case.positions, generator=gen, dtype=torch.float64)
    w = torch.randn(case.batch, case.dim * (case.dim + 1) // 2, generator=gen, dtype=torch.float64)
    return X.to(device=device, dtype=dtype), w.to(device=device, dtype=dtype)


def time_case(case: Case, methods: dict[str, Builder], warmup: int, repeats: int, min_seconds: float, seed: int,
              clock: Callable[[], float] = time.perf_counter, *, device: str = "cpu",
              max_seconds: float = math.inf) -> dict[str, float]:
    """Median seconds of forward + backward per method, read on ``clock``; methods run round robin so drift affects
    all alike.

    Rounds continue until ``repeats`` and ``min_seconds`` of timed steps (at most 10 x ``repeats``), or, after one
    timed round, until ``max_seconds`` have passed since the case began (warm-up included). On a CUDA device every
    step is bracketed by ``torch.cuda.synchronize``, so the time is the step's, not its launch's.
    """
    import torch

    X, w = inputs(case, seed, device)
    layers = {name: build(case, device) for name, build in methods.items()}
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else _no_sync
    began = time.perf_counter()

    def step(layer: Callable) -> float:
        x = X.detach().requires_grad_(True)
        sync()
        start = clock()
        layer(x).backward(w)
        sync()
        return clock() - start

    for _ in range(warmup):
        for layer in layers.values():
            step(layer)
    times: dict[str, list[float]] = {name: [] for name in layers}
    while True:
        for name, layer in layers.items():
            times[name].append(step(layer))
        done = len(times[next(iter(times))])
        enough = done >= repeats and (sum(map(sum, times.values())) >= min_seconds or done >= 10 * repeats)
        if enough or time.perf_counter() - began >= max_seconds:
            break
    return {name: statistics.median(ts) for name, ts in times.items()}


def _no_sync() -> None:
    """The CPU runs every step to completion before returning: nothing to wait for."""


def environment(threads: int) -> dict:
    """Threads, CPU, system and the versions of Python, torch, NumPy, eigpool and (if installed) mpmath."""
    import numpy
    import torch

    import eigpool

    versions = {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
                "eigpool": eigpool.__version__}
    try:
        import mpmath

        versions["mpmath"] = mpmath.__version__
    except ImportError:
        pass
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"threads": threads, "torch_threads": torch.get_num_threads(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "cpu": cpu, "machine": platform.machine(),
            "system": platform.system(), "versions": versions}


def setup(table: dict[str, Builder], methods: Sequence[str] | None, threads: int,
          clock: str) -> tuple[list[str], str, dict]:
    """Set torch's threads; return the method names (all of ``table`` if None), the clock name ("auto": cpu with one
    thread, wall otherwise) and the environment record. Unknown methods or clocks raise ValueError."""
    import torch

    torch.set_num_threads(threads)
    names = list(table) if methods is None else list(methods)
    unknown = sorted(set(names) - set(table))
    if unknown:
        raise ValueError(f"bench: unknown method(s) {unknown}; known: {sorted(table)}")
    if clock == "auto":
        clock = "cpu" if threads == 1 else "wall"
    if clock not in CLOCKS:
        raise ValueError(f"bench: clock must be 'auto' or one of {sorted(CLOCKS)}, got {clock!r}")
    return names, clock, {**environment(threads), "clock": clock}
