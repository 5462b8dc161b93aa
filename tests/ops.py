"""The table of operations: every eigpool function once, with what the generic tests need to know about it.

Each entry names the function (of one array), its independent reference forward (SciPy/NumPy, on float64 NumPy
arrays), the kind of input it takes, where its derivatives are exact (at exactly repeated eigenvalues, to second
order), and the bad inputs it must refuse. ``test_ops.py`` runs every entry over every array namespace present
(NumPy, read-only NumPy, array-api-strict, PyTorch, CuPy where it runs) and every PyTorch transform; a new operation is
tested by adding a line here. The models: SciPy's ``xp`` fixture and PyTorch's OpInfo.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.linalg as sl
from conftest import spd

import eigpool
from eigpool._divided import SpectralFunction


def hpd(seed: int, eigenvalues: Any) -> np.ndarray:
    """Q diag(eigenvalues) Q^H with a seeded random unitary Q (complex128), made exactly Hermitian."""
    rng = np.random.default_rng(seed)
    d = len(eigenvalues)
    q, r = np.linalg.qr(rng.standard_normal((d, d)) + 1j * rng.standard_normal((d, d)))
    q = q * (np.diag(r) / np.abs(np.diag(r))).conj()
    s = (q * np.asarray(eigenvalues, dtype=np.float64)) @ q.conj().T
    return (s + s.conj().T) / 2


#: Spectrum families of the 4 x 4 test matrices: distinct, exactly repeated (pairs, a triple, a scalar matrix), and
#: ties broken at 1e-7 and 1e-10 (where cancellation would show), and singular (a double zero eigenvalue).
SPECTRA = {
    "distinct": [0.5, 0.9, 1.7, 3.1],
    "repeated": [0.8, 0.8, 2.5, 2.5],
    "triple": [0.6, 1.5, 1.5, 1.5],
    "scalar": [1.3, 1.3, 1.3, 1.3],
    "near_ties": [1.0, 1.0 + 1e-7, 2.0, 2.0 + 1e-10],
    "singular": [0.0, 0.0, 1.0, 2.5],  # for the functions defined there (not those of positive eigenvalues)
}


def _kind_of(S: np.ndarray, out: np.ndarray) -> np.ndarray:
    """SciPy's result in S's kind: its (round-off) imaginary part dropped for real S."""
    return out if np.iscomplexobj(S) else out.real


def _sqrt(S: np.ndarray) -> np.ndarray:
    return _kind_of(S, sl.sqrtm(S))


def _power(p: float) -> Callable[[np.ndarray], np.ndarray]:
    return lambda S: _kind_of(S, sl.fractional_matrix_power(S, p))


def _exponent_like(S: Any, p: float) -> Any:
    """The exponent p as a 0-d real array of S's library and device (powm's array route)."""
    from array_api_compat import array_namespace, device, is_array_api_obj

    if not is_array_api_obj(S):
        return np.asarray(p)  # powm refuses S itself first
    xp = array_namespace(S)
    return xp.asarray(p, dtype=xp.float64 if S.dtype in (xp.float64, xp.complex128) else xp.float32,
                      device=device(S))


def _seb(S: np.ndarray) -> np.ndarray:
    Q = _sqrt(S)
    return (1 + np.linalg.norm(Q @ sl.expm(-S).conj().T)) * Q


def _truncated(S: np.ndarray, k: int) -> np.ndarray:
    l, U = np.linalg.eigh(S)
    l[:k] = 0
    return (U * l) @ U.conj().T


def _cov(X: np.ndarray) -> np.ndarray:
    Xc = X - X.mean(-1, keepdims=True)
    return Xc @ np.swapaxes(Xc, -1, -2) / X.shape[-1]


def _triu(S: np.ndarray) -> np.ndarray:
    return S[..., np.triu_indices(S.shape[-1])[0], np.triu_indices(S.shape[-1])[1]]


def _unvec(v: np.ndarray) -> np.ndarray:
    d = int((np.sqrt(8 * v.shape[-1] + 1) - 1) / 2)
    S = np.zeros((d, d))
    S[np.triu_indices(d)] = v
    return S + np.triu(S, 1).T


CBRT = SpectralFunction("cbrt", lambda xp, l: l ** (1 / 3), lambda xp, l: l ** (-2 / 3) / 3,
                        lambda xp, a, b: 1 / (a ** (2 / 3) + (a * b) ** (1 / 3) + b ** (2 / 3)), True)


def _cbrt(l: Any) -> Any:
    return l ** (1 / 3)


def _cbrt_slope(l: Any) -> Any:
    return l ** (-2 / 3) / 3


def _ns_iteration(S: np.ndarray, n: int) -> np.ndarray:
    """The coupled Newton-Schulz iteration of n steps with trace normalisation, in NumPy (iSQRT-COV's forward)."""
    t = np.trace(S).real
    Y, Z = S / t, np.eye(S.shape[-1])
    for _ in range(n):
        T = (3 * np.eye(S.shape[-1]) - Z @ Y) / 2
        Y, Z = Y @ T, T @ Z
    return np.sqrt(t) * Y


def _shifted_sqrt(S: np.ndarray, c: float) -> np.ndarray:
    shift = c * np.trace(S).real * np.eye(S.shape[-1])
    return _sqrt(S + shift) - np.sqrt(shift)


NS5 = eigpool.spectral_spec(eigpool.ns_polynomial(5), trace_scale=True)
SHIFTED = eigpool.spectral_spec(eigpool.shifted_sqrt(0.1), trace_scale=True)


def _cube(l: Any) -> Any:
    return l**3


def _cube_slope(l: Any) -> Any:
    return 3 * l**2


@dataclass(frozen=True)
class Op:
    """One operation of the table.

    fn: the eigpool function of one array. reference: the same function in NumPy/SciPy (None: properties only).
    kind: "matrix" (a symmetric d x d input, PSD if ``positive``), "features" ((d, N)) or "vector" (a triu vector).
    ties: the gradient is exact at exactly repeated eigenvalues (finite differences agree there).
    second_order: second derivatives (double backward, hessian) are exact at repeated eigenvalues.
    symmetric: the input must be symmetric (refused otherwise).
    tape: ``eigpool.vjp`` can trace it (it uses eigpool functions only; else only frameworks with autodiff can).
    complex: it takes complex Hermitian input too (the generic tests run it on HPD matrices as well).
    """

    name: str
    fn: Callable[[Any], Any]
    reference: Callable[[np.ndarray], np.ndarray] | None
    kind: str = "matrix"
    positive: bool = True
    ties: bool = True
    second_order: bool = False
    symmetric: bool = True
    tape: bool = True
    spectra: tuple[str, ...] = field(default_factory=lambda: tuple(SPECTRA))
    complex: bool = False


_NO_TIES = ("distinct", "scalar")

OPS = [
    Op("sqrtm", eigpool.sqrtm, _sqrt, second_order=True, complex=True),
    Op("invsqrtm", eigpool.invsqrtm, lambda S: np.linalg.inv(_sqrt(S)), second_order=True, complex=True),
    Op("logm", eigpool.logm, lambda S: _kind_of(S, sl.logm(S)), second_order=True, complex=True),
    Op("powm(0.3)", lambda S: eigpool.powm(S, 0.3), _power(0.3), second_order=True, complex=True),
    Op("powm(-1.5)", lambda S: eigpool.powm(S, -1.5), _power(-1.5), second_order=True, complex=True),
    Op("powm(2)", lambda S: eigpool.powm(S, 2), lambda S: S @ S, second_order=True, complex=True),
    # The exponent as a 0-d array of S's library: an input of the primitive (a constant here; its own derivative is
    # tested in test_spd.py).
    Op("powm(array 0.3)", lambda S: eigpool.powm(S, _exponent_like(S, 0.3)), _power(0.3), second_order=True,
       complex=True),
    Op("expm", eigpool.expm, sl.expm, positive=False, second_order=True, complex=True),
    Op("expm_neg", eigpool.expm_neg, lambda S: sl.expm(-S), positive=False, second_order=True, complex=True),
    # Frechet derivatives in a direction that commutes with S, where they have a closed form: D log(S)[e^(-S)] =
    # S^(-1) e^(-S), D exp(S)[S] = S e^S. As functions of S they test the rule's derivative in S (second differences)
    # and in E together.
    Op("frechet(log)", lambda S: eigpool.frechet("log", S, eigpool.expm_neg(S)),
       lambda S: np.linalg.solve(S, sl.expm(-S)), complex=True),
    Op("frechet(exp)", lambda S: eigpool.frechet(eigpool.expm, S, S), lambda S: S @ sl.expm(S), positive=False,
       complex=True),
    # One triangle read (LAPACK's and pyRiemann's convention): any square input, the gradient in that triangle.
    Op("logm(triangle='lower')", lambda S: eigpool.logm(S, triangle="lower"), lambda S: _kind_of(S, sl.logm(S)),
       symmetric=False, second_order=True, complex=True, spectra=("distinct", "repeated")),
    Op("seb", eigpool.seb, _seb, second_order=True, complex=True),
    # Truncating 2 of 4 cuts between the pairs of "repeated": a cut inside a tie (triple, scalar) has no derivative.
    Op("truncate(2)", lambda S: eigpool.truncate(S, 2), lambda S: _truncated(S, 2), positive=False,
       second_order=True, spectra=("distinct", "repeated", "near_ties", "singular"), complex=True),
    Op("sqrtm(truncate=2)", lambda S: eigpool.sqrtm(S, truncate=2), lambda S: _truncated(_sqrt(S), 2),
       second_order=True, spectra=("distinct", "repeated", "near_ties"), complex=True),
    Op("spectral(cbrt)", lambda S: eigpool.spectral(S, _cbrt, _cbrt_slope, positive=True), _power(1 / 3),
       complex=True),
    Op("spectral(cbrt, triangle='upper')",
       lambda S: eigpool.spectral(S, _cbrt, _cbrt_slope, positive=True, triangle="upper"), _power(1 / 3),
       symmetric=False, complex=True, spectra=("distinct", "repeated")),
    Op("spectral(x^3)", lambda S: eigpool.spectral(S, _cube, _cube_slope), lambda S: S @ S @ S, positive=False,
       complex=True),
    Op("matrix_function(cbrt)", lambda S: eigpool.matrix_function(S, eigpool.spectral_spec(CBRT)), _power(1 / 3),
       complex=True),
    # Trace scaling changes no tie handling (the Loewner matrix is the function's): three spectra suffice.
    Op("matrix_function(ns_polynomial(5), trace_scale)", lambda S: eigpool.matrix_function(S, NS5),
       lambda S: _ns_iteration(S, 5), complex=True, spectra=("distinct", "repeated", "near_ties")),
    Op("matrix_function(shifted_sqrt(0.1), trace_scale)", lambda S: eigpool.matrix_function(S, SHIFTED),
       lambda S: _shifted_sqrt(S, 0.1), complex=True, spectra=("distinct", "scalar", "near_ties")),
    Op("eigh(eigenvalues)", lambda S: eigpool.eigh(S).eigenvalues, lambda S: np.linalg.eigvalsh(S), positive=False,
       ties=False),  # single eigenvalues have a kink where they cross
    Op("eigh(tr exp(-l))", lambda S: _sum_exp_neg(eigpool.eigh(S).eigenvalues),
       lambda S: np.trace(sl.expm(-S)), positive=False, tape=False),
    # No eigendecomposition in these: their derivatives do not see ties (the recomputed rules differentiated are exact
    # anywhere), so two spectra suffice, one a scalar matrix.
    Op("ns_sqrtm(30)", lambda S: eigpool.ns_sqrtm(S, iterations=30), _sqrt, second_order=True, spectra=_NO_TIES),
    Op("ns_sqrtm(5)", eigpool.ns_sqrtm, None, second_order=True, spectra=_NO_TIES),
    Op("ns_invsqrtm(30)", lambda S: eigpool.ns_invsqrtm(S, iterations=30), lambda S: np.linalg.inv(_sqrt(S)),
       second_order=True, spectra=_NO_TIES),
    Op("covariance", eigpool.covariance, _cov, kind="features", second_order=True),
    Op("pooled(gram)", lambda X: eigpool.pooled(X, path="gram"), lambda X: _sqrt(_cov(X)), kind="features"),
    Op("pooled(gram, log, triu)", lambda X: eigpool.pooled(X, "log", path="gram", triu=True),
       lambda X: _triu(sl.logm(_cov(X)).real), kind="features"),
    Op("pooled(dense, seb)", lambda X: eigpool.pooled(X, seb=True, path="dense"), lambda X: _seb(_cov(X)),
       kind="features", second_order=True),
    Op("triu_vec", eigpool.triu_vec, _triu, positive=False, symmetric=False, second_order=True),
    Op("triu_unvec", eigpool.triu_unvec, _unvec, kind="vector", second_order=True),
]
BY_NAME = {op.name: op for op in OPS}


def _sum_exp_neg(l: Any) -> Any:
    # A symmetric function of the eigenvalues: smooth in S (single eigenvalues have a kink only where they cross).
    from array_api_compat import array_namespace

    xp = array_namespace(l)
    return xp.sum(xp.exp(-l), axis=-1)


def example_input(op: Op, seed: int = 0, spectrum: str = "distinct", hermitian: bool = False) -> np.ndarray:
    """A float64 NumPy input of the op's kind: a 4 x 4 matrix of the named spectrum (complex128 Hermitian if
    ``hermitian``), features (4, 7) with a full-rank covariance of distinct eigenvalues (6 positions for the Gram
    route: N > d, all its cases), or a triu vector."""
    if op.kind == "matrix":
        return hpd(seed, SPECTRA[spectrum]) if hermitian else spd(seed, SPECTRA[spectrum])
    if op.kind == "features":
        return np.random.default_rng(seed).standard_normal((4, 7))
    return np.random.default_rng(seed).standard_normal(10)


@dataclass(frozen=True)
class BadCall:
    """A bad input for an op and what it must raise."""

    label: str
    make: Callable[[np.ndarray], np.ndarray]
    error: type[Exception]
    match: str


def _with(x: np.ndarray, index: tuple, value: float) -> np.ndarray:
    x = x.copy()
    x[index] = value
    return x


def bad_calls(op: Op) -> list[BadCall]:
    """The bad inputs every op of this kind must refuse, each with the message that names the problem."""
    calls = [BadCall("NaN", lambda x: _with(x, (0,) * x.ndim, np.nan), ValueError, "contains NaN or inf"),
             BadCall("inf", lambda x: _with(x, (-1,) * x.ndim, np.inf), ValueError, "contains NaN or inf"),
             BadCall("int", lambda x: x.astype(np.int64), TypeError,
                     "real or complex floating dtype" if op.complex else "real floating dtype"),
             BadCall("list", lambda x: x.tolist(), TypeError, "must be an array")]
    if op.complex:
        calls.append(BadCall("complex NaN", lambda x: _with(x.astype(np.complex128), (0, 1), complex(0, np.nan)),
                             ValueError, "contains NaN or inf"))
        if op.symmetric:
            calls.append(BadCall("non-Hermitian", lambda x: x + 1j * np.ones_like(x), ValueError,
                                 "must be Hermitian"))
    else:
        calls.append(BadCall("complex", lambda x: x.astype(np.complex128), TypeError, "real floating dtype"))
    if op.kind == "matrix":
        calls += [BadCall("vector", lambda x: x[0], ValueError, "rank at least 2"),
                  BadCall("non-square", lambda x: x[:, :3], ValueError, "must be square")]
    if op.kind == "matrix" and op.symmetric:
        calls.append(BadCall("non-symmetric", lambda x: x + np.triu(np.ones_like(x), 1), ValueError,
                             "must be symmetric"))
    if op.kind == "matrix" and op.positive:
        message = "positive trace" if op.name.startswith("ns_") else "must be positive semi-definite"
        calls.append(BadCall("negative definite", lambda x: -x, ValueError, message))
        # Indefinite with a positive trace (Newton-Schulz diverged along the negative eigenvalue: diag(3, -1) gave
        # diag(1.73, -2.85e9) before the check).
        calls.append(BadCall("indefinite", lambda x: x - 0.7 * np.eye(len(x)), ValueError,
                             "must be positive semi-definite"))
    if op.kind == "features":
        calls += [BadCall("vector", lambda x: x[0], ValueError, "rank at least 2"),
                  BadCall("no positions", lambda x: x[:, :0], ValueError, "at least one position")]
    if op.kind == "vector":
        calls.append(BadCall("length 5", lambda x: x[:5], ValueError, "d\\(d\\+1\\)/2"))
    return calls


BAD_CALLS = [(op, call) for op in OPS for call in bad_calls(op)]
BAD_IDS = [f"{op.name}({call.label})" for op, call in BAD_CALLS]
