"""The report's measurements: the float64 reference against mpmath, every method against the reference, and the
finite-difference checks of eigpool's own VJPs. Each returns plain dicts and lists (the JSON of the report)."""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

import eigpool

from ..checks import check_grads, check_vjp
from .cases import DEFAULT_F32, FD_FAMILIES, METHODS, PRECISIONS, Config, Family, sample

__all__ = ["EPS64", "fd_checks", "method_errors", "mp_reference", "reference_check", "relative_error",
           "value_and_grad"]

EPS64 = float(np.finfo(np.float64).eps)


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    """||a - b|| / ||b|| (Frobenius, in float64)."""
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / max(np.linalg.norm(b), np.finfo(np.float64).tiny))


def value_and_grad(fn: Callable[[Any], Any], S: np.ndarray, G: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """fn(S) and the gradient of <G, fn(S)> with respect to S (eigpool.vjp), both in float64."""
    out, pullback = eigpool.vjp(fn, S)
    (dS,) = pullback(G.astype(S.dtype))
    return np.asarray(out, np.float64), np.asarray(dS, np.float64)


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
            S, G = sample(fam, seed, i, cfg.mp_d)
            ref = mp_reference(S, G, cfg.mp_dps)
            F, dS = value_and_grad(eigpool.sqrtm, S, G)
            Fs, dSs = value_and_grad(eigpool.seb, S, G)
            errs["forward"].append(relative_error(F, ref["sqrt"]))
            errs["gradient"].append(relative_error(dS, ref["sqrt_grad"]))
            errs["seb_forward"].append(relative_error(Fs, ref["seb"]))
            errs["seb_gradient"].append(relative_error(dSs, ref["seb_grad"]))
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
            S, G = sample(fam, seed, i, cfg.d)
            refs = {"sqrt": value_and_grad(eigpool.sqrtm, S, G), "seb": value_and_grad(eigpool.seb, S, G)}
            for m, p, dt, cd in variants:
                key = f"{m.name} ({p})"
                try:
                    F, dS = value_and_grad(partial(m.fn, cd=cd), S.astype(dt), G)
                except (ValueError, FloatingPointError) as exc:
                    collected[key]["failures"].append(str(exc).splitlines()[0][:160])
                    continue
                F_ref, dS_ref = refs[m.reference]
                collected[key]["forward"].append(relative_error(F, F_ref))
                collected[key]["gradient"].append(relative_error(dS, dS_ref))
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


def fd_checks(cfg: Config, seed: int, tick: Callable[[], None]) -> list[dict]:
    """check_vjp of eigpool's functions (NumPy) and, if eigpool.backends.torch imports, on tensors (with order 2)."""
    functions = {"sqrtm": eigpool.sqrtm, "invsqrtm": eigpool.invsqrtm, "logm": eigpool.logm,
                 "ns_sqrtm (T=5)": partial(eigpool.ns_sqrtm, iterations=5), "seb": eigpool.seb}
    rows = []
    for fam in FD_FAMILIES:
        S, _ = sample(fam, seed, 0, cfg.fd_d)
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
    for fam in FD_FAMILIES[:2]:
        S, _ = sample(fam, seed, 0, min(cfg.fd_d, 5))
        step = 0.1 * float(np.linalg.eigvalsh(S)[0])
        T = torch.tensor(S)
        for name in ("sqrtm", "seb"):
            res = check_grads(functions[name], [T], order=2, modes=("rev",), step=step, seed=seed, rtol=1e-5)
            for order, _, c in res.checks:
                rows.append({"framework": "torch", "function": name, "family": fam.key, "order": order,
                             "error": c.error, "passed": c.passed})
        tick()
    return rows
