"""Scalar functions of eigenvalues and their divided differences f[a, b] and f[a, b, c], exact at ties.

A spectral function F(S) = U f(L) U^T is differentiated through the divided differences of f ([Note: Loewner backward]
in eigpool._loewner): the first ones, f[a, b] = (f(a) - f(b)) / (a - b) with f[a, a] = f'(a), for the gradient, and the
second ones, f[a, b, c] with f[a, a, a] = f''(a) / 2, for second derivatives. Each built-in function has a formula
for them without cancellation, so they stay accurate when a and b (and c) are close or equal:

- sqrt: f[a, b] = 1 / (ra + rb), f[a, b, c] = -1 / ((ra + rb)(rb + rc)(ra + rc)), r = sqrt;
- inverse sqrt: f[a, b] = -1 / (ra rb (ra + rb)), f[a, b, c] = (ra + rb + rc) / (ra rb rc (ra + rb)(rb + rc)(ra + rc));
- log: log1p((hi - lo) / lo) / (hi - lo); power p: lo^(p-1) expm1(p t) / expm1(t), t = log(hi / lo), for t < 1;
  exp(x): exp(hi) (-expm1(-(hi - lo))) / (hi - lo); exp(-x): exp(-lo) expm1(-(hi - lo)) / (hi - lo);
- second differences of log, power and exp(-x): ``_dd2_from`` (a recurrence away from ties, a Taylor expansion near).

Every function here is elementwise on arrays of the namespace ``xp`` and trace-safe: no Python branching on values.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from functools import cache, lru_cache
from typing import Any, NamedTuple

__all__ = ["POWER_INPUT", "SPECTRAL_FUNCTIONS", "SpectralFunction", "exponent_slope_of_array", "ns_polynomial",
           "power", "power_of_array", "shifted_sqrt", "user_function"]


class SpectralFunction(NamedTuple):
    """A scalar function applied to eigenvalues: values f(l), derivative f'(l), and the divided difference f[a, b]
    (``dd(xp, a, b)``, exact at a == b). ``positive``: the domain is l > 0 (the eigenvalue floor applies).
    ``dd2(xp, a, b, c)``, optional: the second divided difference f[a, b, c], exact at ties."""

    name: str
    f: Callable[[Any, Any], Any]
    df: Callable[[Any, Any], Any]
    dd: Callable[[Any, Any, Any], Any]
    positive: bool
    dd2: Callable[..., Any] | None = None


def _lo_hi(xp: Any, a: Any, b: Any) -> tuple[Any, Any, Any]:
    """(lo, hi, gap) of a symmetric pair, gap = hi - lo >= 0 (exact for close values)."""
    lo, hi = xp.minimum(a, b), xp.maximum(a, b)
    return lo, hi, hi - lo


def _nonzero(xp: Any, x: Any) -> Any:
    return xp.where(x != 0, x, xp.ones_like(x))


def _sqrt_dd(xp: Any, a: Any, b: Any) -> Any:
    return 1.0 / (xp.sqrt(a) + xp.sqrt(b))


def _invsqrt_dd(xp: Any, a: Any, b: Any) -> Any:
    ra, rb = xp.sqrt(a), xp.sqrt(b)
    return -1.0 / (ra * rb * (ra + rb))


def _sqrt_dd2(xp: Any, a: Any, b: Any, c: Any) -> Any:
    ra, rb, rc = xp.sqrt(a), xp.sqrt(b), xp.sqrt(c)
    return -1.0 / ((ra + rb) * (rb + rc) * (ra + rc))


def _invsqrt_dd2(xp: Any, a: Any, b: Any, c: Any) -> Any:
    ra, rb, rc = xp.sqrt(a), xp.sqrt(b), xp.sqrt(c)
    return (ra + rb + rc) / (ra * rb * rc * (ra + rb) * (rb + rc) * (ra + rc))


def _dd2_from(dd: Callable, higher: Callable, unit: float) -> Callable:
    """The second divided difference f[a, b, c] from f's first one ``dd`` and ``higher(xp, y)`` = (f'', f''', f'''').

    With x <= y <= z the sorted triple: (f[y, z] - f[x, y]) / (z - x) where the spread z - x exceeds 1e-4 times the
    scale max(|x|, |z|, unit) (round-off about eps / 1e-4, relative); below it the Taylor expansion about y,
    f''(y)/2 + f'''(y)/6 h1 + f''''(y)/24 h2 with h1 = dx + dz, h2 = dx^2 + dx dz + dz^2 (dx = x - y, dz = z - y), whose
    truncation error is O(1e-12) relative. Exact at ties: f[y, y, y] = f''(y)/2.
    """

    def dd2(xp: Any, a: Any, b: Any, c: Any) -> Any:
        x, y, z = sort3(xp, a, b, c)
        spread = z - x
        wide = spread > 1e-4 * xp.maximum(xp.maximum(xp.abs(x), xp.abs(z)), xp.full_like(z, unit))
        far = (dd(xp, y, z) - dd(xp, x, y)) / xp.where(wide, spread, xp.ones_like(spread))
        f2, f3, f4 = higher(xp, y)
        dx, dz = x - y, z - y
        near = f2 / 2 + f3 / 6 * (dx + dz) + f4 / 24 * (dx * dx + dx * dz + dz * dz)
        return xp.where(wide, far, near)

    return dd2


def sort3(xp: Any, a: Any, b: Any, c: Any) -> tuple[Any, Any, Any]:
    """(x, y, z): the elementwise sorted triple x <= y <= z of a, b, c (broadcast)."""
    x, z = xp.minimum(xp.minimum(a, b), c), xp.maximum(xp.maximum(a, b), c)
    y = xp.maximum(xp.minimum(a, b), xp.minimum(xp.maximum(a, b), c))
    return x, y, z


def _log_dd(xp: Any, a: Any, b: Any) -> Any:
    lo, hi, gap = _lo_hi(xp, a, b)
    return xp.where(gap > 0, xp.log1p(gap / lo) / _nonzero(xp, gap), 1.0 / lo)


def _exp_dd(xp: Any, a: Any, b: Any) -> Any:
    # e^{hi} - e^{lo} = e^{hi} (-expm1(-(hi - lo))): no cancellation, and no overflow before e^{hi} itself.
    _, hi, gap = _lo_hi(xp, a, b)
    return xp.exp(hi) * xp.where(gap > 0, -xp.expm1(-gap) / _nonzero(xp, gap), xp.ones_like(gap))


def _exp_neg_dd(xp: Any, a: Any, b: Any) -> Any:
    # e^{-hi} - e^{-lo} = e^{-lo} expm1(-(hi - lo)): bounded factors, no overflow or cancellation.
    lo, _, gap = _lo_hi(xp, a, b)
    return xp.exp(-lo) * xp.where(gap > 0, xp.expm1(-gap) / _nonzero(xp, gap), -xp.ones_like(gap))


def _power_dd(xp: Any, a: Any, b: Any, p: Any) -> Any:
    """f[a, b] of l^p, p a float or an array broadcast against a and b.

    t = log(hi/lo). Near (t < 1): lo^(p-1) expm1(p t) / expm1(t), exact as t -> 0 (limit p lo^(p-1)).
    Far: the plain quotient has no cancellation and cannot overflow through exp(p t)."""
    lo, hi, gap = _lo_hi(xp, a, b)
    t = xp.log1p(gap / lo)
    near = lo ** (p - 1) * xp.where(t > 0, xp.expm1(p * t) / _nonzero(xp, xp.expm1(t)), p * xp.ones_like(t))
    far = (hi**p - lo**p) / _nonzero(xp, gap)
    return xp.where(t < 1, near, far)


def _power_function(name: str, p: Callable[[Any], Any]) -> SpectralFunction:
    """l^p with the exponent ``p(x)``: a float, or an array shaped to broadcast against the argument x."""

    def higher(xp: Any, y: Any) -> tuple:
        q = p(y)
        c2 = q * (q - 1)
        return c2 * y ** (q - 2), c2 * (q - 2) * y ** (q - 3), c2 * (q - 2) * (q - 3) * y ** (q - 4)

    def dd(xp: Any, a: Any, b: Any) -> Any:
        return _power_dd(xp, a, b, p(a + b))

    return SpectralFunction(name, lambda xp, l: l ** p(l), lambda xp, l: p(l) * l ** (p(l) - 1), dd, True,
                            _dd2_from(dd, higher, 0.0))


@cache
def power(p: float) -> SpectralFunction:
    """l^p for real p on l > 0. One object per exponent (cached), so equal exponents give equal specifications."""
    return _power_function(f"power({p!r})", lambda x: p)


@cache
def shifted_sqrt(shift: float) -> SpectralFunction:
    """sqrt(l + shift) - sqrt(shift) for l > -shift, computed as l / (sqrt(l + shift) + sqrt(shift)): a square root
    with f(0) = 0 (no multiple of the identity is added to F) and the bounded slope 1 / (2 sqrt(shift)) at l = 0. Its
    divided differences are sqrt's at the shifted arguments (no cancellation, exact at ties). One object per shift.
    shift: a finite number > 0 (ValueError otherwise)."""
    if isinstance(shift, bool) or not isinstance(shift, numbers.Real) or not 0 < shift < math.inf:
        raise ValueError(f"shifted_sqrt: shift must be a finite number > 0, got {shift!r}")
    shift = float(shift)

    def dd(xp: Any, a: Any, b: Any) -> Any:
        return _sqrt_dd(xp, a + shift, b + shift)

    def dd2(xp: Any, a: Any, b: Any, c: Any) -> Any:
        return _sqrt_dd2(xp, a + shift, b + shift, c + shift)

    root = math.sqrt(shift)
    return SpectralFunction(f"shifted_sqrt({shift!r})", lambda xp, l: l / (xp.sqrt(l + shift) + root),
                            lambda xp, l: 0.5 / xp.sqrt(l + shift), dd, False, dd2)


@cache
def ns_polynomial(iterations: int) -> SpectralFunction:
    """The scalar map of ``iterations`` coupled Newton-Schulz steps (eigpool.newton_schulz), a polynomial of degree
    2^(n+1) - 1 that approximates sqrt on [0, 1]: on commuting arguments Y_k = a Z_k, so

        z_0 = 1,  z_k = z_{k-1} (3 - a z_{k-1}^2) / 2,  f(a) = a z_n(a),

    and the Newton-Schulz square root of S is sqrt(t) U f(L / t) U^T, t = tr(S). f(0) = 0 with the finite slope
    f'(0) = 1.5^n. Divided differences by the product rule (u v)[a, b] = u[a, b] v(b) + u(a) v[a, b] along the same
    recursion: no cancellation, exact at ties; symmetrised, so the Loewner matrix is exactly symmetric.
    iterations: an integer >= 1 (ValueError otherwise).
    """
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"ns_polynomial: iterations must be an integer >= 1, got {iterations!r}")

    def values(xp: Any, a: Any) -> Any:
        z = xp.ones_like(a)
        for _ in range(iterations):
            z = z * (3 - a * z * z) / 2
        return z

    def one_sided(xp: Any, a: Any, b: Any) -> Any:
        za, zb, dz = xp.ones_like(a + b), xp.ones_like(a + b), xp.zeros_like(a + b)
        for _ in range(iterations):
            # q = a z^2: q[a, b] = z(b)^2 + a z[a, b] (z(a) + z(b)); T = (3 - q) / 2; z' = z T.
            dq = zb * zb + a * dz * (za + zb)
            ta, tb = (3 - a * za * za) / 2, (3 - b * zb * zb) / 2
            dz = dz * tb - za * dq / 2
            za, zb = za * ta, zb * tb
        return zb + a * dz

    def dd(xp: Any, a: Any, b: Any) -> Any:
        return (one_sided(xp, a, b) + one_sided(xp, b, a)) / 2

    return SpectralFunction(f"ns_polynomial({iterations})", lambda xp, l: l * values(xp, l),
                            lambda xp, l: one_sided(xp, l, l), dd, False)


def power_of_array(xp: Any, p: Any, batch_ndim: int) -> SpectralFunction:
    """l^p for an array exponent ``p`` of a batch shape (broadcast against the matrices' batch shape, which has
    ``batch_ndim`` axes): p is padded with trailing axes to broadcast against the eigenvalues (..., d), the
    Loewner matrix (..., d, d) and the second differences (..., d, d, d). Built per call, inside the rules."""

    def padded(x: Any) -> Any:
        return xp.reshape(p, (*p.shape, *(1,) * (x.ndim - batch_ndim)))

    return _power_function("power(p)", padded)


def _exponent_slope_dd(xp: Any, a: Any, b: Any, p: Any) -> Any:
    """h[a, b] of h(l) = l^p log l = d(l^p)/dp: the derivative in p of ``_power_dd``, so it has no cancellation either.

    Near (t = log(hi/lo) < 1): lo^(p-1) (log(lo) expm1(p t) + t exp(p t)) / expm1(t), limit lo^(p-1) (p log lo + 1)
    = h'(lo) at t = 0; far: (hi^p log hi - lo^p log lo) / (hi - lo)."""
    lo, hi, gap = _lo_hi(xp, a, b)
    t = xp.log1p(gap / lo)
    safe = _nonzero(xp, xp.expm1(t))
    ratio = xp.where(t > 0, (xp.log(lo) * xp.expm1(p * t) + t * xp.exp(p * t)) / safe, p * xp.log(lo) + 1)
    far = (hi**p * xp.log(hi) - lo**p * xp.log(lo)) / _nonzero(xp, gap)
    return xp.where(t < 1, lo ** (p - 1) * ratio, far)


def exponent_slope_of_array(xp: Any, p: Any, batch_ndim: int) -> SpectralFunction:
    """h(l) = l^p log l, the derivative of l^p in p, for an array exponent padded as in ``power_of_array``: the
    function whose Loewner matrix is d L_p / dp ([Note: exponent derivative] in eigpool.spectral)."""

    def padded(x: Any) -> Any:
        return xp.reshape(p, (*p.shape, *(1,) * (x.ndim - batch_ndim)))

    return SpectralFunction("power(p) log", lambda xp, l: l ** padded(l) * xp.log(l),
                            lambda xp, l: l ** (padded(l) - 1) * (padded(l) * xp.log(l) + 1),
                            lambda xp, a, b: _exponent_slope_dd(xp, a, b, padded(a + b)), True)


@lru_cache(maxsize=256)
def user_function(f: Callable[[Any], Any], df: Callable[[Any], Any], positive: bool) -> SpectralFunction:
    """A user's scalar function f with derivative df (both map arrays of eigenvalues to arrays). One object per
    (f, df, positive), cached, so that a layer or a compiled function sees the same specification on every call.

    Its divided difference is the quotient (f(a) - f(b)) / (a - b), whose round-off is about eps |f| / |a - b|, except
    for pairs closer than eps^(1/3) max(|a|, |b|), where it is the mean slope (f'(a) + f'(b)) / 2, whose error is
    |f'''(c)| |a - b|^2 / 12 (the trapezoidal rule): both stay near eps^(2/3) (4e-11 in float64) for smooth f.
    """

    def dd(xp: Any, a: Any, b: Any) -> Any:
        gap = a - b
        near = xp.abs(gap) <= float(xp.finfo(gap.dtype).eps) ** (1 / 3) * xp.maximum(xp.abs(a), xp.abs(b))
        return xp.where(near, (df(a) + df(b)) / 2, (f(a) - f(b)) / xp.where(near, 1.0, gap))

    name = getattr(f, "__name__", "f")
    return SpectralFunction(name, lambda xp, l: f(l), lambda xp, l: df(l), dd, positive)


def _exponent_is_an_input(*args: Any) -> Any:
    raise TypeError("power(p): the exponent is an input of eigpool.spectral.spectral_power_p, bound by its rules")


#: l^p with an array exponent: the function of a specification whose exponent is an input of the primitive
#: (``powm(S, p)`` with p an array), so that the specification stays hashable; the rules bind ``power_of_array``.
POWER_INPUT = SpectralFunction("power(p)", _exponent_is_an_input, _exponent_is_an_input, _exponent_is_an_input, True)

SPECTRAL_FUNCTIONS: dict[str, SpectralFunction] = {
    "sqrt": SpectralFunction("sqrt", lambda xp, l: xp.sqrt(l), lambda xp, l: 0.5 / xp.sqrt(l), _sqrt_dd, True,
                             _sqrt_dd2),
    "invsqrt": SpectralFunction("invsqrt", lambda xp, l: 1.0 / xp.sqrt(l), lambda xp, l: -0.5 / (l * xp.sqrt(l)),
                                _invsqrt_dd, True, _invsqrt_dd2),
    "log": SpectralFunction("log", lambda xp, l: xp.log(l), lambda xp, l: 1.0 / l, _log_dd, True,
                            _dd2_from(_log_dd, lambda xp, y: (-1.0 / y**2, 2.0 / y**3, -6.0 / y**4), 0.0)),
    "exp": SpectralFunction("exp", lambda xp, l: xp.exp(l), lambda xp, l: xp.exp(l), _exp_dd, False,
                            _dd2_from(_exp_dd, lambda xp, y: (xp.exp(y), xp.exp(y), xp.exp(y)), 1.0)),
    "exp_neg": SpectralFunction("exp_neg", lambda xp, l: xp.exp(-l), lambda xp, l: -xp.exp(-l), _exp_neg_dd, False,
                                _dd2_from(_exp_neg_dd, lambda xp, y: (xp.exp(-y), -xp.exp(-y), xp.exp(-y)), 1.0)),
    "identity": SpectralFunction("identity", lambda xp, l: l, lambda xp, l: xp.ones_like(l),
                                 lambda xp, a, b: xp.ones_like(a + b), False,
                                 lambda xp, a, b, c: xp.zeros_like(a + b + c)),
}
