"""The eigenvector-gradient kernels of the GCP literature: K_ij ~ 1 / (l_i - l_j), exact or approximate.

[Note: eigh backward]
For S = U diag(l) U^T (eigenvalues ascending) and upstream gradients gl (..., d) and gU (..., d, d),

    dL/dS = sym( U [ K^T o (U^T gU) + diag(gl) ] U^T ),     K_ij ~ 1 / (l_i - l_j) for i != j,  K_ii = 0,

(o: elementwise product; sym(A) = (A + A^T) / 2, since S is symmetric). METHODS.md section 2. The methods differ only in
the kernel K. A kernel is a function ``kernel(xp, l, *, tie_tol, **options) -> K`` of the ascending eigenvalues
l (..., d); it is listed in ``KERNELS`` under the name users pass as ``grad=``; a ``Kernel`` binds it to its options.

[Note: kernel approximations]
For a pair with l_i >= l_j > 0 write r = l_j / l_i in (0, 1] and x = 1 - r = (l_i - l_j) / l_i, the relative gap,
so 1 / (l_i - l_j) = (1 / l_i) / x. The approximate kernels replace 1/x by a bounded function of x (or of r):
- taylor (degree n): sum_{k<=n} r^k = (1 - r^{n+1}) / x, evaluated as -expm1((n+1) log1p(-x)) / x, which is exact to
  round-off for every x (no cancellation at x -> 0, where it tends to n+1). Relative error r^{n+1}; bound (n+1)/l_i.
- pade (order m, gap delta): the rational function x^{2m-1} / (x^{2m} + delta^{2m}) of degree [2m-1/2m]. Its poles
  lie at x = delta * exp(i pi (2k+1) / 2m), none on the real axis, so it is smooth on [0, 1]; it is odd in x, hence
  antisymmetric, and 0 at ties. Relative error delta^{2m} / (x^{2m} + delta^{2m}) <= (delta / x)^{2m}: below 1e-8 for
  x >= 10 delta with m = 2. Bound max_x = (2m-1)^{(2m-1)/2m} / (2m delta l_i) (0.57 / (delta l_i) for m = 2).
  Why not the original [50/50] Pade approximant: every Pade approximant [L/M], M >= 1, of the geometric series is
  1/(1-r) itself, so that construction is the exact kernel plus round-off noise and has a pole AT r = 1.
- power_iteration (n steps): the derivative of deflated power iteration (Wang et al., NeurIPS 2019), largest
  eigenvalue first, each power iteration linearised at its fixed point. With M_k = S - sum_{i<k} l_i u_i u_i^T and
  dv = sum_{t<n} ((I - v v^T) M / l)^t (I - v v^T) dM v / l, the chain through the deflation gives in closed form
  K_ij = T_{n-1}(r) / l_i and K_ji = -T_{n-2}(r) / l_i, T_m(r) = sum_{k<=m} r^k. It is not antisymmetric, as power
  iteration is not; it is the per-eigenvector form, with (I - v_k v_k^T) per eigenvector (the reference code's
  I - V V^T with the full square V is ~0 and passes no gradient).
- clip (threshold T): sign(l_i - l_j) min(1 / |l_i - l_j|, T).
Eigenvalues enter the approximate kernels through max(l, tiny) so that a zero or round-off-negative eigenvalue of a
PSD matrix gives finite values; pass ``floor=`` to choose the floor explicitly.

Ties: pairs with |l_i - l_j| <= tie_tol, tie_tol = d * eps * max|l| (per matrix), are numerically degenerate; the exact
and clip kernels set K_ij = 0 there. The eigenvectors of a repeated eigenvalue are any orthonormal basis of its
eigenspace and have no derivative; K_ij = 0 is a convention, the gauge that does not rotate the basis. It keeps every
gradient finite, but a chain rule through (l, U) cannot be exact at a tie: for F = U g(l) U^T it misses the term
g'(l) (U^T dS U)_ij inside the repeated eigenspace (every kernel route does; the accuracy report measures it). The
spectral functions of eigpool.spectral avoid the eigenvectors' derivative and are exact there.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._xp import arange_like, max_abs

__all__ = ["KERNELS", "Kernel", "kernel_matrix", "resolve_kernel", "tie_tolerance"]


def tie_tolerance(xp: Any, l: Any) -> Any:
    """Gap below which two eigenvalues count as tied, shape (..., 1, 1): d * eps * max|l| per matrix."""
    eps = float(xp.finfo(l.dtype).eps)
    return (l.shape[-1] * eps) * max_abs(xp, l)[..., None]


def _pairs(xp: Any, l: Any) -> tuple[Any, Any, Any]:
    """(li, lj, upper): l_i and l_j broadcast to (..., d, d), and the mask of pairs i > j (l_i >= l_j, ascending l)."""
    li, lj = l[..., :, None], l[..., None, :]
    idx = arange_like(xp, l, l.shape[-1])
    upper = idx[:, None] > idx[None, :]
    return li, lj, upper


def _positive(xp: Any, l: Any) -> Any:
    """Eigenvalues of a PSD matrix made strictly positive for the ratio-based kernels."""
    return xp.maximum(l, float(xp.finfo(l.dtype).smallest_normal))


def _antisymmetric(xp: Any, upper: Any, k: Any) -> Any:
    """Take the entries of ``k`` with i > j and mirror them with the opposite sign (zero diagonal)."""
    low = xp.where(upper, k, xp.zeros_like(k))
    return low - low.mT


def _geometric(xp: Any, a: Any, b: Any, n: int) -> Any:
    """T_n(lo/hi) / hi = sum_{k<=n} (lo/hi)^k / hi, lo = min(a, b) > 0, hi = max(a, b), without cancellation."""
    lo, hi = xp.minimum(a, b), xp.maximum(a, b)
    gap = hi - lo
    safe = xp.where(gap > 0, gap, xp.ones_like(gap))
    series = -xp.expm1((n + 1) * xp.log1p(-gap / hi)) / safe
    return xp.where(gap > 0, series, (n + 1) / hi)


def _exact_kernel(xp: Any, l: Any, *, tie_tol: Any) -> Any:
    li, lj, _ = _pairs(xp, l)
    gap = li - lj
    tied = xp.abs(gap) <= tie_tol
    return xp.where(tied, xp.zeros_like(gap), 1.0 / xp.where(tied, xp.ones_like(gap), gap))


def _clip_kernel(xp: Any, l: Any, *, tie_tol: Any, threshold: float = 1e10) -> Any:
    return xp.minimum(xp.maximum(_exact_kernel(xp, l, tie_tol=tie_tol), -threshold), threshold)


def _taylor_kernel(xp: Any, l: Any, *, tie_tol: Any, degree: int = 100) -> Any:
    li, lj, upper = _pairs(xp, _positive(xp, l))
    return _antisymmetric(xp, upper, _geometric(xp, li, lj, degree))


def _pade_kernel(xp: Any, l: Any, *, tie_tol: Any, order: int = 2, delta: float = 1e-3) -> Any:
    li, lj, upper = _pairs(xp, _positive(xp, l))
    x = (li - lj) / li
    k = x ** (2 * order - 1) / (li * (x ** (2 * order) + delta ** (2 * order)))
    return _antisymmetric(xp, upper, k)


def _power_iteration_kernel(xp: Any, l: Any, *, tie_tol: Any, iterations: int = 19) -> Any:
    li, lj, upper = _pairs(xp, _positive(xp, l))
    # i > j: u_i (larger) is deflated first. K_ij: its own power iteration; K_ji: the chain through the deflation.
    first = xp.where(upper, _geometric(xp, li, lj, iterations - 1), xp.zeros_like(li))
    second = xp.where(upper, _geometric(xp, li, lj, iterations - 2), xp.zeros_like(li))
    return first - second.mT


KERNELS: dict[str, Callable[..., Any]] = {
    "exact": _exact_kernel,
    "taylor": _taylor_kernel,
    "pade": _pade_kernel,
    "clip": _clip_kernel,
    "power_iteration": _power_iteration_kernel,
}

# The options each kernel takes, with their lowest allowed value (integers) or None (positive finite numbers).
_INTEGER_OPTIONS = {"degree": 1, "iterations": 2, "order": 1}
_POSITIVE_OPTIONS = ("delta", "threshold")


@dataclass(frozen=True)
class Kernel:
    """A kernel of ``KERNELS`` bound to its options: ``Kernel("taylor", (("degree", 100),))``. Hashable; built by
    ``resolve_kernel``, which validates the options once."""

    name: str
    options: tuple[tuple[str, Any], ...] = ()

    def matrix(self, xp: Any, l: Any) -> Any:
        """K (..., d, d) for ascending eigenvalues l (..., d): K_ij ~ 1/(l_i - l_j), K_ii = 0."""
        return KERNELS[self.name](xp, l, tie_tol=tie_tolerance(xp, l), **dict(self.options))

    def __repr__(self) -> str:
        return f"Kernel({self.name!r}{''.join(f', {k}={v!r}' for k, v in self.options)})"


def resolve_kernel(op: str, grad: str, options: dict[str, Any]) -> Kernel:
    """The ``Kernel`` for ``grad=`` and its keyword options, validated: ValueError for an unknown kernel or a bad
    value, TypeError for an option the kernel does not take; each message names ``op``."""
    if grad not in KERNELS:
        raise ValueError(f"{op}: grad must be one of {sorted(KERNELS)}, got {grad!r}")
    allowed = [p for p in inspect.signature(KERNELS[grad]).parameters if p not in ("xp", "l", "tie_tol")]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(f"{op}: unexpected option(s) {unknown} for grad={grad!r}; it takes {allowed}")
    for key, value in options.items():
        if key in _INTEGER_OPTIONS:
            low = _INTEGER_OPTIONS[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{op}: {key} must be an integer >= {low}, got {value!r}")
        elif key in _POSITIVE_OPTIONS and not (isinstance(value, (int, float)) and not isinstance(value, bool)
                                               and math.isfinite(value) and value > 0):
            raise ValueError(f"{op}: {key} must be a positive finite number, got {value!r}")
    return Kernel(grad, tuple(sorted(options.items())))


def kernel_matrix(xp: Any, l: Any, grad: str, options: dict) -> Any:
    """K (..., d, d) for ascending eigenvalues l (..., d) and kernel ``grad`` with its ``options``."""
    return resolve_kernel("kernel_matrix", grad, options).matrix(xp, l)
