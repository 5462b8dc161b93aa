"""The accuracy report: every gradient method's forward and gradient error, and the ICCV 2021 tables, from the library.

``run(out_dir)`` writes ``accuracy.md`` (Markdown), ``accuracy.json`` (every figure) and ``figures/*.png`` into
``out_dir``. Sections:

1. The reference. The exact Loewner gradient of sqrtm in float64 (eigpool.sqrtm, grad="exact") is the reference of
   every other figure, so it is itself measured: against an mpmath eigendecomposition (``mp.eigsy``, 40 digits) with
   the same eigenvalue floor, for the distinct, clustered, repeated and ill-conditioned families, sqrtm and SEB.
2. Methods x spectrum families. For each method (exact, taylor K, pade, clip, power_iteration, Newton-Schulz T, SEB)
   in float64 and computed in float32, the relative Frobenius errors ||F - F_ref|| / ||F_ref|| of the forward value and
   ||dS - dS_ref|| / ||dS_ref|| of the gradient of <G, F(S)> for a random symmetric G, over designed spectra.
3. The kernel-approximation table of the ICCV 2021 paper: the Taylor kernel (eigpool.eigh's "taylor", degree 100) and
   the original Pade [50/50] (mpmath.pade at 20 digits) against 1/(1 - x), with eigpool's own rational "pade" kernel.
4. The gradient upper-bound table: the largest kernel value each method produces on spectra in [eps, 1], and the
   largest gradient entry that reaches S through sqrtm.
5. Finite-difference checks of eigpool's own VJPs (NumPy, and PyTorch when its backend imports).
"""

from __future__ import annotations

import functools
import importlib
import json
import math
import os
import platform
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

import eigpool
from eigpool.eigh import kernel_matrix

from .checks import check_grads, check_vjp
from .strategies import spd_matrix

__all__ = ["Config", "METHODS", "run"]

EPS64 = float(np.finfo(np.float64).eps)


# ---------------------------------------------------------------------------------------------------------------------
# What is measured.

@dataclass(frozen=True)
class Family:
    """A spectrum family: ``key`` (JSON), ``label`` (tables), the ``kind`` and options of ``spd_matrix``, and the
    swept parameter (gap or condition number) for the plots."""

    key: str
    label: str
    kind: str
    options: dict = field(default_factory=dict)
    sweep: tuple[str, float] | None = None


def _families(gaps: tuple[float, ...], conditions: tuple[float, ...], d: int) -> list[Family]:
    out = [Family("distinct", "distinct", "distinct")]
    out += [Family(f"clustered_{g:.0e}", f"clustered, gap {g:.0e}", "clustered", {"gap": g}, ("gap", g))
            for g in gaps]
    out.append(Family("repeated", "exactly repeated (x2)", "repeated"))
    n = max(2, d // 4)
    out.append(Family("singular", f"singular covariance (N={n}, rank {n - 1})", "singular", {"samples": n}))
    out += [Family(f"ill_conditioned_{c:.0e}", f"condition {c:.0e}", "ill_conditioned", {"condition": c},
                   ("condition", c)) for c in conditions]
    return out


@dataclass(frozen=True)
class Config:
    """Sizes of a run: matrix size d and samples per family; the mpmath cross-check's samples, size and digits; the
    size of the finite-difference checks; the gap and condition sweeps."""

    d: int = 32
    samples: int = 10
    mp_samples: int = 3
    mp_d: int = 12
    mp_dps: int = 40
    fd_d: int = 8
    gaps: tuple[float, ...] = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8)
    conditions: tuple[float, ...] = (1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8)


QUICK = Config(d=6, samples=2, mp_samples=1, mp_d=6, mp_dps=30, fd_d=4, gaps=(1e-2, 1e-8), conditions=(1e2, 1e8))


@dataclass(frozen=True)
class Method:
    """A gradient method: ``fn(S, compute_dtype) -> F`` and the reference function it is compared with."""

    name: str
    fn: Callable[..., Any]
    reference: str = "sqrt"
    note: str = ""


def _sqrt(S: Any, cd: str | None, **kw: Any) -> Any:
    return eigpool.sqrtm(S, compute_dtype=cd, **kw)


def _ns(S: Any, cd: str | None, iterations: int) -> Any:
    return eigpool.ns_sqrtm(S, iterations=iterations, compute_dtype=cd)


def _seb(S: Any, cd: str | None, **kw: Any) -> Any:
    return eigpool.seb(S, compute_dtype=cd, **kw)


METHODS = [
    Method("exact", _sqrt, note="Loewner (Daleckii-Krein) backward"),
    Method("taylor K=10", partial(_sqrt, grad="taylor", degree=10)),
    Method("taylor K=100", partial(_sqrt, grad="taylor", degree=100), note="SVD-Taylor of ICCV 2021"),
    Method("pade", partial(_sqrt, grad="pade"), note="eigpool's rational kernel, order 2, delta 1e-3"),
    Method("clip", partial(_sqrt, grad="clip"), note="SVD-Trunc, |K| <= 1e10"),
    Method("power_iteration", partial(_sqrt, grad="power_iteration"), note="SVD-PI, 19 iterations"),
    Method("Newton-Schulz T=3", partial(_ns, iterations=3)),
    Method("Newton-Schulz T=5", partial(_ns, iterations=5), note="iSQRT-COV training setting"),
    Method("Newton-Schulz T=10", partial(_ns, iterations=10)),
    Method("SEB", _seb, reference="seb", note="(1 + ||R||_F) S^(1/2), exact kernel"),
    Method("SEB pade", partial(_seb, grad="pade"), reference="seb"),
]

#: Precision variants: (input dtype, compute_dtype). "float32" computes in float32 throughout; "float32 in, f64"
#: is eigpool's default for float32 input (computed in float64, rounded on the way in and out).
PRECISIONS = {"float64": (np.float64, "float64"), "float32": (np.float32, None)}
DEFAULT_F32 = ("float32 in, float64 compute", (np.float32, "float64"))


# ---------------------------------------------------------------------------------------------------------------------
# Measurements.

def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / max(np.linalg.norm(b), np.finfo(np.float64).tiny))


def _value_and_grad(fn: Callable[[Any], Any], S: np.ndarray, G: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    out, pullback = eigpool.vjp(fn, S)
    (dS,) = pullback(G.astype(S.dtype))
    return np.asarray(out, np.float64), np.asarray(dS, np.float64)


def _symmetric_cotangent(rng: np.random.Generator, d: int) -> np.ndarray:
    g = rng.standard_normal((d, d))
    return (g + g.T) / 2


def _sample(family: Family, seed: int, index: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    """Matrix and cotangent of sample ``index`` of ``family`` (deterministic)."""
    s = spd_matrix(seed * 100_003 + index * 101 + _family_hash(family.key), d, family.kind, **family.options)
    return s, _symmetric_cotangent(np.random.default_rng([seed, index, _family_hash(family.key)]), d)


def _family_hash(text: str) -> int:
    """A stable small hash of a family key (Python's hash() is salted per process)."""
    return zlib.crc32(text.encode()) % 1_000_003


def mp_reference(S: np.ndarray, G: np.ndarray, dps: int) -> dict[str, np.ndarray]:
    """sqrt(S), SEB(S) and the gradients of <G, .> at ``dps`` digits from an mpmath eigendecomposition.

    The eigenvalue floor is eigpool's float64 rule, tau = max(d eps max|l|, tiny): the function measured is the
    floored square root m = max(l, tau), g = sqrt(m), with L_ij = (g_i - g_j) / (l_i - l_j) (the true divided
    difference, at ``dps`` digits) and L_ii = g'(l_i) (0 below the floor). SEB: (1 + rho) sqrt(S),
    rho = sqrt(sum m_i exp(-2 m_i)); its gradient adds <G, sqrt(S)> U diag(drho/dl) U^T.
    """
    import mpmath as mp

    with mp.workdps(dps):
        d = S.shape[0]
        E, Q = mp.eigsy(mp.matrix(S.tolist()))
        l = [E[i] for i in range(d)]
        tau = max(d * mp.mpf(EPS64) * max(abs(x) for x in l), mp.mpf(float(np.finfo(np.float64).tiny)))
        m = [max(x, tau) for x in l]
        g = [mp.sqrt(x) for x in m]
        slope = [1 / (2 * mp.sqrt(x)) if x >= tau else mp.mpf(0) for x in l]
        Gh = Q.T * mp.matrix(((G + G.T) / 2).tolist()) * Q
        inner = mp.matrix(d, d)
        for i in range(d):
            for j in range(d):
                if i == j or l[i] == l[j]:
                    lij = slope[i] if i == j else (slope[i] + slope[j]) / 2
                else:
                    lij = (g[i] - g[j]) / (l[i] - l[j])
                inner[i, j] = lij * Gh[i, j]
        F = Q * mp.diag(g) * Q.T
        dS = Q * inner * Q.T
        rho = mp.sqrt(mp.fsum(x * mp.exp(-2 * x) for x in m))
        drho = [(1 - 2 * x) * mp.exp(-2 * x) / (2 * rho) if y >= tau else mp.mpf(0) for x, y in zip(m, l, strict=True)]
        g_dot_f = mp.fsum(Gh[i, i] * g[i] for i in range(d))
        seb_grad = (1 + rho) * dS + g_dot_f * (Q * mp.diag(drho) * Q.T)

        def arr(M: Any) -> np.ndarray:
            return np.array(M.tolist(), dtype=np.float64)

        return {"sqrt": arr(F), "sqrt_grad": arr(dS), "seb": arr((1 + rho) * F), "seb_grad": arr(seb_grad)}


def reference_check(cfg: Config, families: list[Family], seed: int, tick: Callable[[], None]) -> list[dict]:
    """Errors of eigpool's float64 exact sqrtm and SEB (value and gradient) against mpmath, per family."""
    rows = []
    for fam in families:
        if fam.kind == "singular":
            continue
        errs: dict[str, list[float]] = {"forward": [], "gradient": [], "seb_forward": [], "seb_gradient": []}
        for i in range(cfg.mp_samples):
            S, G = _sample(fam, seed, i, cfg.mp_d)
            ref = mp_reference(S, G, cfg.mp_dps)
            F, dS = _value_and_grad(eigpool.sqrtm, S, G)
            Fs, dSs = _value_and_grad(eigpool.seb, S, G)
            errs["forward"].append(_rel(F, ref["sqrt"]))
            errs["gradient"].append(_rel(dS, ref["sqrt_grad"]))
            errs["seb_forward"].append(_rel(Fs, ref["seb"]))
            errs["seb_gradient"].append(_rel(dSs, ref["seb_grad"]))
            tick()
        rows.append({"family": fam.key, "label": fam.label, "samples": cfg.mp_samples,
                     **{k: max(v) for k, v in errs.items()}})
    return rows


def method_errors(cfg: Config, families: list[Family], seed: int, tick: Callable[[], None]) -> dict[str, dict]:
    """{variant: {family: {forward, gradient (max over samples), gradient_median, failures}}}."""
    variants = [(m, p, dt, cd) for m in METHODS for p, (dt, cd) in PRECISIONS.items()]
    variants.append((METHODS[0], DEFAULT_F32[0], *DEFAULT_F32[1]))
    table: dict[str, dict] = {f"{m.name} ({p})": {} for m, p, _, _ in variants}
    for fam in families:
        collected: dict[str, dict[str, list]] = {k: {"forward": [], "gradient": [], "failures": []} for k in table}
        for i in range(cfg.samples):
            S, G = _sample(fam, seed, i, cfg.d)
            refs = {"sqrt": _value_and_grad(eigpool.sqrtm, S, G), "seb": _value_and_grad(eigpool.seb, S, G)}
            for m, p, dt, cd in variants:
                key = f"{m.name} ({p})"
                try:
                    F, dS = _value_and_grad(partial(m.fn, cd=cd), S.astype(dt), G)
                except (ValueError, FloatingPointError) as exc:
                    collected[key]["failures"].append(str(exc).splitlines()[0][:160])
                    continue
                F_ref, dS_ref = refs[m.reference]
                collected[key]["forward"].append(_rel(F, F_ref))
                collected[key]["gradient"].append(_rel(dS, dS_ref))
            tick()
        for key, c in collected.items():
            ok = [x for x in c["gradient"] if np.isfinite(x)]
            table[key][fam.key] = {
                "forward": max(c["forward"], default=math.nan),
                "gradient": max(c["gradient"], default=math.nan),
                "gradient_median": float(np.median(ok)) if ok else math.nan,
                "nonfinite": len(c["gradient"]) - len(ok),
                "failures": c["failures"][:1],
            }
    return table


PAPER_KERNEL = {0.9: (2e-4, 3e-16), 0.99: (36.0, 8e-13), 0.999: (904.0, 3e-10)}


def _taylor_kernel(x: float, degree: int = 100) -> float:
    """eigpool.eigh's Taylor kernel for the pair (l_j, l_i) = (x, 1): K_ij ~ 1/(1 - x)."""
    K = kernel_matrix(np, np.array([x, 1.0]), "taylor", {"degree": degree})
    return float(K[1, 0])


def _pade_kernel(x: float, order: int = 2, delta: float = 1e-3) -> float:
    K = kernel_matrix(np, np.array([x, 1.0]), "pade", {"order": order, "delta": delta})
    return float(K[1, 0])


@functools.lru_cache(maxsize=2)
def original_pade(dps: int = 20) -> tuple[list, list]:
    """The ICCV 2021 Pade [50/50] of 1/(1 - x): mpmath.pade of the Taylor coefficients (mpmath.taylor) at ``dps``."""
    import mpmath as mp

    with mp.workdps(dps):
        coefficients = mp.taylor(lambda t: 1 / (1 - t), 0, 100)
        return mp.pade(coefficients, 50, 50)


def kernel_table(xs: tuple[float, ...] = (0.1, 0.5, 0.9, 0.99, 0.999)) -> dict[str, Any]:
    """Errors of the Taylor-100 kernel, the original Pade [50/50] and eigpool's pade kernel against 1/(1 - x)."""
    import mpmath as mp

    p, q = original_pade()
    pf, qf = np.array([float(c) for c in p]), np.array([float(c) for c in q])
    lower = {}
    for n in (5, 10, 20):
        try:
            with mp.workdps(20):
                mp.pade(mp.taylor(lambda t: 1 / (1 - t), 0, 2 * n), n, n)
            lower[f"[{n}/{n}]"] = "succeeds"
        except ZeroDivisionError as exc:
            lower[f"[{n}/{n}]"] = f"raises ZeroDivisionError: {exc}"
    rows = []
    with mp.workdps(30):
        for x in xs:
            exact = 1 / (1 - mp.mpf(x))
            pade_mp = mp.polyval(p[::-1], mp.mpf(x)) / mp.polyval(q[::-1], mp.mpf(x))
            pade_f64 = float(np.polyval(pf[::-1], x) / np.polyval(qf[::-1], x))
            gap, delta, order = 1 - x, 1e-3, 2
            rows.append({
                "x": x, "exact": float(exact),
                "taylor100": _taylor_kernel(x), "taylor100_error": float(abs(_taylor_kernel(x) - exact)),
                "pade50_mp_error": float(abs(pade_mp - exact)), "pade50_f64_error": float(abs(pade_f64 - exact)),
                "eigpool_pade": _pade_kernel(x), "eigpool_pade_error": float(abs(_pade_kernel(x) - exact)),
                "eigpool_pade_bound": float(exact) * (delta / gap) ** (2 * order),
                "paper_taylor": PAPER_KERNEL.get(x, (None, None))[0],
                "paper_pade": PAPER_KERNEL.get(x, (None, None))[1],
            })
    with mp.workdps(20):
        # The tie value in the paper's arithmetic (20 digits): Q(1) is pure coefficient noise, so digits matter.
        p1, q1 = mp.polyval(p[::-1], 1), mp.polyval(q[::-1], 1)
        tie = {"P(1)": float(p1), "Q(1)": float(q1), "-P(1)/Q(1)/eps": float(-p1 / q1 / EPS64) if q1 != 0 else None,
               "Q(1) in float64": float(np.polyval(qf[::-1], 1.0)), "P(1) in float64": float(np.polyval(pf[::-1], 1.0))}
    return {"rows": rows, "lower_degrees": lower, "tie": tie}


def _grid() -> np.ndarray:
    """Spectra (n, 3) ascending: (l_j, l_j (1 + delta), 1), l_j in [eps, 1/2], delta in {0} U [1e-16, 1]."""
    lj = np.geomspace(EPS64, 0.5, 60)[:, None]
    rel = np.concatenate([[0.0], np.geomspace(1e-16, 1.0, 60)])[None, :]
    low, high = np.broadcast_arrays(lj, lj * (1 + rel))
    return np.sort(np.stack([low.ravel(), high.ravel(), np.ones(low.size)], axis=-1), axis=-1)


def _max_kernel(grad: str, options: dict) -> float:
    """max |K_ij| of eigpool's kernel over the spectra of ``_grid`` (one batched call)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.max(np.abs(kernel_matrix(np, _grid(), grad, options))))


def _max_sqrt_gradient(grad: str, options: dict) -> float:
    """max |entry| of the gradient of <G, sqrtm(S)> reaching S, G = E_01 + E_10, for S = diag(l) over ``_grid``:
    the gradient that actually flows, after the eigenvalue floor and the Loewner or kernel product."""
    l = _grid()
    S = l[:, :, None] * np.eye(3)
    G = np.zeros_like(S)
    G[:, 0, 1] = G[:, 1, 0] = 1.0
    _, dS = _value_and_grad(partial(eigpool.sqrtm, grad=grad, **options), S, G)
    return float(np.max(np.abs(dS)))


def bounds_table(kernel: dict[str, Any]) -> list[dict]:
    """The ICCV 2021 gradient upper bounds next to eigpool's, measured on its kernels and on sqrtm's gradient."""
    with np.errstate(divide="ignore"):
        original = float(np.max(np.abs(1.0 / (np.array([EPS64]) - np.array([EPS64])))))
    rows = [
        {"method": "Original (exact K, no tie rule)", "paper": math.inf, "eigpool_kernel": original,
         "eigpool_kernel_name": "1/(l_i - l_j) at l_i = l_j = eps"},
        {"method": "eigpool exact (ties -> 0)", "paper": None, "grad": "exact", "options": {}},
        {"method": "Trunc (clip)", "paper": 1e10, "grad": "clip", "options": {}},
        {"method": "TopN (truncate, exact K)", "paper": 4.5e15, "grad": "exact", "options": {}},
        {"method": "Taylor K=100", "paper": 4.55e17, "grad": "taylor", "options": {"degree": 100}},
        {"method": "Pade (original [50/50])", "paper": 6.0e36,
         "eigpool_kernel": kernel["tie"]["-P(1)/Q(1)/eps"], "eigpool_kernel_name": "-P(1)/Q(1)/eps, mpmath 20 digits"},
        {"method": "eigpool pade (order 2, delta 1e-3)", "paper": None, "grad": "pade", "options": {}},
        {"method": "power_iteration (19)", "paper": None, "grad": "power_iteration", "options": {}},
    ]
    for r in rows:
        if "grad" in r:
            r["eigpool_kernel"] = _max_kernel(r["grad"], r["options"])
            r["sqrt_gradient"] = _max_sqrt_gradient(r["grad"], r["options"])
    return rows


def fd_checks(cfg: Config, seed: int, tick: Callable[[], None]) -> list[dict]:
    """check_vjp of eigpool's functions (NumPy) and, if eigpool.backends.torch imports, on tensors (with order 2)."""
    functions = {"sqrtm": eigpool.sqrtm, "invsqrtm": eigpool.invsqrtm, "logm": eigpool.logm,
                 "ns_sqrtm (T=5)": partial(eigpool.ns_sqrtm, iterations=5), "seb": eigpool.seb}
    cases = [Family("distinct", "distinct", "distinct"),
             Family("clustered_1e-08", "clustered, gap 1e-08", "clustered", {"gap": 1e-8}),
             Family("repeated", "exactly repeated", "repeated"),
             Family("ill_conditioned_1e+04", "condition 1e+04", "ill_conditioned", {"condition": 1e4})]
    rows = []
    for fam in cases:
        S, _ = _sample(fam, seed, 0, cfg.fd_d)
        step = 0.1 * float(np.linalg.eigvalsh(S)[0])
        for name, fn in functions.items():
            r = check_vjp(fn, S, step=step, directions=3, seed=seed, entries=False)
            rows.append({"framework": "numpy", "function": name, "family": fam.key, "order": 1, "error": r.error,
                         "passed": r.passed})
        tick()
    try:
        import torch

        importlib.import_module("eigpool.backends.torch")  # the binder eigpool uses for tensors
    except ImportError as exc:
        rows.append({"framework": "torch", "function": "-", "family": "-", "order": 0, "error": math.nan,
                     "passed": False, "skipped": f"eigpool.backends.torch unavailable: {exc}"})
        return rows
    for fam in cases[:2]:
        S, _ = _sample(fam, seed, 0, min(cfg.fd_d, 5))
        step = 0.1 * float(np.linalg.eigvalsh(S)[0])
        T = torch.tensor(S)
        for name in ("sqrtm", "seb"):
            res = check_grads(functions[name], [T], order=2, modes=("rev",), step=step, seed=seed, rtol=1e-5)
            for order, _, c in res.checks:
                rows.append({"framework": "torch", "function": name, "family": fam.key, "order": order,
                             "error": c.error, "passed": c.passed})
        tick()
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# Output: figures, Markdown, JSON.

#: The variants that are the references of the others (0 by definition; measured against mpmath in section 1).
REFERENCES = ("exact (float64)", "SEB (float64)")
PLOT_METHODS = ["taylor K=10", "taylor K=100", "pade", "clip", "power_iteration", "Newton-Schulz T=5",
                "Newton-Schulz T=10", "SEB pade"]
FLOOR = 1e-17


def _plot_sweep(results: dict, sweep: str, path: Path, title: str, xlabel: str, mp_d: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fams = [f for f in results["families"] if f["sweep"] == sweep]
    xs = [f["value"] for f in fams]
    fig, ax = plt.subplots(figsize=(9.5, 4.8), dpi=110)
    ref = {r["family"]: r for r in results["reference"]}
    ax.plot(xs, [max(ref[f["key"]]["gradient"], FLOOR) if f["key"] in ref else np.nan for f in fams], "k-o", lw=2.2,
            label=f"exact, float64 (vs mpmath, d = {mp_d})")
    ax.plot(xs, [max(results["methods"]["exact (float32)"][f["key"]]["gradient"], FLOOR) for f in fams], "k--s",
            label="exact, computed in float32")
    markers = "v^<>dph*"
    for k, name in enumerate(PLOT_METHODS):
        ys = [max(results["methods"][f"{name} (float64)"][f["key"]]["gradient"], FLOOR) for f in fams]
        ax.plot(xs, ys, marker=markers[k % len(markers)], label=f"{name}, float64")
    ax.set_xscale("log")
    ax.set_yscale("log")
    if sweep == "gap":
        ax.invert_xaxis()
    ax.set_xlabel(xlabel)
    ax.set_ylabel("relative gradient error (max over samples)")
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _plot_kernels(kernel: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = 1 - np.geomspace(0.9, 1e-4, 200)
    exact = 1 / (1 - xs)
    p, q = original_pade()
    pf, qf = np.array([float(c) for c in p]), np.array([float(c) for c in q])
    taylor = np.array([_taylor_kernel(x) for x in xs])
    pade50 = np.polyval(pf[::-1], xs) / np.polyval(qf[::-1], xs)
    ours = np.array([_pade_kernel(x) for x in xs])
    fig, ax = plt.subplots(figsize=(7.5, 4.6), dpi=110)
    ax.loglog(1 - xs, np.maximum(np.abs(taylor - exact) / exact, FLOOR), label="Taylor, degree 100 (eigpool 'taylor')")
    ax.loglog(1 - xs, np.maximum(np.abs(pade50 - exact) / exact, FLOOR),
              label="original Pade [50/50] (mpmath.pade, evaluated in float64)")
    ax.loglog(1 - xs, np.abs(ours - exact) / exact, label="eigpool 'pade' (order 2, delta 1e-3)")
    for row in kernel["rows"]:
        if row["paper_taylor"] is not None:
            ax.plot(1 - row["x"], row["paper_taylor"] / row["exact"], "kx")
            ax.plot(1 - row["x"], row["paper_pade"] / row["exact"], "k+")
    ax.plot([], [], "kx", label="ICCV 2021 Table 3, Taylor")
    ax.plot([], [], "k+", label="ICCV 2021 Table 3, Pade")
    ax.set_xlabel("relative eigen-gap 1 - x = (l_i - l_j) / l_i")
    ax.set_ylabel("relative error of the kernel vs 1/(1 - x)")
    ax.set_title("Kernel approximations of 1/(1 - x)")
    ax.invert_xaxis()
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _plot_heatmap(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in results["methods"] if k not in REFERENCES]
    fams = results["families"]
    data = np.array([[results["methods"][k][f["key"]]["gradient"] for f in fams] for k in keys])
    logs = np.log10(np.maximum(np.nan_to_num(data, nan=1e3, posinf=1e3), FLOOR))
    fig, ax = plt.subplots(figsize=(3.6 + 0.55 * len(fams), 1.2 + 0.3 * len(keys)), dpi=110)
    im = ax.imshow(logs, cmap="viridis_r", vmin=-16, vmax=1, aspect="auto")
    ax.set_xticks(range(len(fams)), [f["short"] for f in fams], rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(len(keys)), keys, fontsize=8)
    for i in range(len(keys)):
        for j in range(len(fams)):
            ax.text(j, i, f"{round(float(logs[i, j])):d}", ha="center", va="center", fontsize=6.5,
                    color="white" if logs[i, j] < -8 else "black")
    fig.colorbar(im, ax=ax, label="log10 relative gradient error")
    ax.set_title("Gradient error vs the exact float64 gradient\n(sqrtm; SEB rows: SEB)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


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


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return lines


def _markdown(results: dict) -> str:
    meta, fams = results["meta"], results["families"]
    out = ["# eigpool accuracy report", "",
           f"Generated by `{meta['command']}` in {meta['seconds']:.0f} s on {meta['machine']} "
           f"(eigpool {meta['eigpool']}, NumPy {meta['numpy']}, mpmath {meta['mpmath']}; seed {meta['seed']}). "
           f"Matrices are {meta['d']} x {meta['d']}, {meta['samples']} samples per spectrum family; every number is "
           "also in `accuracy.json`. Errors are relative Frobenius norms, the maximum over the samples.", ""]
    out += ["## 1. The reference is measured", "",
            "Every other figure compares with eigpool's exact Loewner gradient in float64 (`eigpool.sqrtm`, "
            "`grad=\"exact\"`). Here that reference is compared with an independent mpmath computation "
            f"(`mp.eigsy` at {meta['mp_dps']} digits, the same eigenvalue floor, true divided differences), "
            f"{meta['mp_samples']} matrices of size {meta['mp_d']} x {meta['mp_d']} per family "
            "(the worst is shown):", ""]
    out += _table(["family", "sqrtm forward", "sqrtm gradient", "SEB forward", "SEB gradient"],
                  [[r["label"], r["forward"], r["gradient"], r["seb_forward"], r["seb_gradient"]]
                   for r in results["reference"]])
    benign = [r["gradient"] for r in results["reference"] if not r["family"].startswith("ill_conditioned")]
    conds = {r["label"]: r["gradient"] for r in results["reference"] if r["family"].startswith("ill_conditioned")}
    out += ["", f"On the distinct, clustered and repeated families the float64 exact gradient is within "
            f"{max(benign):.1e} of the {meta['mp_dps']}-digit one, down to gaps of 1e-8 and at exactly repeated "
            "eigenvalues, where 1/(l_i - l_j) itself is meaningless: the Loewner formula never forms it. On the "
            "ill-conditioned families (the singular family has no reference here: its float64 eigenvalues at round-off "
            "level decide which ones the floor clamps) the error grows to "
            + ", ".join(f"{v:.1e} ({k})" for k, v in conds.items())
            + ", below condition x eps: the backward-stability limit of any float64 eigensolver (LAPACK's eigenvalues "
            "carry an absolute error of ~eps max|l|, and the gradient of sqrt weighs the smallest ones by "
            "1/sqrt(l)).", ""]
    out += ["## 2. Every method against the exact derivative", "",
            "Gradient of <G, F(S)> for a random symmetric G, relative to the exact float64 gradient of the same "
            "function (sqrtm; SEB rows: SEB). Newton-Schulz is compared with the exact square root: it is a different "
            "function, so its error includes the forward error. The references themselves, exact (float64) and SEB "
            "(float64), are measured in section 1. `float32` = computed in float32 "
            "(`compute_dtype=None`); `float32 in, float64 compute` is eigpool's default for float32 input.", ""]
    out += ["Methods: " + "; ".join(f"`{m.name}`" + (f" ({m.note})" if m.note else "") for m in METHODS) + ".", "",
            "![gradient error vs eigen-gap](figures/gradient_error_vs_gap.png)", ""]
    header = ["method (precision)"] + [f["short"] for f in fams]
    out += ["### Gradient error", ""]
    shown = {k: v for k, v in results["methods"].items() if k not in REFERENCES}
    out += _table(header, [[k] + [v[f["key"]]["gradient"] for f in fams] for k, v in shown.items()])
    out += ["", "### Forward error", ""]
    out += _table(header, [[k] + [v[f["key"]]["forward"] for f in fams] for k, v in shown.items()])
    failures = [(k, f["key"], v[f["key"]]["failures"][0]) for k, v in results["methods"].items() for f in fams
                if v[f["key"]]["failures"]]
    if failures:
        out += ["", "Refused inputs (an exception, counted as n/a when every sample failed):", ""]
        out += [f"- {k}, {fam}: {msg}" for k, fam, msg in failures[:8]]
    out += ["", "Families: " + "; ".join(f"`{f['short']}` = {f['label']}" for f in fams) + ".", "",
            "![gradient error vs condition number](figures/gradient_error_vs_condition.png)", "",
            "![all methods and families](figures/method_heatmap.png)", ""]
    out += _kernel_section(results["kernel_table"])
    out += _bounds_section(results["bounds"])
    out += ["## 5. Finite-difference checks of eigpool's own VJPs", "",
            "`check_vjp` (Richardson-extrapolated central differences in float64, 3 random symmetric directions, "
            "step 0.1 l_min) on NumPy arrays; on PyTorch tensors `check_grads(order=2)`, the VJP of the VJP.", ""]
    out += _table(["framework", "function", "family", "order", "relative error", "passed"],
                  [[r["framework"], r["function"], r["family"], str(r["order"]), r["error"],
                    r.get("skipped", str(r["passed"]))] for r in results["fd_checks"]])
    out += ["", "## 6. Where eigpool's numbers differ from the paper's, and why", ""]
    out += _differences(results)
    out += ["", "## Reproduce, and check your own gradients", "",
            "    python -m eigpool.validation --out docs        # this report (eigpool-validate does the same)",
            "    python -m eigpool.validation --quick --out /tmp/report   # a small version in seconds", "",
            "The same checkers work on your functions (NumPy with a pullback, PyTorch with autograd, CuPy):", "",
            "    from eigpool.validation import check_vjp, check_grads",
            "    from eigpool.validation.testing import assert_vjp_close",
            "    from eigpool.validation.strategies import spd_matrices, spd_matrix",
            "    assert_vjp_close(torch_fn, torch.tensor(spd_matrix(0, 8, \"clustered\", gap=1e-6)))",
            "    print(check_grads(torch_fn, [S], order=2))     # explains any mismatch entry by entry", ""]
    return "\n".join(out)


def _kernel_section(kernel: dict) -> list[str]:
    tie = kernel["tie"]
    out = ["## 3. Kernel approximations of 1/(1 - x) (ICCV 2021, Table 3)", "",
           "For a pair l_i >= l_j, x = l_j / l_i and 1/(l_i - l_j) = (1/l_i) / (1 - x). Taylor: eigpool.eigh's "
           "`taylor` kernel (degree 100) evaluated at (l_j, l_i) = (x, 1). Original Pade: `mpmath.pade` [50/50] of "
           "the Taylor coefficients from `mpmath.taylor` at 20 digits, as the reference code does, evaluated at 30 "
           "digits and in float64. eigpool `pade`: x^3 / (x^4 + delta^4) in the relative gap 1 - x, delta = 1e-3, with "
           "its bound (delta / (1 - x))^4 / (1 - x). Absolute errors:", ""]
    out += _table(["x", "1/(1-x)", "Taylor-100", "paper", "Pade [50/50] (30 dig.)", "Pade [50/50] float64",
                   "paper", "eigpool pade", "its bound"],
                  [[f"{r['x']:g}", r["exact"], r["taylor100_error"], r["paper_taylor"], r["pade50_mp_error"],
                    r["pade50_f64_error"], r["paper_pade"], r["eigpool_pade_error"], r["eigpool_pade_bound"]]
                   for r in kernel["rows"]])
    out += ["", "![kernel approximation errors](figures/kernel_approximation.png)", "",
            "The [50/50] approximant is 1/(1 - x) itself: every Pade approximant [L/M], M >= 1, of the geometric "
            "series is, since the linear system for Q has rank one. mpmath returns one only because the Taylor "
            "coefficients carry ~1e-21 noise; with exact coefficients, and at lower degrees, it refuses: "
            + "; ".join(f"{k} {v}" for k, v in kernel["lower_degrees"].items()) + ". "
            f"At the tie x = 1, Q(1) = {tie['Q(1)']:.2e} at 20 digits and {tie['Q(1) in float64']:g} in float64 "
            f"(P(1) = {tie['P(1)']:.4f}): the kernel has a pole at r = 1, so the original SVD-Pade is the exact "
            "gradient for distinct eigenvalues and -inf or a noise-sized value at ties. eigpool's `pade` is a "
            "designed alternative: smooth on [0, 1], 0 at ties, relative error below (delta / gap)^4.", ""]
    return out


def _bounds_section(bounds: list[dict]) -> list[str]:
    out = ["## 4. Gradient upper bounds (ICCV 2021, Table 6)", "",
           "Paper: the largest kernel value for eigenvalues clamped at eps. eigpool: the largest |K_ij| its kernel "
           "returns on spectra (l_j, l_j (1 + delta), 1) with l_j in [eps, 1/2] and delta in {0} U [1e-16, 1] "
           "(`eigpool.eigh.kernel_matrix`), and the largest entry of the gradient that actually reaches S through "
           "`eigpool.sqrtm` on the same spectra (after the eigenvalue floor d eps max|l| and the Loewner or kernel "
           "product):", ""]
    out += _table(["method", "paper", "eigpool: max abs K", "eigpool: max abs dS through sqrtm"],
                  [[b["method"]] + [_fmt3(b.get(k)) for k in ("paper", "eigpool_kernel", "sqrt_gradient")]
                   for b in bounds])
    return out + [""]


def _differences(results: dict) -> list[str]:
    rows = {r["x"]: r for r in results["kernel_table"]["rows"]}
    tie = results["kernel_table"]["tie"]
    b = {r["method"]: r for r in results["bounds"]}
    m = results["methods"]
    fams = [f["key"] for f in results["families"]]
    gaps = [f["key"] for f in results["families"] if f["sweep"] == "gap"]
    conds = [f["key"] for f in results["families"] if f["sweep"] == "condition"]
    benign = ["distinct", *gaps, "repeated"]

    def err(method: str, family: str | list[str], what: str = "gradient") -> float:
        keys = [family] if isinstance(family, str) else family
        values = [m[method][k][what] for k in keys if k in fams and np.isfinite(m[method][k][what])]
        return max(values, default=math.nan)

    return [
        f"- Taylor-100 kernel: {rows[0.9]['taylor100_error']:.1e}, {rows[0.99]['taylor100_error']:.3g} and "
        f"{rows[0.999]['taylor100_error']:.4g} at x = 0.9, 0.99, 0.999 against the paper's 2e-4, 36 and 904: the "
        "same numbers (the error is x^101 / (1 - x) exactly; eigpool evaluates the series as -expm1(101 log1p(-gap)) "
        "/ gap, so it adds no round-off).",
        f"- Original Pade [50/50]: evaluated in float64 its error is {rows[0.9]['pade50_f64_error']:.1e}, "
        f"{rows[0.99]['pade50_f64_error']:.1e}, {rows[0.999]['pade50_f64_error']:.1e} (paper 3e-16, 8e-13, 3e-10): the "
        "same orders of magnitude; the digits depend on the ~1e-21 noise in the coefficients and on the order of "
        f"evaluation. At 30 digits the error is far smaller ({rows[0.999]['pade50_mp_error']:.1e} at 0.999): the "
        "approximant is 1/(1 - x) up to that noise, so its 'accuracy' is the accuracy of evaluating 1/(1 - x).",
        f"- Pade tie value: -P(1)/Q(1)/eps = {_fmt(tie['-P(1)/Q(1)/eps'])} at 20 digits here against the paper's "
        "6.0e36. Q(1), the sum of the denominator's coefficients, cancels down to the coefficient noise; its size and "
        "sign are that noise, so this 'bound' belongs to the rounding of one run, not to the method. In float64 Q(1) "
        "is exactly 0 and the kernel is -inf at ties.",
        f"- Taylor bound: eigpool's kernel gives {b['Taylor K=100']['eigpool_kernel']:.3g} at l_i = l_j = eps, the "
        "paper's (K+1)/eps = 4.55e17. What reaches S through `sqrtm` is bounded by "
        f"{b['Taylor K=100']['sqrt_gradient']:.2g}: eigenvalues are floored at d eps max|l| and the kernel is "
        "multiplied by sqrt(l_i) - sqrt(l_j), which vanishes at ties; the bound is then the diagonal f'(floor).",
        "- Exact kernel: the paper's 'Original' is inf at ties. eigpool's exact kernel sets tied pairs "
        f"(|gap| <= d eps max|l|) to 0, so its largest value, {b['eigpool exact (ties -> 0)']['eigpool_kernel']:.2g}, "
        "sits just above the tie tolerance; TopN keeps that kernel (eigpool truncates through the Loewner formula). "
        "The square root never uses the kernel: its Loewner entries 1/(sqrt(l_i) + sqrt(l_j)) are bounded by "
        f"1/(2 sqrt(floor)), {b['eigpool exact (ties -> 0)']['sqrt_gradient']:.2g} here.",
        f"- Trunc: {b['Trunc (clip)']['eigpool_kernel']:.3g}, as in the paper (1e10).",
        "- Every kernel method loses the gradient inside clusters. It enters the backward as K_ij (g(l_i) - g(l_j)); "
        "inside a cluster narrower than the kernel's resolution this product is ~0, while the exact Loewner entry is "
        f"g'(l). Hence errors of {err('taylor K=100 (float64)', 'repeated'):.1e} (Taylor-100), "
        f"{err('pade (float64)', 'repeated'):.1e} (pade) and {err('clip (float64)', 'repeated'):.1e} (clip) on exactly "
        "repeated eigenvalues, where the exact backward is as accurate as anywhere. This is inherent to the kernel "
        "methods of the paper, not to eigpool's implementation of them.",
        f"- Between clusters the kernels differ: on distinct spectra Taylor-100 is off by "
        f"{err('taylor K=100 (float64)', 'distinct'):.1e} (the tail r^101 of pairs with ratio close to 1), "
        f"eigpool's pade by {err('pade (float64)', 'distinct'):.1e}, power iteration by "
        f"{err('power_iteration (float64)', 'distinct'):.1e}. Clip (the exact kernel, capped at 1e10) loses "
        "accuracy as eps / gap through the difference g(l_i) - g(l_j) it multiplies "
        f"({err('clip (float64)', gaps[-1] if gaps else 'distinct'):.1e} at the smallest gap here): the "
        "cancellation that the Loewner formula avoids.",
        f"- Newton-Schulz T=5 has a gradient error of {err('Newton-Schulz T=5 (float64)', 'distinct'):.1e} on "
        f"distinct spectra and up to {err('Newton-Schulz T=5 (float64)', conds):.1e} on ill-conditioned ones against "
        "the exact square root's: the trace-normalised iteration has not converged on the small eigenvalues "
        "(METHODS.md section 4). It is a different function, not an approximation of the exact gradient.",
        f"- Singular covariances: the exact backward passes no gradient to eigenvalues below the floor (the "
        "documented subgradient of max(l, floor)); the true derivative of sqrt is infinite there. Newton-Schulz has no "
        "floor, so its gradient in the null space grows with T (error "
        f"{err('Newton-Schulz T=5 (float64)', 'singular'):.1e} at T=5, "
        f"{err('Newton-Schulz T=10 (float64)', 'singular'):.1e} at T=10): that column compares conventions.",
        f"- float32: computed in float32 throughout, the exact gradient stays within "
        f"{err('exact (float32)', benign):.1e} on the distinct, clustered and repeated families (the Loewner formula "
        "needs no division by a gap), and eigpool's default for float32 input (float64 inside) within "
        f"{err('exact (float32 in, float64 compute)', benign):.1e}. At condition 1e8 both reach "
        f"{err('exact (float32 in, float64 compute)', conds):.1e}: rounding the input to float32 (6e-8 relative) "
        "already moves eigenvalues of size 1e-8 max|l| by more than themselves, so no float32 input can do better. "
        "On the singular family the float32 floor (d eps32 max|l|) defines another function than the float64 one.",
    ]


def run(out_dir: str | os.PathLike, *, quick: bool = False, seed: int = 0, progress: bool = True,
        command: str = "python -m eigpool.validation") -> dict:
    """Measure everything and write ``accuracy.md``, ``accuracy.json`` and ``figures/*.png`` into ``out_dir``.

    quick: a small configuration (d = 6, fewer samples and families) that runs in seconds, for tests.
    Returns the results dictionary that is written to the JSON file.
    """
    from tqdm import tqdm

    cfg = QUICK if quick else Config()
    families = _families(cfg.gaps, cfg.conditions, cfg.d)
    out = Path(out_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    n_ref = cfg.mp_samples * sum(f.kind != "singular" for f in families)
    bar = tqdm(total=n_ref + cfg.samples * len(families) + 12, disable=not progress, unit="step",
               desc="eigpool accuracy")

    def stage(name: str) -> Callable[[], None]:
        bar.set_description(name)
        return lambda: bar.update(1)

    import mpmath

    results: dict[str, Any] = {"families": [
        {"key": f.key, "label": f.label, "short": _short(f), "sweep": f.sweep[0] if f.sweep else None,
         "value": f.sweep[1] if f.sweep else None} for f in families]}
    results["reference"] = reference_check(cfg, families, seed, stage("mpmath reference"))
    results["methods"] = method_errors(cfg, families, seed, stage("methods x families"))
    tick = stage("ICCV tables")
    results["kernel_table"] = kernel_table()
    tick()
    results["bounds"] = bounds_table(results["kernel_table"])
    tick()
    results["fd_checks"] = fd_checks(cfg, seed, stage("finite differences"))
    tick = stage("figures")
    _plot_sweep(results, "gap", out / "figures" / "gradient_error_vs_gap.png",
                f"sqrtm gradient error vs eigen-gap (clustered spectra, d = {cfg.d})", "relative gap inside clusters",
                cfg.mp_d)
    tick()
    _plot_sweep(results, "condition", out / "figures" / "gradient_error_vs_condition.png",
                f"sqrtm gradient error vs condition number (d = {cfg.d})", "condition number", cfg.mp_d)
    tick()
    _plot_kernels(results["kernel_table"], out / "figures" / "kernel_approximation.png")
    tick()
    _plot_heatmap(results, out / "figures" / "method_heatmap.png")
    tick()
    bar.close()
    results["meta"] = {
        "command": command + (" --quick" if quick else ""), "quick": quick, "seed": seed, "d": cfg.d,
        "samples": cfg.samples, "mp_samples": cfg.mp_samples, "mp_d": cfg.mp_d, "mp_dps": cfg.mp_dps,
        "seconds": time.perf_counter() - start, "eigpool": eigpool.__version__, "numpy": np.__version__,
        "mpmath": mpmath.__version__, "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "figures": sorted(p.name for p in (out / "figures").glob("*.png")),
    }
    (out / "accuracy.json").write_text(json.dumps(_jsonable(results), indent=1, allow_nan=True))
    (out / "accuracy.md").write_text(_markdown(results))
    return results


def _short(f: Family) -> str:
    if f.sweep is None:
        return {"distinct": "distinct", "repeated": "repeated", "singular": "singular"}[f.kind]
    return f"gap {f.sweep[1]:.0e}" if f.sweep[0] == "gap" else f"cond {f.sweep[1]:.0e}"


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    return x
