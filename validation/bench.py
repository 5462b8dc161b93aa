"""Benchmark of the GCP layer: forward + backward of covariance -> matrix square root -> upper-triangular vector.

    python -m eigpool.validation.bench [--quick] [--threads 1] [--json eigpool_bench.json]
    eigpool-bench ...

Every method maps features X (B, d, N) to the vector triu(S^(1/2)) (B, d(d+1)/2), S = Xc Xc^T / N, and is timed for
one forward and one backward pass (cotangent fixed per case), all in the case's dtype (eigpool runs with
``compute_dtype=None`` so that every method computes in that dtype). Methods, run in the same process, round robin:

- eigpool_exact: ``eigpool.backends.torch.GCPHead(reduction=None)``, exact Loewner backward;
- eigpool_ns: the same head with ``method="newton_schulz"``, 5 iterations, hand-derived backward;
- (a) torch_eigh: plain PyTorch, ``torch.linalg.eigh`` and autograd (its backward divides by l_i - l_j: inf at ties);
- (b) torch_ns: Newton-Schulz, 5 iterations (iSQRT-COV's schedule), autograd through the iterations;
- (c) svd_pade: the original SVD-Pade layer as METHODS.md describes it: S = X Ibar X^T with the N x N centring
  matrix Ibar, ``torch.linalg.svd``, eigenvalues <= eps set to eps, the [50/50] Pade kernel (coefficients from
  ``mpmath.pade`` on the Taylor coefficients of 1/(1-x) at 20 digits) evaluated term by term, and +inf/-inf in the
  kernel replaced by the largest/smallest finite value of the batch tensor. A baseline only: eigpool never does this.
- (d) floor: no checks and no regularisation, a bare batched ``eigh`` and exactly the products an exact backward needs
  (covariance, U sqrt(l) U^T; U^T G U, U (L o .) U^T, dS Xc): the cost below which no exact layer can go.

Cases and baselines are plain tables (``CASES``, ``BASELINES``): add a row or a named builder to extend the bench.
``--rank-aware`` runs ``RANK_CASES`` instead (B = 4, d = 1024 and 2048 channels over N = 196 positions, float32
features computed in float64): GCPHead's automatic path (the Gram route of eigpool.gram, since N < d) against its
dense path and the original SVD-Pade layer, with the peak resident memory of a fresh process running each.
Reported: median time per method and the ratios svd_pade / eigpool_exact, torch_eigh / eigpool_exact (> 1: eigpool is
faster), eigpool_exact / floor (>= 1; close to 1 is good) and torch_ns / eigpool_ns. Wall-clock medians after warm-up;
threads, versions and the machine are recorded in the JSON file.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from functools import lru_cache

__all__ = ["BASELINES", "CASES", "QUICK_CASES", "RANK_BASELINES", "RANK_CASES", "Case", "main", "peak_memory", "run",
           "run_rank_aware"]


@dataclass(frozen=True)
class Case:
    """One benchmark configuration: batch B, channels d, positions N, dtype name."""

    batch: int
    dim: int
    positions: int
    dtype: str

    def __str__(self) -> str:
        return f"B={self.batch} d={self.dim} N={self.positions} {self.dtype}"


CASES: list[Case] = [Case(b, d, n, t) for t, b, d, n in
                     itertools.product(("float64", "float32"), (8, 32), (64, 128, 256), (196, 784))]
QUICK_CASES: list[Case] = [Case(8, 64, 196, "float64"), Case(8, 128, 784, "float64"), Case(8, 64, 196, "float32")]

# ---------------------------------------------------------------------------------------------------------------------
# Baselines: each builder takes a Case and returns a function X (B, d, N) -> vector (B, d(d+1)/2) to differentiate.


def _torch():
    import torch

    return torch


@lru_cache(maxsize=8)
def _triu_index(d: int):
    torch = _torch()
    i, j = torch.triu_indices(d, d)
    return i * d + j


def _triu(Q):
    return Q.flatten(-2)[..., _triu_index(Q.shape[-1])]


def _covariance(X):
    Xc = X - X.mean(dim=-1, keepdim=True)
    return Xc @ Xc.mT / X.shape[-1]


def _eigpool_exact(case: Case) -> Callable:
    from eigpool.backends.torch import GCPHead

    # The dense layer (covariance -> eigh -> Loewner -> triu) at every N; the Gram route for N < d is --rank-aware's.
    head = GCPHead(case.dim, reduction=None, compute_dtype=None, path="dense")
    return lambda X: head(X[..., None])


def _eigpool_ns(case: Case) -> Callable:
    from eigpool.backends.torch import GCPHead

    head = GCPHead(case.dim, reduction=None, method="newton_schulz", iterations=5, compute_dtype=None)
    return lambda X: head(X[..., None])


def _torch_eigh(case: Case) -> Callable:
    def layer(X):
        l, U = _torch().linalg.eigh(_covariance(X))
        return _triu((U * l.clamp_min(0).sqrt()[..., None, :]) @ U.mT)

    return layer


def _torch_ns(case: Case, iterations: int = 5) -> Callable:
    torch = _torch()

    def layer(X):
        S = _covariance(X)
        eye = torch.eye(S.shape[-1], dtype=S.dtype, device=S.device)
        t = S.diagonal(dim1=-2, dim2=-1).sum(-1)[..., None, None]
        A = S / t
        # iSQRT-COV's schedule: the first step uses Z_0 = I, the last computes only Y.
        T = (3 * eye - A) / 2
        Y, Z = A @ T, T
        for _ in range(iterations - 2):
            T = (3 * eye - Z @ Y) / 2
            Y, Z = Y @ T, T @ Z
        Y = Y @ ((3 * eye - Z @ Y) / 2)
        return _triu(t.sqrt() * Y)

    return layer


@lru_cache(maxsize=1)
def _pade_coefficients() -> tuple[list[float], list[float]]:
    """[50/50] Pade coefficients of 1/(1-x) from 20-digit Taylor coefficients, as the original layer computes them."""
    import mpmath

    with mpmath.workdps(20):
        taylor = mpmath.taylor(lambda x: 1 / (1 - x), 0, 100)
        p, q = mpmath.pade(taylor, 50, 50)
    return [float(c) for c in p], [float(c) for c in q]


def _pade_kernel(s, p: Sequence[float], q: Sequence[float]):
    """K_ij ~ 1/(s_i - s_j) for descending singular values s (B, d): (1/s_max) P(r)/Q(r), r = s_min/s_max, with the
    sign of s_i >= s_j (so the same sign for both entries of a tied pair), zero diagonal, and the batch-global inf
    clean-up of the original code."""
    torch = _torch()
    si, sj = s[..., :, None], s[..., None, :]
    hi, lo = torch.maximum(si, sj), torch.minimum(si, sj)
    r = lo / hi
    # Term by term, as the original layer does: sum_k c_k r^k with the powers built up one product at a time.
    power, P, Q = torch.ones_like(r), torch.zeros_like(r), torch.zeros_like(r)
    for pk, qk in zip(p, q, strict=True):
        P, Q = P + pk * power, Q + qk * power
        power = power * r
    K = torch.where(si >= sj, 1.0, -1.0) * P / (Q * hi)
    K = torch.where(torch.eye(s.shape[-1], dtype=torch.bool, device=s.device), 0.0, K)
    finite = K[torch.isfinite(K)]
    K = torch.where(K == math.inf, finite.max(), K)
    return torch.where(K == -math.inf, finite.min(), K)


def _svd_pade(case: Case) -> Callable:
    torch = _torch()
    p, q = _pade_coefficients()
    n = case.positions
    centring = (torch.eye(n, dtype=getattr(torch, case.dtype)) - 1.0 / n) / n

    class _SVDPade(torch.autograd.Function):
        @staticmethod
        def forward(ctx, S):
            U, s, _ = torch.linalg.svd(S)
            s = torch.where(s <= torch.finfo(s.dtype).eps, torch.finfo(s.dtype).eps, s)
            ctx.save_for_backward(U, s)
            return U, s

        @staticmethod
        def backward(ctx, gU, gs):
            U, s = ctx.saved_tensors
            K = _pade_kernel(s, p, q)
            inner = K.mT * (U.mT @ gU) + torch.diag_embed(gs)
            return U @ inner @ U.mT

    def layer(X):
        U, s = _SVDPade.apply(X @ centring @ X.mT)
        return _triu((U * s.sqrt()[..., None, :]) @ U.mT)

    return layer


def _floor(case: Case) -> Callable:
    torch = _torch()

    class _Floor(torch.autograd.Function):
        @staticmethod
        def forward(ctx, X):
            Xc = X - X.mean(dim=-1, keepdim=True)
            l, U = torch.linalg.eigh(Xc @ Xc.mT / X.shape[-1])
            r = l.clamp_min(0).sqrt()
            ctx.save_for_backward(Xc, U, r)
            return _triu((U * r[..., None, :]) @ U.mT)

        @staticmethod
        def backward(ctx, g):
            Xc, U, r = ctx.saved_tensors
            d = U.shape[-1]
            G = g.new_zeros(*g.shape[:-1], d * d)
            G[..., _triu_index(d)] = g
            G = G.view(*g.shape[:-1], d, d)
            inner = (U.mT @ (G + G.mT) @ U) / (2 * (r[..., :, None] + r[..., None, :]))
            dS = U @ inner @ U.mT
            return ((dS + dS.mT) / Xc.shape[-1]) @ Xc

    return _Floor.apply


BASELINES: dict[str, Callable[[Case], Callable]] = {
    "eigpool_exact": _eigpool_exact,
    "eigpool_ns": _eigpool_ns,
    "torch_eigh": _torch_eigh,
    "torch_ns": _torch_ns,
    "svd_pade": _svd_pade,
    "floor": _floor,
}

#: (column, numerator, denominator) of the ratios the table prints.
RATIOS: list[tuple[str, str, str]] = [
    ("pade/exact", "svd_pade", "eigpool_exact"),
    ("torch/exact", "torch_eigh", "eigpool_exact"),
    ("exact/floor", "eigpool_exact", "floor"),
    ("torchNS/NS", "torch_ns", "eigpool_ns"),
]

# ---------------------------------------------------------------------------------------------------------------------
# Timing.


def _time_case(case: Case, methods: dict[str, Callable], warmup: int, repeats: int, min_seconds: float,
               seed: int, clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """Median seconds of forward + backward per method, read on ``clock``; methods run round robin so drift affects
    all alike."""
    torch = _torch()
    gen = torch.Generator().manual_seed(seed)
    dtype = getattr(torch, case.dtype)
    X = torch.randn(case.batch, case.dim, case.positions, generator=gen, dtype=torch.float64).to(dtype)
    w = torch.randn(case.batch, case.dim * (case.dim + 1) // 2, generator=gen, dtype=torch.float64).to(dtype)
    layers = {name: build(case) for name, build in methods.items()}

    def step(layer: Callable) -> float:
        x = X.detach().requires_grad_(True)
        start = clock()
        layer(x).backward(w)
        return clock() - start

    for _ in range(warmup):
        for layer in layers.values():
            step(layer)
    times: dict[str, list[float]] = {name: [] for name in layers}
    while True:
        for name, layer in layers.items():
            times[name].append(step(layer))
        done = len(times[next(iter(times))])
        if done >= repeats and (sum(map(sum, times.values())) >= min_seconds or done >= 10 * repeats):
            break
    return {name: statistics.median(ts) for name, ts in times.items()}


def _environment(threads: int) -> dict:
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


CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


def _setup(table: dict[str, Callable], methods: Sequence[str] | None, threads: int,
           clock: str) -> tuple[list[str], str, dict]:
    """Set torch's threads; return the method names (all of ``table`` if None), the clock name ("auto": cpu with one
    thread, wall otherwise) and the environment record. Unknown methods or clocks raise ValueError."""
    _torch().set_num_threads(threads)
    names = list(table) if methods is None else list(methods)
    unknown = sorted(set(names) - set(table))
    if unknown:
        raise ValueError(f"bench: unknown method(s) {unknown}; known: {sorted(table)}")
    if clock == "auto":
        clock = "cpu" if threads == 1 else "wall"
    if clock not in CLOCKS:
        raise ValueError(f"bench: clock must be 'auto' or one of {sorted(CLOCKS)}, got {clock!r}")
    return names, clock, {**_environment(threads), "clock": clock}


def run(cases: Sequence[Case], methods: Sequence[str] | None = None, *, threads: int = 1, warmup: int = 1,
        repeats: int = 5, min_seconds: float = 1.0, seed: int = 0, clock: str = "auto",
        log: Callable[[str], None] = print) -> dict:
    """Time every method on every case; returns {"environment": ..., "results": [{case, seconds, ratios}, ...]}.

    clock: "wall" (elapsed time), "cpu" (this process's CPU time: with one thread it equals the elapsed time on an
    idle machine and does not count time spent waiting for other processes on a shared one), or "auto" (cpu with one
    thread, wall otherwise).
    """
    names, clock, env = _setup(BASELINES, methods, threads, clock)
    log(_header(env))
    log(_row_header(names))
    results = []
    for case in cases:
        seconds = _time_case(case, {n: BASELINES[n] for n in names}, warmup, repeats, min_seconds, seed,
                             CLOCKS[clock])
        ratios = {col: seconds[a] / seconds[b] for col, a, b in RATIOS if a in seconds and b in seconds}
        results.append({"case": asdict(case), "seconds": seconds, "ratios": ratios})
        log(_row(case, names, seconds, ratios))
    return {"environment": env, "results": results}


def _header(env: dict) -> str:
    v = env["versions"]
    clock = f" ({env['clock']} time)" if "clock" in env else ""
    return (f"eigpool bench: forward + backward of covariance -> sqrtm -> triu, median ms{clock}; "
            f"{env['threads']} thread(s), torch {v['torch']}, {env['cpu']}")


def _row_header(names: Sequence[str]) -> str:
    cols = [f"{'case':<28}"] + [f"{n:>13}" for n in names] + [f"{c:>12}" for c, a, b in RATIOS
                                                                if a in names and b in names]
    return " ".join(cols)


def _row(case: Case, names: Sequence[str], seconds: dict, ratios: dict) -> str:
    cols = [f"{case!s:<28}"] + [f"{1e3 * seconds[n]:>13.2f}" for n in names] + [f"{r:>12.2f}" for r in ratios.values()]
    return " ".join(cols)


def markdown(report: dict) -> str:
    """The results as a Markdown table (times in ms, then the ratios)."""
    results = report["results"]
    names = list(results[0]["seconds"])
    cols = list(results[0]["ratios"])
    lines = ["| case | " + " | ".join(names) + " | " + " | ".join(cols) + " |",
             "|---" * (1 + len(names) + len(cols)) + "|"]
    for r in results:
        case = Case(**r["case"])
        lines.append(f"| {case} | " + " | ".join(f"{1e3 * r['seconds'][n]:.1f}" for n in names) + " | "
                     + " | ".join(f"{r['ratios'][c]:.2f}" for c in cols) + " |")
    return "\n".join(lines)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="eigpool-bench", description=__doc__.split("\n\n")[0])
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


def _cases(args: argparse.Namespace, base: Sequence[Case] | None = None) -> list[Case]:
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
    args = _parse(argv)
    if args.quick:
        args.repeats, args.min_seconds = min(args.repeats, 3), min(args.min_seconds, 0.5)
    if args.rank_aware:
        report = run_rank_aware(_cases(args, RANK_CASES), args.methods, threads=args.threads, warmup=args.warmup,
                                repeats=min(args.repeats, 3), clock=args.clock)
    else:
        report = run(_cases(args), args.methods, threads=args.threads, warmup=args.warmup, repeats=args.repeats,
                     min_seconds=args.min_seconds, clock=args.clock)
    if args.markdown:
        print(markdown(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
        print(f"wrote {args.json}")
    return 0


# ---------------------------------------------------------------------------------------------------------------------
# Rank-aware cases (eigpool.gram): more channels than positions, as in the original FGVC scripts (2048 ResNet-50
# channels over a 14 x 14 map, N = 196). Features are float32 and every method computes in float64, as those scripts
# do. Time: round robin in this process (``_time_case``). Peak memory: one forward + backward per method in a fresh
# process, whose maximum resident set size (VmHWM) is reported with its peak just before the layer ran.

RANK_CASES: list[Case] = [Case(4, 1024, 196, "float32"), Case(4, 2048, 196, "float32")]


def _float64_head(path: str) -> Callable[[Case], Callable]:
    def build(case: Case) -> Callable:
        from eigpool.backends.torch import GCPHead

        head = GCPHead(case.dim, reduction=None, compute_dtype="float64", path=path)
        return lambda X: head(X[..., None])

    return build


def _svd_pade_float64(case: Case) -> Callable:
    layer = _svd_pade(replace(case, dtype="float64"))
    return lambda X: layer(X.double()).to(X.dtype)


RANK_BASELINES: dict[str, Callable[[Case], Callable]] = {
    "eigpool_auto": _float64_head("auto"),  # the Gram route (eigpool.gram) when N < d: what GCPHead users get
    "eigpool_dense": _float64_head("dense"),
    "svd_pade": _svd_pade_float64,
}
RANK_RATIOS: list[tuple[str, str, str]] = [
    ("pade/auto", "svd_pade", "eigpool_auto"),
    ("dense/auto", "eigpool_dense", "eigpool_auto"),
]


def _max_rss_mib() -> float:
    """This process's peak resident set size in MiB: VmHWM of /proc/self/status. Not ru_maxrss: Linux carries it
    over from the forking parent through exec, so a child of a large process would report the parent's size."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux, bytes on macOS


def _memory_child(case: dict, method: str, threads: int, seed: int) -> None:
    """The child side of ``peak_memory``: one forward + backward, then print the sizes as JSON (MiB)."""
    torch = _torch()
    torch.set_num_threads(threads)
    c = Case(**case)
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(c.batch, c.dim, c.positions, generator=gen, dtype=torch.float64).to(getattr(torch, c.dtype))
    w = torch.randn(c.batch, c.dim * (c.dim + 1) // 2, generator=gen, dtype=torch.float64).to(X.dtype)
    layer = RANK_BASELINES[method](c)
    before = _max_rss_mib()
    layer(X.requires_grad_(True)).backward(w)
    print(json.dumps({"before": before, "peak": _max_rss_mib()}))


def peak_memory(case: Case, method: str, threads: int = 1, seed: int = 0) -> dict[str, float]:
    """Peak resident memory (MiB) of a fresh process running one forward + backward of ``RANK_BASELINES[method]``:
    {"before": its peak before the layer ran (interpreter, torch, inputs), "peak": its peak at the end}."""
    import subprocess

    code = (f"from eigpool.validation.bench import _memory_child; "
            f"_memory_child({asdict(case)!r}, {method!r}, {threads}, {seed})")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"bench: the memory run of {method} on {case} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_rank_aware(cases: Sequence[Case] = tuple(RANK_CASES), methods: Sequence[str] | None = None, *,
                   threads: int = 1, warmup: int = 1, repeats: int = 3, min_seconds: float = 0.0, seed: int = 0,
                   clock: str = "auto", log: Callable[[str], None] = print) -> dict:
    """Time and peak memory of ``RANK_BASELINES`` (or the ``methods`` named) on ``cases``: {"environment": ...,
    "results": [{case, seconds, peak_mib, ratios}, ...]}; ratios > 1 mean the automatic (Gram) path is faster or
    smaller, given where both of their methods ran. ``clock`` as in ``run``."""
    names, clock, env = _setup(RANK_BASELINES, methods, threads, clock)
    log(_header(env).replace("covariance -> sqrtm -> triu", "covariance -> sqrtm -> triu, float64 compute"))
    pairs = [(c, a, b) for c, a, b in RANK_RATIOS if a in names and b in names]
    cols = [c for c, _, _ in pairs] + (["MiB dense/auto"] if {"eigpool_auto", "eigpool_dense"} <= set(names) else [])
    log(" ".join([f"{'case':<28}"] + [f"{n:>13}" for n in names] + [f"{n + ' MiB':>18}" for n in names]
                 + [f"{c:>15}" for c in cols]))
    results = []
    for case in cases:
        seconds = _time_case(case, {n: RANK_BASELINES[n] for n in names}, warmup, repeats, min_seconds, seed,
                             CLOCKS[clock])
        memory = {name: peak_memory(case, name, threads, seed) for name in names}
        ratios = {col: seconds[a] / seconds[b] for col, a, b in pairs}
        if "MiB dense/auto" in cols:
            ratios["MiB dense/auto"] = memory["eigpool_dense"]["peak"] / memory["eigpool_auto"]["peak"]
        results.append({"case": asdict(case), "seconds": seconds, "peak_mib": memory, "ratios": ratios})
        log(" ".join([f"{case!s:<28}"] + [f"{1e3 * seconds[n]:>13.1f}" for n in names]
                     + [f"{memory[n]['peak']:>18.0f}" for n in names] + [f"{ratios[c]:>15.2f}" for c in cols]
                     + [f"  (before the layer: {min(m['before'] for m in memory.values()):.0f} MiB)"]))
    return {"environment": env, "results": results}


if __name__ == "__main__":
    sys.exit(main())
