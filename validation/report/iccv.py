"""The ICCV 2021 tables, reproduced from the library: the kernel approximations of 1/(1 - x) (Table 3) and the
gradient upper bounds (Table 6), next to what eigpool's kernels (``eigpool.eigh.kernel_matrix``) and ``sqrtm``'s
gradient produce."""

from __future__ import annotations

import functools
import math
from functools import partial
from typing import Any

import numpy as np

import eigpool
from eigpool.eigh import kernel_matrix

from .measure import EPS64, value_and_grad

__all__ = ["PAPER_KERNEL", "bounds_table", "kernel_table", "original_pade", "pade_kernel", "taylor_kernel"]

#: The paper's Table 3: x -> (Taylor-100 error, Pade [50/50] error).
PAPER_KERNEL = {0.9: (2e-4, 3e-16), 0.99: (36.0, 8e-13), 0.999: (904.0, 3e-10)}


def taylor_kernel(x: float, degree: int = 100) -> float:
    """eigpool.eigh's Taylor kernel for the pair (l_j, l_i) = (x, 1): K_ij ~ 1/(1 - x)."""
    K = kernel_matrix(np, np.array([x, 1.0]), "taylor", {"degree": degree})
    return float(K[1, 0])


def pade_kernel(x: float, order: int = 2, delta: float = 1e-3) -> float:
    """eigpool.eigh's rational "pade" kernel for the pair (l_j, l_i) = (x, 1)."""
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
                "taylor100": taylor_kernel(x), "taylor100_error": float(abs(taylor_kernel(x) - exact)),
                "pade50_mp_error": float(abs(pade_mp - exact)), "pade50_f64_error": float(abs(pade_f64 - exact)),
                "eigpool_pade": pade_kernel(x), "eigpool_pade_error": float(abs(pade_kernel(x) - exact)),
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
    _, dS = value_and_grad(partial(eigpool.sqrtm, grad=grad, **options), S, G)
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
