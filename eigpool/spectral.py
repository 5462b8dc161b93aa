"""Spectral matrix functions F(S) = U g(l) U^T with the exact, stable Daleckii-Krein backward.

[Note: Loewner backward]
For F(S) = U diag(g(l)) U^T and upstream G, the exact adjoint is (METHODS.md section 3)

    dL/dS = U ( L o (U^T sym(G) U) ) U^T,   L_ij = g[l_i, l_j] = (g(l_i) - g(l_j)) / (l_i - l_j),  L_ii = g'(l_i),

the first divided differences of g (the Loewner matrix). It never divides by l_i - l_j in floating point: each built-in
function has a cancellation-free formula for g[a, b] that is exact at ties a = b (where it equals g'(a)), so the
gradient is finite and continuous at repeated eigenvalues. U^T sym(G) U costs two products and U (.) U^T two more.

g is f composed with two reshapings of the spectrum, both explicit:
- the eigenvalue floor m = max(l, tau), tau = floor * max|l| per matrix (floor="auto": d * eps(dtype)), at least
  the smallest normal number: f'(0) is infinite for sqrt, log and negative powers. Subgradient: 0 below the floor.
  Then g[l_i, l_j] = f[m_i, m_j] * (m_i - m_j) / (l_i - l_j): the second factor is 1 when both are above the floor, 0
  when both are below, and in [0, 1] across it.
- truncation of the ``truncate`` smallest eigenvalues: g = 0 on them (TopN of METHODS.md, section 2). Between a kept
  l_i and a dropped l_j, g[l_i, l_j] = g(l_i) / (l_i - l_j); at a tie across the cut the function jumps and has no
  derivative: we use 0 there (the cut is held fixed). The eigenvalues below the floor are tied at tau, with an
  arbitrary eigenbasis: that eigenspace is dropped only as a whole, when ``truncate`` >= its dimension (else it
  stays at g(tau)), so a singular covariance gives one result whatever basis LAPACK returns (eigpool.gram).

With grad="taylor" (or "pade", "clip", "power_iteration", or "eigh" for the plain eigenvector kernel) the backward goes
through the eigendecomposition's approximate kernel instead ([Note: eigh backward] in eigpool.eigh): substituting
gU = 2 sym(G) U diag(g) gives the same formula with L_ij = K_ij (g(l_i) - g(l_j)) off the diagonal. These are the
SVD-Taylor, SVD-Pade, SVD-Trunc and SVD-PI layers of the ICCV 2021 paper, one argument away. (For a kernel that is
not antisymmetric, power iteration's, the entry is K_ij g(l_i) + K_ji g(l_j).) Pairs with both eigenvalues below the
floor contribute 0 in every route: g is constant there, so F is invariant to rotations inside that eigenspace.

[Note: spectral second order]
The VJP is linear in G: V(S, G) = DF(S)[sym G]. Its own VJP, for a cotangent W of V, is (Daleckii-Krein, second
order; Bhatia, Matrix Analysis, Thm V.3.3), with Gh = U^T sym(G) U and Wh = U^T sym(W) U,

    dG = V(S, W)   (DF(S) is self-adjoint),      dS = U (A + A^T) U^T,   A_ab = sum_c f[l_a, l_b, l_c] Gh_ac Wh_cb,

the second divided differences f[a, b, c] of f, exact at ties (f[a, a, a] = f''(a) / 2). With r = sqrt(l):
sqrt: -1 / ((ra + rb)(rb + rc)(ra + rc));  inverse sqrt: (ra + rb + rc) / (ra rb rc (ra + rb)(rb + rc)(ra + rc));
log, power and exp(-x): the recurrence (f[y, z] - f[x, y]) / (z - x) on the sorted triple where it has no
cancellation, a third-order Taylor expansion in the near-tie band (``_dd2_from``).
So second derivatives stay finite and exact at repeated eigenvalues. ``spectral_vjp_p`` implements it for grad="exact"
without truncation or SEB, for the functions with a ``dd2`` and spectra above the floor; it builds the (..., d, d, d)
tensor f[l_a, l_b, l_c] (memory d^3 per matrix: meant for double backward, gradient penalties and checks).

SEB (the scaling eigen branch, METHODS.md section 5): F(S) = (1 + rho) U sqrt(m) U^T with
rho = ||Q E^T||_F = sqrt(sum_i m_i exp(-2 m_i)), computed from the eigenvalues directly (finite for dead channels).
Its backward adds <G, F0> drho/dl_i = <G, F0> (1 - 2 m_i) exp(-2 m_i) / (2 rho) to the diagonal of L o (U^T G U).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from ._checks import check_matrix, psd_tolerance, require_psd
from ._primitive import Primitive, bind
from ._xp import arange_like, diag_embed, diagonal, sym
from .eigh import KERNELS, _kernel_options, eigenvalue_floor, eigenvalue_floor_rel, kernel_matrix, tie_tolerance

__all__ = ["SpectralFunction", "SPECTRAL_FUNCTIONS", "GRADS", "expm_neg", "invsqrtm", "logm", "powm", "seb", "spectral",
           "spectral_p", "spectral_vjp_p", "sqrtm", "truncate"]


class SpectralFunction(NamedTuple):
    """A scalar function applied to eigenvalues: values f(l), derivative f'(l), and the divided difference f[a, b]
    (``dd(xp, a, b)``, exact at a == b). ``positive``: the domain is l > 0 (the eigenvalue floor applies).
    ``dd2(xp, a, b, c)``, optional: the second divided difference f[a, b, c], exact at ties ([Note: spectral second
    order])."""

    name: str
    f: Callable[[Any, Any], Any]
    df: Callable[[Any, Any], Any]
    dd: Callable[[Any, Any, Any], Any]
    positive: bool
    dd2: Callable[..., Any] | None = None


def _lo_hi(xp: Any, a: Any, b: Any) -> tuple[Any, Any, Any]:
    """(lo, hi, gap) of a symmetric pair, and gap = hi - lo >= 0 (exact for close values)."""
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
        x, z = xp.minimum(xp.minimum(a, b), c), xp.maximum(xp.maximum(a, b), c)
        y = xp.maximum(xp.minimum(a, b), xp.minimum(xp.maximum(a, b), c))
        spread = z - x
        wide = spread > 1e-4 * xp.maximum(xp.maximum(xp.abs(x), xp.abs(z)), xp.full_like(z, unit))
        far = (dd(xp, y, z) - dd(xp, x, y)) / xp.where(wide, spread, xp.ones_like(spread))
        f2, f3, f4 = higher(xp, y)
        dx, dz = x - y, z - y
        near = f2 / 2 + f3 / 6 * (dx + dz) + f4 / 24 * (dx * dx + dx * dz + dz * dz)
        return xp.where(wide, far, near)

    return dd2


def _log_dd(xp: Any, a: Any, b: Any) -> Any:
    lo, hi, gap = _lo_hi(xp, a, b)
    return xp.where(gap > 0, xp.log1p(gap / lo) / _nonzero(xp, gap), 1.0 / lo)


def _exp_neg_dd(xp: Any, a: Any, b: Any) -> Any:
    # e^{-hi} - e^{-lo} = e^{-lo} expm1(-(hi - lo)): bounded factors, no overflow or cancellation.
    lo, _, gap = _lo_hi(xp, a, b)
    return xp.exp(-lo) * xp.where(gap > 0, xp.expm1(-gap) / _nonzero(xp, gap), -xp.ones_like(gap))


def _power(p: float) -> SpectralFunction:
    def dd(xp: Any, a: Any, b: Any) -> Any:
        # t = log(hi/lo). Near (t < 1): lo^(p-1) expm1(p t) / expm1(t), exact as t -> 0 (limit p lo^(p-1)).
        # Far: the plain quotient has no cancellation and cannot overflow through exp(p t).
        lo, hi, gap = _lo_hi(xp, a, b)
        t = xp.log1p(gap / lo)
        near = lo ** (p - 1) * xp.where(t > 0, xp.expm1(p * t) / _nonzero(xp, xp.expm1(t)), p * xp.ones_like(t))
        far = (hi**p - lo**p) / _nonzero(xp, gap)
        return xp.where(t < 1, near, far)

    def higher(xp: Any, y: Any) -> tuple:
        c2, c3, c4 = p * (p - 1), p * (p - 1) * (p - 2), p * (p - 1) * (p - 2) * (p - 3)
        return c2 * y ** (p - 2), c3 * y ** (p - 3), c4 * y ** (p - 4)

    return SpectralFunction(f"power({p!r})", lambda xp, l: l**p, lambda xp, l: p * l ** (p - 1), dd, True,
                            _dd2_from(dd, higher, 0.0))


SPECTRAL_FUNCTIONS: dict[str, SpectralFunction] = {
    "sqrt": SpectralFunction("sqrt", lambda xp, l: xp.sqrt(l), lambda xp, l: 0.5 / xp.sqrt(l), _sqrt_dd, True,
                             _sqrt_dd2),
    "invsqrt": SpectralFunction("invsqrt", lambda xp, l: 1.0 / xp.sqrt(l), lambda xp, l: -0.5 / (l * xp.sqrt(l)),
                                _invsqrt_dd, True, _invsqrt_dd2),
    "log": SpectralFunction("log", lambda xp, l: xp.log(l), lambda xp, l: 1.0 / l, _log_dd, True,
                            _dd2_from(_log_dd, lambda xp, y: (-1.0 / y**2, 2.0 / y**3, -6.0 / y**4), 0.0)),
    "exp_neg": SpectralFunction("exp_neg", lambda xp, l: xp.exp(-l), lambda xp, l: -xp.exp(-l), _exp_neg_dd, False,
                                _dd2_from(_exp_neg_dd, lambda xp, y: (xp.exp(-y), -xp.exp(-y), xp.exp(-y)), 1.0)),
    "identity": SpectralFunction("identity", lambda xp, l: l, lambda xp, l: xp.ones_like(l),
                                 lambda xp, a, b: xp.ones_like(a + b), False),
}


def _user_function(f: Callable[[Any], Any], df: Callable[[Any], Any], positive: bool) -> SpectralFunction:
    def dd(xp: Any, a: Any, b: Any) -> Any:
        # Generic divided difference: subject to cancellation when a and b are close; tied pairs use the mean slope.
        gap = a - b
        scale = xp.max(xp.abs(xp.maximum(a, b)), axis=(-2, -1), keepdims=True)
        tied = xp.abs(gap) <= a.shape[-2] * float(xp.finfo(gap.dtype).eps) * scale
        return xp.where(tied, (df(a) + df(b)) / 2, (f(a) - f(b)) / xp.where(tied, xp.ones_like(gap), gap))

    name = getattr(f, "__name__", "f")
    return SpectralFunction(name, lambda xp, l: f(l), lambda xp, l: df(l), dd, positive)


# ---------------------------------------------------------------------------------------------------------------------
# Public functions: each is one call of ``_apply``.

#: Backward rules of the spectral functions: "exact" (Loewner), the eigh kernels, and "eigh" (exact eigh kernel).
GRADS = ("exact", *[k for k in KERNELS if k != "exact"], "eigh")

def sqrtm(S: Any, *, grad: str = "exact", floor: float | str = "auto", truncate: int = 0,
          compute_dtype: str | None = "float64", **kernel_options: Any) -> Any:
    """Principal square root S^(1/2) of symmetric PSD matrices, by eigendecomposition.

    S: (..., d, d) real symmetric positive semi-definite; returns (..., d, d) in S's dtype. Backward: the exact Loewner
    formula with L_ij = 1/(sqrt(l_i) + sqrt(l_j)), finite at ties; eigenvalues below ``floor * max|l|`` are clamped
    (module docstring). ``grad`` selects an approximate kernel instead ("taylor", "pade", "clip", "power_iteration",
    "eigh"), with its ``kernel_options``; ``truncate=k`` sets the k smallest eigenvalues to zero.
    """
    return _apply("sqrtm", S, SPECTRAL_FUNCTIONS["sqrt"], grad, floor, truncate, None, compute_dtype, kernel_options)


def invsqrtm(S: Any, *, grad: str = "exact", floor: float | str = "auto", truncate: int = 0,
             compute_dtype: str | None = "float64", **kernel_options: Any) -> Any:
    """Inverse square root S^(-1/2) of symmetric PSD matrices (eigenvalues floored as in ``sqrtm``).

    S: (..., d, d); returns (..., d, d). L_ij = -1/(sqrt(l_i) sqrt(l_j) (sqrt(l_i) + sqrt(l_j))).
    """
    return _apply("invsqrtm", S, SPECTRAL_FUNCTIONS["invsqrt"], grad, floor, truncate, None, compute_dtype,
                  kernel_options)


def powm(S: Any, p: float, *, grad: str = "exact", floor: float | str = "auto", truncate: int = 0,
         compute_dtype: str | None = "float64", **kernel_options: Any) -> Any:
    """Matrix power S^p of symmetric PSD matrices for real p (eigenvalues floored as in ``sqrtm``).

    S: (..., d, d); returns (..., d, d). L_ij = (l_i^p - l_j^p)/(l_i - l_j), evaluated as
    l_j^(p-1) expm1(p t)/expm1(t), t = log(l_i/l_j), for close pairs: no cancellation, exact at ties (p l^(p-1)).
    """
    if isinstance(p, bool) or not isinstance(p, (int, float)) or p != p or abs(p) == float("inf"):
        raise TypeError(f"powm: argument 'p' must be a finite real number, got {p!r}")
    return _apply("powm", S, _power(float(p)), grad, floor, truncate, None, compute_dtype, kernel_options)


def logm(S: Any, *, grad: str = "exact", floor: float | str = "auto", truncate: int = 0,
         compute_dtype: str | None = "float64", **kernel_options: Any) -> Any:
    """Principal logarithm of symmetric positive definite matrices (eigenvalues floored as in ``sqrtm``).

    S: (..., d, d); returns (..., d, d). L_ij = log1p((l_i - l_j)/l_j)/(l_i - l_j) (no cancellation), 1/l_i at ties.
    """
    return _apply("logm", S, SPECTRAL_FUNCTIONS["log"], grad, floor, truncate, None, compute_dtype, kernel_options)


def expm_neg(S: Any, *, grad: str = "exact", truncate: int = 0, compute_dtype: str | None = "float64",
             **kernel_options: Any) -> Any:
    """exp(-S) of symmetric matrices: the exponential branch of SEB, U diag(exp(-l)) U^T.

    S: (..., d, d) real symmetric; returns (..., d, d). L_ij = exp(-l_lo) expm1(-(l_hi - l_lo))/(l_hi - l_lo).
    """
    return _apply("expm_neg", S, SPECTRAL_FUNCTIONS["exp_neg"], grad, None, truncate, None, compute_dtype,
                  kernel_options)


def truncate(S: Any, k: int, *, compute_dtype: str | None = "float64") -> Any:
    """S with its k smallest eigenvalues set to zero: U diag(0,..,0, l_k+1, .., l_d) U^T.

    S: (..., d, d) real symmetric; returns (..., d, d). At a tie between the k-th and (k+1)-th eigenvalue the result is
    not differentiable; the backward holds the cut fixed there (module docstring).
    """
    return _apply("truncate", S, SPECTRAL_FUNCTIONS["identity"], "exact", None, k, None, compute_dtype, {})


def seb(S: Any, *, grad: str = "exact", floor: float | str = "auto", truncate: int = 0,
        compute_dtype: str | None = "float64", **kernel_options: Any) -> Any:
    """The scaling eigen branch (TPAMI 2022): (1 + ||R||_F) S^(1/2), R = S^(1/2) exp(-S)^T.

    S: (..., d, d) symmetric PSD; returns (..., d, d). ||R||_F = sqrt(sum_i l_i exp(-2 l_i)) is computed from the
    eigenvalues, so a zero channel gives a finite result (the reference code's NaN). Where ||R||_F = 0 (S = 0) its
    derivative does not exist and the backward uses 0 for it.
    """
    return _apply("seb", S, SPECTRAL_FUNCTIONS["sqrt"], grad, floor, truncate, "seb", compute_dtype, kernel_options)


def spectral(S: Any, f: Callable[[Any], Any], df: Callable[[Any], Any], *, positive: bool = False,
             grad: str = "exact", floor: float | str = "auto", truncate: int = 0,
             compute_dtype: str | None = "float64", **kernel_options: Any) -> Any:
    """U diag(f(l)) U^T for a user function f with derivative df (both take and return arrays of eigenvalues).

    S: (..., d, d) real symmetric; returns (..., d, d). The Loewner matrix uses (f(a) - f(b))/(a - b), and the mean of
    df(a) and df(b) for pairs closer than the tie tolerance: accurate to about eps * |f| / |a - b| near ties (the
    built-in functions have cancellation-free formulas). ``positive=True``: f is defined for l > 0 only; S must then be
    PSD and the eigenvalue ``floor`` applies.
    """
    fn = _user_function(f, df, positive)
    return _apply("spectral", S, fn, grad, floor if positive else None, truncate, None, compute_dtype, kernel_options)


def _apply(op: str, S: Any, fn: SpectralFunction, grad: str, floor: float | str | None, k: int, gain: str | None,
           compute_dtype: str | None, kernel_options: dict) -> Any:
    xp = check_matrix(S, op, "S")
    if grad not in GRADS:
        raise ValueError(f"{op}: grad must be one of {GRADS}, got {grad!r}")
    options = _kernel_options(op, "exact" if grad == "eigh" else grad, kernel_options)
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < S.shape[-1]:
        raise ValueError(f"{op}: truncate must be an integer in [0, d) = [0, {S.shape[-1]}), got {k!r}")
    rel = eigenvalue_floor_rel(S, floor) if fn.positive else None
    tol = psd_tolerance(xp, S) if fn.positive else None
    return bind(spectral_p, S, compute_dtype=compute_dtype, fn=fn, grad=grad, options=options, floor=rel,
                truncate=k, gain=gain, psd_tol=tol, op=op)[0]


# ---------------------------------------------------------------------------------------------------------------------
# The primitive.

class _Spectrum(NamedTuple):
    """Residuals of the forward pass: raw eigenvalues l, eigenvectors U, floored m, g(l), and the SEB gain."""

    l: Any
    U: Any
    m: Any
    g: Any
    above: Any
    keep: Any
    rho: Any


def _spectral_forward(xp: Any, S: Any, *, fn: SpectralFunction, grad: str, options: dict, floor: float | None,
                      truncate: int, gain: str | None, psd_tol: float | None, op: str) -> tuple[tuple, _Spectrum]:
    l, U = xp.linalg.eigh(S)
    if fn.positive:
        require_psd(xp, l, op, psd_tol)
        tau = xp.clip(eigenvalue_floor(xp, l, floor), float(xp.finfo(l.dtype).smallest_normal), None)
        m, above = xp.maximum(l, tau), l >= tau
    else:
        m, above = l, None
    keep = arange_like(xp, l, l.shape[-1]) >= truncate
    if above is not None:
        # The floored eigenspace is dropped only as a whole (module docstring).
        keep = xp.where(above, keep, xp.sum(xp.astype(~above, l.dtype), axis=-1, keepdims=True) > truncate)
    g = xp.where(keep, fn.f(xp, m), xp.zeros_like(m))
    out = (U * g[..., None, :]) @ xp.matrix_transpose(U)
    rho = None
    if gain == "seb":
        rho = xp.sqrt(xp.sum(m * xp.exp(-2 * m), axis=-1))
        out = (1 + rho)[..., None, None] * out
    return (out,), _Spectrum(l, U, m, g, above, keep, rho)


def _loewner(xp: Any, fn: SpectralFunction, res: _Spectrum, grad: str, options: dict) -> Any:
    """The matrix L of [Note: Loewner backward] (..., d, d) for the residuals of a forward pass."""
    l, m, g, above, keep = res.l, res.m, res.g, res.above, res.keep
    if grad == "exact" and bool(xp.all(keep)):
        # Nothing truncated: L_ij = f[m_i, m_j] times the floor factor, fewer passes than the general route below and
        # the same values. Each built-in dd is exact at a == b, where it equals f'(a): the diagonal is included.
        mi, mj = m[..., :, None], m[..., None, :]
        if above is None or bool(xp.all(above)):
            return fn.dd(xp, mi, mj)  # nothing floored: the factor is 1
        # The factor (m_i - m_j)/(l_i - l_j) is 1 above the floor and 0 below; on tied pairs (and the diagonal) it is
        # 1 unless both eigenvalues are below the floor, where g is constant.
        gap = l[..., :, None] - l[..., None, :]
        tied = xp.abs(gap) <= tie_tolerance(xp, l)
        either_above = xp.astype(above[..., :, None] | above[..., None, :], gap.dtype)
        factor = xp.where(tied, either_above, (mi - mj) / xp.where(tied, xp.ones_like(gap), gap))
        return fn.dd(xp, mi, mj) * factor
    li, lj = l[..., :, None], l[..., None, :]
    gap = li - lj
    tied = xp.abs(gap) <= tie_tolerance(xp, l)
    one_gap = xp.where(tied, xp.ones_like(gap), gap)
    slope = fn.df(xp, m)
    if above is not None:
        slope = xp.where(above, slope, xp.zeros_like(slope))
    slope = xp.where(keep, slope, xp.zeros_like(slope))
    if grad == "exact":
        mi, mj = m[..., :, None], m[..., None, :]
        # Floor factor (m_i - m_j)/(l_i - l_j): 1 above the floor, 0 below, in [0, 1] across; exact where tied.
        floor_factor = xp.where(tied, xp.ones_like(gap), (mi - mj) / one_gap)
        inside = fn.dd(xp, mi, mj) * floor_factor
        ki, kj = keep[..., :, None], keep[..., None, :]
        across = xp.where(tied, xp.zeros_like(gap), (g[..., :, None] - g[..., None, :]) / one_gap)
        L = xp.where(ki & kj, inside, xp.where(ki | kj, across, xp.zeros_like(inside)))
    else:
        # sym(K^T o (2 Gh diag(g))) = (K_ij g_i + K_ji g_j) o Gh; K_ij (g_i - g_j) for antisymmetric kernels.
        K = kernel_matrix(xp, m, "exact" if grad == "eigh" else grad, options)
        L = K * g[..., :, None] + xp.matrix_transpose(K) * g[..., None, :]
    if above is not None:
        # Below the floor g is constant, so F does not change under rotations inside that eigenspace: those pairs
        # contribute 0 for every kernel (power iteration's non-antisymmetric kernel would give g(tau) / tau there).
        both_below = ~(above[..., :, None] | above[..., None, :])
        L = xp.where(both_below, xp.zeros_like(L), L)
    # The diagonal is g'(l_i) in every case (the kernels only approximate the off-diagonal terms).
    eye = diag_embed(xp, xp.ones_like(l))
    return L * (1 - eye) + diag_embed(xp, slope)


def _spectral_vjp(xp: Any, res: _Spectrum, G: Any, *, fn: SpectralFunction, grad: str, options: dict,
                  floor: float | None, truncate: int, gain: str | None, psd_tol: float | None, op: str) -> tuple:
    # [Note: Loewner backward]: dS = U (L o (U^T sym(G) U)) U^T.
    U, Ut = res.U, xp.matrix_transpose(res.U)
    Gh = Ut @ sym(xp, G) @ U
    inner = _loewner(xp, fn, res, grad, options) * Gh
    if gain == "seb":
        # out = (1 + rho) F0: the F0 term scales by (1 + rho); the rho term adds <G, F0> drho/dl on the diagonal,
        # with <G, F0> = sum_i Gh_ii g_i and drho/dl_i = (1 - 2 m_i) exp(-2 m_i) / (2 rho) above the floor.
        rho = res.rho
        safe = xp.where(rho > 0, rho, xp.ones_like(rho))
        dm = (1 - 2 * res.m) * xp.exp(-2 * res.m) / (2 * safe[..., None])
        dm = xp.where((rho > 0)[..., None] & res.above, dm, xp.zeros_like(dm))
        g_dot_f = xp.sum(diagonal(xp, Gh) * res.g, axis=-1)
        inner = (1 + rho)[..., None, None] * inner + diag_embed(xp, g_dot_f[..., None] * dm)
    return (U @ inner @ Ut,)


def _spectral_vjp_forward(xp: Any, S: Any, G: Any, **params: Any) -> tuple[tuple, tuple]:
    # [Note: spectral second order]: the primitive (S, G) -> V(S, G).
    _, res = _spectral_forward(xp, S, **params)
    return _spectral_vjp(xp, res, G, **params), (res, G)


def _spectral_vjp_vjp(xp: Any, saved: tuple, W: Any, *, fn: SpectralFunction, op: str, **params: Any) -> tuple:
    res, G = saved
    if res.above is not None and not bool(xp.all(res.above)):
        raise NotImplementedError(
            f"{op}: the second derivative is implemented for spectra above the eigenvalue floor; this input has "
            "eigenvalues clamped at the floor. Add a ridge (S + eps I) or pass floor=None for positive definite S.")
    U, Ut = res.U, xp.matrix_transpose(res.U)
    Gh, Wh = Ut @ sym(xp, G) @ U, Ut @ sym(xp, W) @ U
    # dG = V(S, W): the Loewner matrix (its fast path: nothing floored or truncated here).
    dG = U @ (_loewner(xp, fn, res, "exact", {}) * Wh) @ Ut
    m = res.m
    f3 = fn.dd2(xp, m[..., :, None, None], m[..., None, :, None], m[..., None, None, :])
    # A_ab = sum_c f[a, b, c] Gh_ac Wh_cb (Wh symmetric: Wh_cb = Wh_bc).
    A = xp.sum(f3 * Gh[..., :, None, :] * Wh[..., None, :, :], axis=-1)
    return U @ (A + xp.matrix_transpose(A)) @ Ut, dG


spectral_vjp_p = Primitive("spectral_vjp", _spectral_vjp_forward, _spectral_vjp_vjp, differentiable=(0, 1))


def _spectral_second_order(params: dict) -> Primitive | None:
    """``spectral_vjp_p`` where [Note: spectral second order] covers ``params``, else None."""
    covered = (params["grad"] == "exact" and params["truncate"] == 0 and params["gain"] is None
               and params["fn"].dd2 is not None)
    return spectral_vjp_p if covered else None


spectral_p = Primitive("spectral", _spectral_forward, _spectral_vjp, vjp_primitive=_spectral_second_order)
