"""Spectral matrix functions F(S) = U g(l) U^T with the exact, stable Daleckii-Krein backward.

The public functions resolve their options into a ``SpectralSpec`` (eigpool._spec) and apply the one primitive
``spectral_p`` with it (``matrix_function``). Its backward is the Loewner formula ([Note: Loewner backward] in
eigpool._loewner), with the eigenvalue floor and truncation stated there; second derivatives follow
[Note: spectral second order] in the same module. The scalar functions and their divided differences are in
eigpool._divided.

SEB (the scaling eigen branch, METHODS.md section 5): F(S) = (1 + rho) U sqrt(m) U^T with
rho = ||Q E^T||_F = sqrt(sum_i m_i exp(-2 m_i)), computed from the eigenvalues directly (finite for dead channels).
Its backward adds <G, F0> drho/dl_i = <G, F0> (1 - 2 m_i) exp(-2 m_i) / (2 rho) to the diagonal of L o (U^T G U).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._checks import check_matrix, check_truncate, checked
from ._divided import SPECTRAL_FUNCTIONS, SpectralFunction
from ._loewner import Spectrum, loewner, second_order_vjp
from ._primitive import Primitive, bind
from ._spec import GRADS, SpectralSpec, resolve_exponent, resolve_spectral, user_spectral_function
from ._xp import arange_like, diag_embed, diagonal, max_abs, sym

__all__ = ["GRADS", "SpectralFunction", "SpectralSpec", "expm_neg", "invsqrtm", "logm", "matrix_function", "powm",
           "seb", "spectral", "spectral_p", "spectral_spec", "sqrtm", "truncate"]


def sqrtm(S: Any, *, grad: str = "exact", floor: float | str | None = "auto", truncate: int = 0,
          compute_dtype: str | None = "float64", **kernel_options: Any) -> Any:
    """Principal square root S^(1/2) of symmetric PSD matrices, by eigendecomposition.

    S: (..., d, d) real symmetric positive semi-definite; returns (..., d, d) in S's dtype. Backward: the exact Loewner
    formula with L_ij = 1/(sqrt(l_i) + sqrt(l_j)), finite at ties; eigenvalues below ``floor * max|l|`` are clamped
    ("auto": d * eps of the compute dtype; eigpool._loewner). ``grad`` selects an eigenvector kernel instead
    ("taylor", "pade", "clip", "power_iteration", "eigh"), with its ``kernel_options``; ``truncate=k`` sets the k
    smallest eigenvalues to zero. ``compute_dtype``: "float64" (default), "float32" or None (S's own).
    """
    return matrix_function(S, resolve_spectral("sqrtm", "sqrt", grad=grad, floor=floor, truncate=truncate,
                                            compute_dtype=compute_dtype, kernel_options=kernel_options), op="sqrtm")


def invsqrtm(S: Any, *, grad: str = "exact", floor: float | str | None = "auto", truncate: int = 0,
             compute_dtype: str | None = "float64", **kernel_options: Any) -> Any:
    """Inverse square root S^(-1/2) of symmetric PSD matrices (eigenvalues floored as in ``sqrtm``).

    S: (..., d, d); returns (..., d, d). L_ij = -1/(sqrt(l_i) sqrt(l_j) (sqrt(l_i) + sqrt(l_j))).
    """
    return matrix_function(S, resolve_spectral("invsqrtm", "invsqrt", grad=grad, floor=floor, truncate=truncate,
                                            compute_dtype=compute_dtype, kernel_options=kernel_options),
                           op="invsqrtm")


def powm(S: Any, p: float, *, grad: str = "exact", floor: float | str | None = "auto", truncate: int = 0,
         compute_dtype: str | None = "float64", **kernel_options: Any) -> Any:
    """Matrix power S^p of symmetric PSD matrices for real p (eigenvalues floored as in ``sqrtm``).

    S: (..., d, d); returns (..., d, d). L_ij = (l_i^p - l_j^p)/(l_i - l_j), evaluated as
    l_j^(p-1) expm1(p t)/expm1(t), t = log(l_i/l_j), for close pairs: no cancellation, exact at ties (p l^(p-1)).
    """
    return matrix_function(S, resolve_spectral("powm", "power", p=resolve_exponent("powm", p), grad=grad, floor=floor,
                                            truncate=truncate, compute_dtype=compute_dtype,
                                            kernel_options=kernel_options), op="powm")


def logm(S: Any, *, grad: str = "exact", floor: float | str | None = "auto", truncate: int = 0,
         compute_dtype: str | None = "float64", **kernel_options: Any) -> Any:
    """Principal logarithm of symmetric positive definite matrices (eigenvalues floored as in ``sqrtm``).

    S: (..., d, d); returns (..., d, d). L_ij = log1p((l_i - l_j)/l_j)/(l_i - l_j) (no cancellation), 1/l_i at ties.
    """
    return matrix_function(S, resolve_spectral("logm", "log", grad=grad, floor=floor, truncate=truncate,
                                            compute_dtype=compute_dtype, kernel_options=kernel_options), op="logm")


def expm_neg(S: Any, *, grad: str = "exact", truncate: int = 0, compute_dtype: str | None = "float64",
             **kernel_options: Any) -> Any:
    """exp(-S) of symmetric matrices: the exponential branch of SEB, U diag(exp(-l)) U^T.

    S: (..., d, d) real symmetric; returns (..., d, d). L_ij = exp(-l_lo) expm1(-(l_hi - l_lo))/(l_hi - l_lo).
    """
    return matrix_function(S, resolve_spectral("expm_neg", SPECTRAL_FUNCTIONS["exp_neg"], grad=grad,
                                            truncate=truncate, compute_dtype=compute_dtype,
                                            kernel_options=kernel_options), op="expm_neg")


def truncate(S: Any, k: int, *, compute_dtype: str | None = "float64") -> Any:
    """S with its k smallest eigenvalues set to zero: U diag(0,..,0, l_k+1, .., l_d) U^T.

    S: (..., d, d) real symmetric; returns (..., d, d). At a tie between the k-th and (k+1)-th eigenvalue the result is
    not differentiable; the backward holds the cut fixed there (eigpool._loewner).
    """
    return matrix_function(S, resolve_spectral("truncate", SPECTRAL_FUNCTIONS["identity"], truncate=k,
                                            compute_dtype=compute_dtype), op="truncate")


def seb(S: Any, *, grad: str = "exact", floor: float | str | None = "auto", truncate: int = 0,
        compute_dtype: str | None = "float64", **kernel_options: Any) -> Any:
    """The scaling eigen branch (TPAMI 2022): (1 + ||R||_F) S^(1/2), R = S^(1/2) exp(-S)^T.

    S: (..., d, d) symmetric PSD; returns (..., d, d). ||R||_F = sqrt(sum_i l_i exp(-2 l_i)) is computed from the
    eigenvalues, so a zero channel gives a finite result (the reference code's NaN). Where ||R||_F = 0 (S = 0) its
    derivative does not exist and the backward uses 0 for it.
    """
    return matrix_function(S, resolve_spectral("seb", "sqrt", grad=grad, floor=floor, truncate=truncate, seb=True,
                                            compute_dtype=compute_dtype, kernel_options=kernel_options), op="seb")


def spectral(S: Any, f: Callable[[Any], Any], df: Callable[[Any], Any], *, positive: bool = False,
             grad: str = "exact", floor: float | str | None = "auto", truncate: int = 0,
             compute_dtype: str | None = "float64", **kernel_options: Any) -> Any:
    """U diag(f(l)) U^T for a user function f with derivative df (both take and return arrays of eigenvalues).

    S: (..., d, d) real symmetric; returns (..., d, d). The Loewner matrix uses (f(a) - f(b))/(a - b), and the mean of
    df(a) and df(b) for pairs closer than the tie tolerance: accurate to about eps * |f| / |a - b| near ties (the
    built-in functions have cancellation-free formulas). ``positive=True``: f is defined for l > 0 only; S must then be
    PSD and the eigenvalue ``floor`` applies.
    """
    fn = user_spectral_function(f, df, positive)
    return matrix_function(S, resolve_spectral("spectral", fn, grad=grad, floor=floor, truncate=truncate,
                                            compute_dtype=compute_dtype, kernel_options=kernel_options),
                           op="spectral")


def spectral_spec(fn: str | SpectralFunction = "sqrt", *, p: float | None = None, grad: str = "exact",
                  floor: float | str | None = "auto", truncate: int = 0, seb: bool = False,
                  compute_dtype: str | None = "float64", **kernel_options: Any) -> SpectralSpec:
    """The frozen, hashable specification of a spectral function, validated once: what ``sqrtm(S, **options)`` and
    the others resolve their options into, for ``matrix_function(S, spec)`` and the layers.

    fn: "sqrt", "invsqrt", "log", "power" (exponent ``p``) or a ``SpectralFunction``; the other options as in
    ``sqrtm`` (``seb=True``: the scaling eigen branch of ``seb``, fn "sqrt" only). A bad option raises ValueError or
    TypeError naming the option and the allowed values. Example::

        spec = eigpool.spectral_spec("power", p=0.5, grad="taylor", degree=50)
        Q = eigpool.matrix_function(S, spec)
    """
    return resolve_spectral("spectral_spec", fn, p=p, grad=grad, floor=floor, truncate=truncate, seb=seb,
                            compute_dtype=compute_dtype, kernel_options=kernel_options)


def matrix_function(S: Any, spec: SpectralSpec, *, op: str = "matrix_function") -> Any:
    """F(S) for the resolved specification ``spec`` (``spectral_spec``): what ``sqrtm`` and the others compute.

    S: (..., d, d) real symmetric (PSD for a function with ``positive=True``); returns (..., d, d) in S's dtype.
    Layers keep a ``SpectralSpec`` and call this, so their options are validated once, when the layer is built.
    Value checks (finite, symmetric, PSD) follow eigpool.value_checks.
    """
    check_matrix(S, op, "S")
    check_truncate(op, spec.truncate, S.shape[-1])
    out, _ = checked(op, "S", S, lambda: bind(spectral_p, S, spec=spec),
                     eigenvalues=1 if spec.fn.positive else None)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# The primitive.

def reshape_spectrum(xp: Any, spec: SpectralSpec, l: Any, U: Any) -> Spectrum:
    """Floor and truncate the ascending eigenvalues ``l`` as ``spec`` says (eigpool._loewner) and apply f."""
    fn, d = spec.fn, l.shape[-1]
    m, above, tau, keep = l, None, None, None
    if spec.floor is not None:
        rel = spec.floor.relative(d, float(xp.finfo(l.dtype).eps))
        tau = xp.maximum(rel * max_abs(xp, l), float(xp.finfo(l.dtype).smallest_normal))
        m, above = xp.maximum(l, tau), l >= tau
    if spec.truncate:
        keep = arange_like(xp, l, d) >= spec.truncate
        if above is not None:
            # The floored eigenspace is dropped only as a whole (eigpool._loewner).
            n_floored = xp.sum(xp.astype(~above, l.dtype), axis=-1, keepdims=True)
            keep = xp.where(above, keep, n_floored > spec.truncate)
    g = fn.f(xp, m) if keep is None else xp.where(keep, fn.f(xp, m), xp.zeros_like(m))
    rho = xp.sqrt(xp.sum(m * xp.exp(-2 * m), axis=-1)) if spec.seb else None
    return Spectrum(l, U, m, g, above, keep, tau, rho)


def _spectral_forward(xp: Any, S: Any, *, spec: SpectralSpec) -> tuple[tuple, Spectrum]:
    l, U = xp.linalg.eigh(S)
    s = reshape_spectrum(xp, spec, l, U)
    out = (U * s.g[..., None, :]) @ U.mT
    if spec.seb:
        out = (1 + s.rho)[..., None, None] * out
    return (out, l), s


def seb_gain_slope(xp: Any, s: Spectrum) -> Any:
    """d rho / d l_i = (1 - 2 m_i) exp(-2 m_i) / (2 rho) above the floor, 0 below it and where rho = 0 (S = 0,
    where rho has no derivative)."""
    safe = xp.where(s.rho > 0, s.rho, xp.ones_like(s.rho))
    slope = (1 - 2 * s.m) * xp.exp(-2 * s.m) / (2 * safe[..., None])
    return xp.where((s.rho > 0)[..., None] & s.above, slope, xp.zeros_like(slope))


def _spectral_vjp(xp: Any, s: Spectrum, G: Any, *, spec: SpectralSpec) -> tuple:
    # [Note: Loewner backward]: dS = U (L o (U^T sym(G) U)) U^T.
    U, Ut = s.U, s.U.mT
    Gh = Ut @ sym(xp, G) @ U
    inner = loewner(xp, spec, s) * Gh
    if spec.seb:
        # out = (1 + rho) F0: the F0 term scales by (1 + rho); the rho term adds <G, F0> drho/dl on the diagonal,
        # with <G, F0> = sum_i Gh_ii g_i.
        g_dot_f = xp.sum(diagonal(xp, Gh) * s.g, axis=-1)
        inner = (1 + s.rho)[..., None, None] * inner + diag_embed(xp, g_dot_f[..., None] * seb_gain_slope(xp, s))
    return (U @ inner @ Ut,)


def _spectral_vjp_vjp(xp: Any, s: Spectrum, cotangents: tuple, W: Any, *, spec: SpectralSpec) -> tuple:
    if spec.seb:
        return _seb_vjp_vjp(xp, s, cotangents[0], W, spec)
    return second_order_vjp(xp, spec, s, cotangents[0], W)


def _seb_slope_dd(xp: Any, a: Any, b: Any) -> Any:
    # v(x) = (1 - 2x) e^{-2x}; with h = a - b: v(a) - v(b) = e^{-2b} ((1 - 2a) expm1(-2h) - 2h), no cancellation;
    # v[a, a] = v'(a) = (4a - 4) e^{-2a}.
    h = a - b
    near = h == 0
    ratio = xp.where(near, -2.0, xp.expm1(-2 * h) / xp.where(near, 1.0, h))
    return xp.exp(-2 * b) * ((1 - 2 * a) * ratio - 2)


#: u'(x) for u(x) = x e^{-2x}, the eigenvalue function of SEB's gain rho^2 = sum_i u(m_i) (its Loewner matrix is the
#: Hessian of rho^2).
_SEB_SLOPE = SpectralFunction("seb_slope", lambda xp, l: (1 - 2 * l) * xp.exp(-2 * l),
                              lambda xp, l: (4 * l - 4) * xp.exp(-2 * l), _seb_slope_dd, False)


def _seb_vjp_vjp(xp: Any, s: Spectrum, G: Any, W: Any, spec: SpectralSpec) -> tuple:
    """[Note: SEB second order]
    F = (1 + rho) F0, V(S, G) = (1 + rho) V0(S, G) + <G, F0> grad rho, with F0 the
    floored square root, rho = sqrt(phi), phi = sum_i u(m_i), u(x) = x e^{-2x}. For the cotangent W of V:

        dS = (1 + rho) R0(G, W) + <W, V0(S, G)> grad rho + <W, grad rho> V0(S, G)
             + <G, F0> (H_phi[W] / (2 rho) - grad rho <grad rho, W> / rho),
        dG = J W = (1 + rho) V0(S, W) + <grad rho, W> F0,

    R0 the second-order rule of F0, H_phi[W] = U (L_u' o (U^T W U)) U^T the Hessian of phi (the Loewner matrix of u',
    0 below the floor), grad rho = U diag(u'(m) / (2 rho)) U^T. Where rho = 0 (S = 0) the rho terms are 0, as in the
    first derivative."""
    base = SpectralSpec(spec.fn, None, spec.floor, spec.truncate, False, spec.compute_dtype)
    R0, V0W = second_order_vjp(xp, base, s, G, W)
    U, Ut = s.U, s.U.mT
    Gh, Wh = Ut @ sym(xp, G) @ U, Ut @ sym(xp, W) @ U
    V0G = loewner(xp, base, s) * Gh
    slope = seb_gain_slope(xp, s)
    alive = (s.rho > 0)[..., None, None]
    safe = xp.where(s.rho > 0, s.rho, 1.0)[..., None, None]
    g_f = xp.sum(diagonal(xp, Gh) * s.g, axis=-1)[..., None, None]      # <G, F0>
    w_v0 = xp.sum(Wh * V0G, axis=(-2, -1))[..., None, None]             # <W, V0(S, G)>
    w_r = xp.sum(diagonal(xp, Wh) * slope, axis=-1)[..., None, None]    # <W, grad rho>
    u_slope = Spectrum(s.l, U, s.l, xp.where(s.above, _SEB_SLOPE.f(xp, s.l), 0.0), None, s.above, None, None)
    hessian = loewner(xp, SpectralSpec(_SEB_SLOPE, None, None, 0, False), u_slope) * Wh
    inner = (w_v0 * diag_embed(xp, slope) + w_r * V0G
             + g_f * (hessian / (2 * safe) - diag_embed(xp, slope) * w_r / safe))
    dS = (1 + s.rho)[..., None, None] * R0 + U @ xp.where(alive, inner, 0.0) @ Ut
    F0 = (U * s.g[..., None, :]) @ Ut
    return dS, (1 + s.rho)[..., None, None] * V0W + w_r * F0


def _spectral_second_order(spec: SpectralSpec) -> Callable[..., tuple] | None:
    """The rule of [Note: spectral second order] (and [Note: SEB second order]) where it covers ``spec``: the exact
    backward of a function with second divided differences; else None."""
    return _spectral_vjp_vjp if spec.kernel is None and spec.fn.dd2 is not None else None


spectral_p = Primitive("spectral", _spectral_forward, _spectral_vjp, aux_outputs=1,
                       second_order=_spectral_second_order)
