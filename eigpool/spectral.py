"""Spectral matrix functions F(S) = U g(l) U^H of symmetric or Hermitian matrices with the exact, stable
Daleckii-Krein backward, and their Frechet derivatives.

The public functions resolve their options into a ``SpectralSpec`` (eigpool._spec) and apply the one primitive
``spectral_p`` with it (``matrix_function``). Its backward is the Loewner formula ([Note: Loewner backward] in
eigpool._loewner), with the eigenvalue floor and truncation stated there; second derivatives follow
[Note: spectral second order] in the same module. The scalar functions and their divided differences are in
eigpool._divided. ``powm`` with an array exponent binds ``spectral_power_p`` (the exponent is an input, so the
specification stays hashable, and it has a derivative); ``frechet`` binds ``frechet_p``.

Input S may be real symmetric or complex Hermitian; F is computed from (S + S^H) / 2, so the result and the gradient
are those of one function, and the result is exactly Hermitian. Complex cotangents follow PyTorch's convention
(the gradient of a real loss is dL/dRe S + i dL/dIm S, the adjoint for the real inner product Re tr(A^H B)); since
the Loewner matrix is real, the adjoint has the real formula with U^H for U^T.

SEB (the scaling eigen branch, METHODS.md section 5): F(S) = (1 + rho) U sqrt(m) U^T with
rho = ||Q E^T||_F = sqrt(sum_i m_i exp(-2 m_i)), computed from the eigenvalues directly (finite for dead channels).
Its backward adds <G, F0> drho/dl_i = <G, F0> (1 - 2 m_i) exp(-2 m_i) / (2 rho) to the diagonal of L o (U^T G U).

[Note: trace scaling]
``trace_scale=True``: F(S) = sqrt(t) U g(A) U^T with t = tr(S) and the normalised eigenvalues a = l / t, the
pre-normalisation and post-compensation of Newton-Schulz (eigpool.newton_schulz). With g = sqrt it is sqrtm (sqrt is
homogeneous); with g = ``ns_polynomial(n)`` it is the Newton-Schulz square root itself, as an exact spectral function;
with g = ``shifted_sqrt(c)`` it is (S + c t I)^(1/2) - sqrt(c t) I. Differentiating, with Gh = U^T sym(G) U and
L the Loewner matrix of g at a (diagonal g'(a_i)):

    dL/dS = U (L o Gh + c I) U^T / sqrt(t),   c = sum_i Gh_ii (g(a_i) / 2 - a_i g'(a_i)),

the second term from dt = tr(dS) (<G, F> / (2 t) from the post-compensation, -<W, S> / t^2 from A = S / t). A matrix
with t <= 0 gives F = 0 and gradient 0 (PSD input has t = 0 only at S = 0, where sqrt has no derivative).

[Note: exponent derivative]
For F(S, p) = U diag(g_i) U^H with g_i = m_i^p (m the floored eigenvalues, tau fixed; g = 0 where truncated),
dF/dp = U diag(g_i log m_i) U^H, so <G, dF/dp> = sum_i Re(U^H sym(G) U)_ii g_i log m_i; an exponent broadcast over
the batch receives the sum over the matrices it applies to.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from ._checks import check_matrix, check_truncate, check_values, checked
from ._divided import (
    POWER_INPUT,
    SPECTRAL_FUNCTIONS,
    SpectralFunction,
    exponent_slope_of_array,
    power_of_array,
)
from ._loewner import Spectrum, loewner, second_order_vjp
from ._primitive import Primitive, bind, compute_dtype_of, namespace_of
from ._spec import GRADS, SpectralSpec, resolve_exponent, resolve_spectral, user_spectral_function
from ._xp import arange_like, ct, diag_embed, diagonal, is_complex, max_abs, real_part, sym

__all__ = ["GRADS", "SpectralFunction", "SpectralSpec", "expm", "expm_neg", "frechet", "frechet_p", "invsqrtm", "logm",
           "matrix_function", "powm", "seb", "spectral", "spectral_p", "spectral_power_p", "spectral_spec", "sqrtm",
           "truncate"]

def sqrtm(S: Any, *, grad: str = "exact", floor: float | str | None = "auto", truncate: int = 0,
          compute_dtype: str | None = "float64", triangle: str | None = None, **kernel_options: Any) -> Any:
    """Principal square root S^(1/2) of symmetric (or Hermitian) PSD matrices, by eigendecomposition.

    S: (..., d, d) real symmetric or complex Hermitian positive semi-definite; returns (..., d, d) in S's dtype,
    exactly Hermitian. Backward: the exact Loewner formula with L_ij = 1/(sqrt(l_i) + sqrt(l_j)), finite at ties;
    eigenvalues below ``floor * max|l|`` are clamped ("auto": d * eps of the compute dtype; eigpool._loewner;
    "raise": a ValueError for a matrix singular to working precision instead). ``grad`` selects an eigenvector
    kernel instead ("taylor", "pade", "clip", "power_iteration", "eigh"), with its ``kernel_options``;
    ``truncate=k`` sets the k smallest eigenvalues to zero. ``compute_dtype``: "float64" (default), "float32" or
    None (S's own); complex input computes in the complex dtype of that precision. ``triangle``: None (F of
    (S + S^H) / 2; S must be symmetric to round-off) or "lower" / "upper" (F of that triangle mirrored, unchecked:
    the convention of LAPACK, torch.linalg.eigh and pyRiemann; the gradient goes to that triangle).
    """
    return matrix_function(S, resolve_spectral("sqrtm", "sqrt", grad=grad, floor=floor, truncate=truncate,
                                            compute_dtype=compute_dtype, kernel_options=kernel_options,
                                            triangle=triangle), op="sqrtm")


def invsqrtm(S: Any, *, grad: str = "exact", floor: float | str | None = "auto", truncate: int = 0,
             compute_dtype: str | None = "float64", triangle: str | None = None, **kernel_options: Any) -> Any:
    """Inverse square root S^(-1/2) of symmetric (or Hermitian) PSD matrices (eigenvalues floored as in ``sqrtm``;
    ``floor="raise"`` refuses singular input).

    S: (..., d, d); returns (..., d, d). L_ij = -1/(sqrt(l_i) sqrt(l_j) (sqrt(l_i) + sqrt(l_j))).
    """
    return matrix_function(S, resolve_spectral("invsqrtm", "invsqrt", grad=grad, floor=floor, truncate=truncate,
                                            compute_dtype=compute_dtype, kernel_options=kernel_options,
                                            triangle=triangle), op="invsqrtm")


def powm(S: Any, p: Any, *, grad: str = "exact", floor: float | str | None = "auto", truncate: int = 0,
         compute_dtype: str | None = "float64", triangle: str | None = None, **kernel_options: Any) -> Any:
    """Matrix power S^p of symmetric (or Hermitian) PSD matrices for real p (eigenvalues floored as in ``sqrtm``).

    S: (..., d, d); returns (..., d, d). L_ij = (l_i^p - l_j^p)/(l_i - l_j), evaluated as
    l_j^(p-1) expm1(p t)/expm1(t), t = log(l_i/l_j), for close pairs: no cancellation, exact at ties (p l^(p-1)).
    p: a real number (Python or NumPy scalar), or a real floating array of S's library whose shape broadcasts against
    S's batch shape (one exponent per matrix: shape (...,)); an array exponent is differentiable
    ([Note: exponent derivative]: dS^p/dp = U diag(l^p log l) U^H) and the result has the broadcast batch shape.
    """
    if isinstance(p, numbers.Real) or namespace_of(p) is None:
        return matrix_function(S, resolve_spectral("powm", "power", p=resolve_exponent("powm", p), grad=grad,
                                                floor=floor, truncate=truncate, compute_dtype=compute_dtype,
                                                kernel_options=kernel_options, triangle=triangle), op="powm")
    spec = resolve_spectral("powm", POWER_INPUT, grad=grad, floor=floor, truncate=truncate,
                            compute_dtype=compute_dtype, kernel_options=kernel_options, triangle=triangle)
    return _powm_of_array(S, p, spec)


def logm(S: Any, *, grad: str = "exact", floor: float | str | None = "auto", truncate: int = 0,
         compute_dtype: str | None = "float64", triangle: str | None = None, **kernel_options: Any) -> Any:
    """Principal logarithm of symmetric (or Hermitian) positive definite matrices (eigenvalues floored as in
    ``sqrtm``; ``floor="raise"`` refuses singular input instead of returning log of the floor).

    S: (..., d, d); returns (..., d, d). L_ij = log1p((l_i - l_j)/l_j)/(l_i - l_j) (no cancellation), 1/l_i at ties.
    """
    return matrix_function(S, resolve_spectral("logm", "log", grad=grad, floor=floor, truncate=truncate,
                                            compute_dtype=compute_dtype, kernel_options=kernel_options,
                                            triangle=triangle), op="logm")


def expm(S: Any, *, grad: str = "exact", truncate: int = 0, compute_dtype: str | None = "float64",
         triangle: str | None = None, **kernel_options: Any) -> Any:
    """exp(S) of symmetric (or Hermitian) matrices, U diag(exp(l)) U^H (any real spectrum: no floor).

    S: (..., d, d); returns (..., d, d). L_ij = exp(l_hi) (-expm1(-(l_hi - l_lo)))/(l_hi - l_lo): no cancellation
    at close eigenvalues, exp(l_i) at ties, and no overflow before exp(l_hi) itself.
    """
    return matrix_function(S, resolve_spectral("expm", SPECTRAL_FUNCTIONS["exp"], grad=grad, truncate=truncate,
                                            compute_dtype=compute_dtype, kernel_options=kernel_options,
                                            triangle=triangle), op="expm")


def expm_neg(S: Any, *, grad: str = "exact", truncate: int = 0, compute_dtype: str | None = "float64",
             **kernel_options: Any) -> Any:
    """exp(-S) of symmetric (or Hermitian) matrices: the exponential branch of SEB, U diag(exp(-l)) U^H.

    S: (..., d, d); returns (..., d, d). L_ij = exp(-l_lo) expm1(-(l_hi - l_lo))/(l_hi - l_lo).
    """
    return matrix_function(S, resolve_spectral("expm_neg", SPECTRAL_FUNCTIONS["exp_neg"], grad=grad,
                                            truncate=truncate, compute_dtype=compute_dtype,
                                            kernel_options=kernel_options), op="expm_neg")


def truncate(S: Any, k: int, *, compute_dtype: str | None = "float64") -> Any:
    """S with its k smallest eigenvalues set to zero: U diag(0,..,0, l_k+1, .., l_d) U^H.

    S: (..., d, d) real symmetric or complex Hermitian; returns (..., d, d). At a tie between the k-th and (k+1)-th
    eigenvalue the result is not differentiable; the backward holds the cut fixed there (eigpool._loewner).
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
             compute_dtype: str | None = "float64", triangle: str | None = None, **kernel_options: Any) -> Any:
    """U diag(f(l)) U^H for a user function f with derivative df (both take and return arrays of real eigenvalues).

    S: (..., d, d) real symmetric or complex Hermitian; returns (..., d, d). The Loewner matrix uses
    (f(a) - f(b))/(a - b), and the mean of df(a) and df(b) for pairs closer than the tie tolerance: accurate to about
    eps * |f| / |a - b| near ties (the built-in functions have cancellation-free formulas). ``positive=True``: f is
    defined for l > 0 only; S must then be PSD and the eigenvalue ``floor`` applies. ``triangle``: as in ``sqrtm``.
    """
    fn = user_spectral_function(f, df, positive)
    return matrix_function(S, resolve_spectral("spectral", fn, grad=grad, floor=floor, truncate=truncate,
                                            compute_dtype=compute_dtype, kernel_options=kernel_options,
                                            triangle=triangle), op="spectral")


def spectral_spec(fn: str | SpectralFunction = "sqrt", *, p: float | None = None, grad: str = "exact",
                  floor: float | str | None = "auto", truncate: int = 0, seb: bool = False,
                  compute_dtype: str | None = "float64", triangle: str | None = None, trace_scale: bool = False,
                  **kernel_options: Any) -> SpectralSpec:
    """The frozen, hashable specification of a spectral function, validated once: what ``sqrtm(S, **options)`` and
    the others resolve their options into, for ``matrix_function(S, spec)`` and the layers.

    fn: "sqrt", "invsqrt", "log", "power" (exponent ``p``, a real number) or a ``SpectralFunction``
    (``ns_polynomial(n)``, ``shifted_sqrt(c)``, ...); the other options as in ``sqrtm`` (``seb=True``: the scaling
    eigen branch of ``seb``, fn "sqrt" only). ``trace_scale=True``: F(S) = sqrt(tr S) U fn(L / tr S) U^T, S PSD
    ([Note: trace scaling]): with ``ns_polynomial(5)`` the Newton-Schulz square root of 5 steps as an exact spectral
    function, with ``shifted_sqrt(c)`` the root of S + c tr(S) I less sqrt(c tr S) I. A bad option raises ValueError
    or TypeError naming the option and the allowed values. Example::

        spec = eigpool.spectral_spec("power", p=0.5, grad="taylor", degree=50)
        Q = eigpool.matrix_function(S, spec)
        ns5 = eigpool.matrix_function(S, eigpool.spectral_spec(eigpool.ns_polynomial(5), trace_scale=True))
    """
    return resolve_spectral("spectral_spec", fn, p=p, grad=grad, floor=floor, truncate=truncate, seb=seb,
                            compute_dtype=compute_dtype, kernel_options=kernel_options, triangle=triangle,
                            trace_scale=trace_scale)


def matrix_function(S: Any, spec: SpectralSpec, *, op: str = "matrix_function") -> Any:
    """F(S) for the resolved specification ``spec`` (``spectral_spec``): what ``sqrtm`` and the others compute.

    S: (..., d, d) real symmetric or complex Hermitian (PSD for a function with ``positive=True``); returns
    (..., d, d) in S's dtype. Layers keep a ``SpectralSpec`` and call this, so their options are validated once,
    when the layer is built. Value checks (finite, symmetric, PSD, singular for floor="raise") follow
    eigpool.value_checks.
    """
    xp = check_matrix(S, op, "S", complex_ok=True)
    check_truncate(op, spec.truncate, S.shape[-1])
    psd = spec.fn.positive or spec.trace_scale
    out, _ = checked(op, "S", S, lambda: bind(spectral_p, S, spec=spec), eigenvalues=1 if psd else None,
                     singular=_singular_floor(xp, S, spec), one_triangle=spec.triangle is not None)
    return out


def _singular_floor(xp: Any, S: Any, spec: SpectralSpec) -> float | None:
    """The relative floor below which ``floor="raise"`` refuses S (None for the other floors)."""
    if spec.floor is None or not spec.floor.raises:
        return None
    eps = float(xp.finfo(compute_dtype_of(xp, S.dtype, spec.compute_dtype)).eps)
    return spec.floor.relative(S.shape[-1], eps)


def _powm_of_array(S: Any, p: Any, spec: SpectralSpec) -> Any:
    xp = check_matrix(S, "powm", "S", complex_ok=True)
    if namespace_of(p) is not xp:
        raise TypeError(f"powm: argument 'p' must be a real number or an array of S's library, got "
                        f"{type(p).__name__} for S of type {type(S).__name__}")
    if not xp.isdtype(p.dtype, "real floating"):
        raise TypeError(f"powm: argument 'p' must be a real number or have a real floating dtype, got {p.dtype}")
    broadcast_batch("powm", tuple(S.shape[:-2]), tuple(p.shape))
    check_truncate("powm", spec.truncate, S.shape[-1])
    check_values("powm", "p", p)
    out, _ = checked("powm", "S", S, lambda: bind(spectral_power_p, S, p, spec=spec), eigenvalues=1,
                     singular=_singular_floor(xp, S, spec), one_triangle=spec.triangle is not None)
    return out


def broadcast_batch(op: str, a: tuple, b: tuple) -> tuple:
    """The broadcast of two batch shapes (ValueError naming ``op`` if they do not broadcast)."""
    n = max(len(a), len(b))
    a, b = (1,) * (n - len(a)) + a, (1,) * (n - len(b)) + b
    if any(x != y and 1 not in (x, y) for x, y in zip(a, b, strict=True)):
        raise ValueError(f"{op}: the batch shapes {a} and {b} do not broadcast")
    return tuple(max(x, y) if 0 not in (x, y) else 0 for x, y in zip(a, b, strict=True))


def frechet(fn: Any, S: Any, E: Any, *, p: float | None = None, floor: float | str | None = "auto",
            compute_dtype: str | None = "float64") -> Any:
    """The Frechet (directional) derivative D F(S)[E] of a spectral function F at S in the direction E.

    fn: "sqrt", "invsqrt", "log", "power" (with ``p``), "exp", "exp_neg", one of eigpool's functions (``eigpool.logm``,
    ``sqrtm``, ``invsqrtm``, ``powm`` with ``p``, ``expm``, ``expm_neg``) or a ``SpectralFunction``.
    S: (..., d, d) real symmetric or complex Hermitian (PSD for sqrt, invsqrt, log, power; floored as in ``sqrtm``);
    E: (..., d, d) symmetric or Hermitian (complex only for a complex S), the batch shapes broadcast (one S for a
    batch of directions, as pyRiemann's
    ``ddlogm(E, S)`` and ``ddexpm(E, S)``). Returns (..., d, d) in S's dtype:

        D F(S)[E] = U (L o (U^H E_h U)) U^H,   L_ij = f[l_i, l_j] (f'(l_i) on ties),   E_h = (E + E^H) / 2,

    (Daleckii-Krein; Bhatia, Matrix Analysis, Thm V.3.3), exact at repeated eigenvalues. It is the JVP of F as a
    function: linear and self-adjoint in E; differentiable in E and, for the built-in functions, in S (second
    divided differences, [Note: spectral second order]).
    """
    spec = _frechet_spec(fn, p, floor, compute_dtype)
    xp = check_matrix(S, "frechet", "S", complex_ok=True)
    check_matrix(E, "frechet", "E", complex_ok=True)
    if E.shape[-1] != S.shape[-1] or is_complex(xp, E) and not is_complex(xp, S):
        raise ValueError(f"frechet: S and E must be matrices of one size, E complex only for a complex S, got "
                         f"{tuple(S.shape)} {S.dtype} and {tuple(E.shape)} {E.dtype}")
    broadcast_batch("frechet", tuple(S.shape[:-2]), tuple(E.shape[:-2]))
    check_values("frechet", "E", E, symmetric=True)
    out, _ = checked("frechet", "S", S, lambda: bind(frechet_p, S, E, spec=spec),
                     eigenvalues=1 if spec.fn.positive else None)
    return out


#: The scalar function of each public function, for ``frechet(eigpool.logm, S, E)``.
_FUNCTION_OF = {"sqrtm": "sqrt", "invsqrtm": "invsqrt", "logm": "log", "powm": "power", "expm": "exp",
                "expm_neg": "exp_neg"}


def _frechet_spec(fn: Any, p: Any, floor: Any, compute_dtype: Any) -> SpectralSpec:
    if callable(fn) and getattr(fn, "__module__", None) == __name__ and fn.__name__ in _FUNCTION_OF:
        fn = _FUNCTION_OF[fn.__name__]
    if isinstance(fn, str) and fn in ("exp", "exp_neg"):
        fn = SPECTRAL_FUNCTIONS[fn]
    return resolve_spectral("frechet", fn, p=p, floor=floor, compute_dtype=compute_dtype)


# ---------------------------------------------------------------------------------------------------------------------
# The primitives.

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


def hermitian_input(xp: Any, S: Any, spec: SpectralSpec) -> Any:
    """The Hermitian matrix F is computed from: (S + S^H) / 2, or for ``spec.triangle`` that triangle of S mirrored,
    with the real part of the diagonal (what LAPACK's eigh reads). A linear map of S."""
    if spec.triangle is None:
        return sym(xp, S)
    T = xp.tril(S, k=-1) if spec.triangle == "lower" else xp.triu(S, k=1)
    return T + ct(xp, T) + diag_embed(xp, real_part(xp, diagonal(xp, S)))


def triangle_adjoint(xp: Any, spec: SpectralSpec, C: Any) -> Any:
    """The adjoint of ``hermitian_input`` on a Hermitian cotangent C (for Re tr(A^H B)): C itself for the Hermitian
    part; 2 C below (above) the diagonal and Re C_ii on it for a triangle, 0 in the triangle that is not read."""
    if spec.triangle is None:
        return C
    T = xp.tril(C, k=-1) if spec.triangle == "lower" else xp.triu(C, k=1)
    return 2 * T + diag_embed(xp, real_part(xp, diagonal(xp, C)))


def _scaled_spectrum(xp: Any, spec: SpectralSpec, l: Any, U: Any) -> Spectrum:
    """``reshape_spectrum`` of the eigenvalues ``l``, or for ``spec.trace_scale`` of a = max(l / t, 0) with the
    trace t kept (0 where t <= 0, where F is 0). Trace scaling takes PSD input (the value check refuses other input):
    the clamp only removes the round-off negatives of zero eigenvalues, as a perturbation of S of that size; it is
    not a floor, so the derivative there is g's own (a function like ``shifted_sqrt`` is smooth at 0)."""
    if not spec.trace_scale:
        return reshape_spectrum(xp, spec, l, U)
    t = xp.sum(l, axis=-1, keepdims=True)
    positive = t > 0
    a = xp.where(positive, l / xp.where(positive, t, xp.ones_like(t)), xp.zeros_like(l))
    s = reshape_spectrum(xp, spec, xp.maximum(a, xp.zeros_like(a)), U)
    return s._replace(trace=xp.where(positive, t, xp.zeros_like(t)))


def _decompose(xp: Any, S: Any, spec: SpectralSpec) -> Spectrum:
    """The reshaped spectrum of the Hermitian matrix of S (``hermitian_input``)."""
    l, U = xp.linalg.eigh(hermitian_input(xp, S, spec))
    return _scaled_spectrum(xp, spec, l, U)


def _compose(xp: Any, U: Any, inner: Any) -> Any:
    """U inner U^H, made exactly Hermitian (its round-off asymmetry removed, so that sums and differences of results
    stay exactly Hermitian too: [Note: symmetry tolerance] in eigpool._checks)."""
    return sym(xp, U @ inner @ ct(xp, U))


def _spectral_forward(xp: Any, S: Any, *, spec: SpectralSpec) -> tuple[tuple, Spectrum]:
    l, U = xp.linalg.eigh(hermitian_input(xp, S, spec))
    s = _scaled_spectrum(xp, spec, l, U)
    out = sym(xp, (s.U * s.g[..., None, :]) @ ct(xp, s.U))
    if spec.seb:
        out = (1 + s.rho)[..., None, None] * out
    if s.trace is not None:
        out = xp.sqrt(s.trace)[..., None] * out
    return (out, l), s


def seb_gain_slope(xp: Any, s: Spectrum) -> Any:
    """d rho / d l_i = (1 - 2 m_i) exp(-2 m_i) / (2 rho) above the floor, 0 below it and where rho = 0 (S = 0,
    where rho has no derivative)."""
    safe = xp.where(s.rho > 0, s.rho, xp.ones_like(s.rho))
    slope = (1 - 2 * s.m) * xp.exp(-2 * s.m) / (2 * safe[..., None])
    return xp.where((s.rho > 0)[..., None] & s.above, slope, xp.zeros_like(slope))


def _rotated(xp: Any, s: Spectrum, G: Any) -> Any:
    """U^H sym(G) U: the cotangent in the eigenbasis."""
    return ct(xp, s.U) @ sym(xp, G) @ s.U


def _loewner_vjp(xp: Any, s: Spectrum, Gh: Any, spec: SpectralSpec) -> Any:
    # [Note: Loewner backward]: dS = U (L o (U^H sym(G) U)) U^H.
    L = loewner(xp, spec, s)
    inner = L * Gh
    if s.trace is not None:
        # [Note: trace scaling]: (L o Gh + c I) / sqrt(t), c = sum_i Re(Gh_ii) (g_i / 2 - a_i L_ii); 0 where t = 0.
        c = xp.sum(real_part(xp, diagonal(xp, Gh)) * (s.g / 2 - s.l * diagonal(xp, L)), axis=-1)
        positive = s.trace > 0
        scale = xp.where(positive, 1 / xp.sqrt(xp.where(positive, s.trace, xp.ones_like(s.trace))), 0.0)
        inner = scale[..., None] * (inner + diag_embed(xp, c[..., None] * xp.ones_like(s.g)))
    if spec.seb:
        # out = (1 + rho) F0: the F0 term scales by (1 + rho); the rho term adds <G, F0> drho/dl on the diagonal,
        # with <G, F0> = sum_i Re(Gh_ii) g_i.
        g_dot_f = xp.sum(real_part(xp, diagonal(xp, Gh)) * s.g, axis=-1)
        inner = (1 + s.rho)[..., None, None] * inner + diag_embed(xp, g_dot_f[..., None] * seb_gain_slope(xp, s))
    return s.U @ inner @ ct(xp, s.U)


def _spectral_vjp(xp: Any, s: Spectrum, G: Any, *, spec: SpectralSpec) -> tuple:
    return (triangle_adjoint(xp, spec, _loewner_vjp(xp, s, _rotated(xp, s, G), spec)),)


def _spectral_vjp_vjp(xp: Any, s: Spectrum, cotangents: tuple, W: Any, *, spec: SpectralSpec) -> tuple:
    # The VJP is T^*(V(T S, G)) for the input map T (``hermitian_input``): its cotangent W acts as T(W).
    W = hermitian_input(xp, W, spec)
    if spec.seb:
        dS, dG = _seb_vjp_vjp(xp, s, cotangents[0], W, spec)
    else:
        dS, dG = second_order_vjp(xp, spec, s, cotangents[0], W)
    return triangle_adjoint(xp, spec, dS), dG


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
    U, Ut = s.U, ct(xp, s.U)
    Gh, Wh = Ut @ sym(xp, G) @ U, Ut @ sym(xp, W) @ U
    V0G = loewner(xp, base, s) * Gh
    Wc = xp.conj(Wh) if is_complex(xp, Wh) else Wh
    slope = seb_gain_slope(xp, s)
    alive = (s.rho > 0)[..., None, None]
    safe = xp.where(s.rho > 0, s.rho, 1.0)[..., None, None]
    # Inner products Re tr(A^H B) (real for real input).
    g_f = xp.sum(real_part(xp, diagonal(xp, Gh)) * s.g, axis=-1)[..., None, None]      # <G, F0>
    w_v0 = xp.sum(real_part(xp, Wc * V0G), axis=(-2, -1))[..., None, None]             # <W, V0(S, G)>
    w_r = xp.sum(real_part(xp, diagonal(xp, Wh)) * slope, axis=-1)[..., None, None]    # <W, grad rho>
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
    return _spectral_vjp_vjp if spec.kernel is None and spec.fn.dd2 is not None and not spec.trace_scale else None


spectral_p = Primitive("spectral", _spectral_forward, _spectral_vjp, aux_outputs=1,
                       second_order=_spectral_second_order)


def sum_to(xp: Any, x: Any, shape: tuple) -> Any:
    """``x`` summed over the axes that broadcasting added to an array of ``shape`` (the adjoint of broadcasting)."""
    lead = x.ndim - len(shape)
    if lead:
        x = xp.sum(x, axis=tuple(range(lead)))
    ones = tuple(i for i, n in enumerate(shape) if n == 1 and x.shape[i] != 1)
    return xp.sum(x, axis=ones, keepdims=True) if ones else x


def _expanded(xp: Any, S: Any, batch: tuple) -> Any:
    """S broadcast to the batch shape ``batch`` (S itself when it has it: no alias op)."""
    return S if tuple(S.shape[:-2]) == batch else xp.broadcast_to(S, (*batch, *S.shape[-2:]))


def _bound_power(spec: SpectralSpec, xp: Any, p: Any, batch_ndim: int) -> SpectralSpec:
    return replace(spec, fn=power_of_array(xp, p, batch_ndim))


def _power_forward(xp: Any, S: Any, p: Any, *, spec: SpectralSpec) -> tuple[tuple, tuple]:
    batch = broadcast_batch("powm", tuple(S.shape[:-2]), tuple(p.shape))
    (out, l), s = _spectral_forward(xp, _expanded(xp, S, batch), spec=_bound_power(spec, xp, p, len(batch)))
    return (out, l), (s, p, tuple(S.shape))


def _power_vjp(xp: Any, res: tuple, G: Any, *, spec: SpectralSpec) -> tuple:
    s, p, shape = res
    Gh = _rotated(xp, s, G)
    dS = _loewner_vjp(xp, s, Gh, _bound_power(spec, xp, p, s.l.ndim - 1))
    # [Note: exponent derivative]: dp = sum_i Re(Gh_ii) g_i log m_i.
    dp = xp.sum(real_part(xp, diagonal(xp, Gh)) * s.g * xp.log(s.m), axis=-1)
    return sum_to(xp, triangle_adjoint(xp, spec, dS), shape), sum_to(xp, dp, tuple(p.shape))


def _power_vjp_vjp(xp: Any, res: tuple, cotangents: tuple, W: Any, w: Any, *, spec: SpectralSpec) -> tuple:
    # The VJP of (S, p, G) -> (dS, dp) for the cotangents (W, w), [Note: exponent derivative] and [Note: spectral
    # second order]: with h = g log m (the derivative of g in p) and L_h its Loewner matrix (= d L_p / dp),
    #   dG = U (L_p o Wh) U^H + U diag(w h) U^H,     dS = U (A + A^H) U^H + w U (L_h o Gh) U^H,
    #   dp = Re sum_ij conj(Wh_ij) L_h,ij Gh_ij + w sum_i Re(Gh_ii) g_i (log m_i)^2.
    s, p, shape = res
    G, nb, W = cotangents[0], s.l.ndim - 1, hermitian_input(xp, W, spec)
    dS, dG = second_order_vjp(xp, _bound_power(spec, xp, p, nb), s, G, W)
    log_m = xp.log(s.m)
    h = s.g * log_m
    L_h = loewner(xp, replace(spec, fn=exponent_slope_of_array(xp, p, nb)), s._replace(g=h))
    Gh, Wh = _rotated(xp, s, G), _rotated(xp, s, W)
    w1 = xp.reshape(w, (*w.shape, 1))
    dG = dG + sym(xp, (s.U * (w1 * h)[..., None, :]) @ ct(xp, s.U))
    dS = dS + s.U @ (w1[..., None] * L_h * Gh) @ ct(xp, s.U)
    Wt = xp.conj(Wh) if is_complex(xp, Wh) else Wh
    dp = xp.sum(real_part(xp, Wt * L_h * Gh), axis=(-2, -1)) \
        + w * xp.sum(real_part(xp, diagonal(xp, Gh)) * s.g * log_m * log_m, axis=-1)
    return sum_to(xp, triangle_adjoint(xp, spec, dS), shape), sum_to(xp, dp, tuple(p.shape)), dG


def _power_second_order(spec: SpectralSpec) -> Callable[..., tuple] | None:
    """The second-order rule where the exact backward covers ``spec`` (no eigenvector kernel, no truncation)."""
    return _power_vjp_vjp if spec.kernel is None and not spec.truncate else None


spectral_power_p = Primitive("spectral_power", _power_forward, _power_vjp, aux_outputs=1, differentiable=(0, 1),
                             second_order=_power_second_order)


def _frechet_forward(xp: Any, S: Any, E: Any, *, spec: SpectralSpec) -> tuple[tuple, tuple]:
    s = _decompose(xp, S, spec)
    real_direction = not is_complex(xp, E)
    E = xp.astype(E, S.dtype) if real_direction and is_complex(xp, S) else E  # a real direction of a complex S
    out = _compose(xp, s.U, loewner(xp, spec, s) * _rotated(xp, s, E))
    return (out, s.l), (s, E, tuple(S.shape), real_direction)


def _frechet_vjp(xp: Any, res: tuple, W: Any, *, spec: SpectralSpec) -> tuple:
    # D F(S)[E] is V(S, E) of [Note: spectral second order]: its VJP is (dS, dE) of that note.
    s, E, shape, real_direction = res
    if spec.fn.dd2 is None:
        raise NotImplementedError(f"frechet: the derivative of D F(S)[E] needs the second divided differences of f, "
                                  f"which {spec.fn.name!r} does not provide (the built-in functions do)")
    dS, dE = second_order_vjp(xp, spec, s, E, W)
    # A real direction of a complex S: its cotangent is the real part (the adjoint of embedding R in C).
    dE = real_part(xp, dE) if real_direction else dE
    return sum_to(xp, dS, shape), sum_to(xp, dE, tuple(E.shape))


frechet_p = Primitive("frechet", _frechet_forward, _frechet_vjp, aux_outputs=1, differentiable=(0, 1))
