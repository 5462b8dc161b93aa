"""Newton-Schulz square root and inverse square root (iSQRT-COV, Li et al. CVPR 2018; METHODS.md section 4).

Forward, with pre-normalisation by the trace t = tr(S):
    A = S / t;  Y_0 = A, Z_0 = I;  T_k = (3I - Z_{k-1} Y_{k-1}) / 2,  Y_k = Y_{k-1} T_k,  Z_k = T_k Z_{k-1}
and post-compensation sqrt: sqrt(t) Y_n ~ S^(1/2);  invsqrt: Z_n / sqrt(t) ~ S^(-1/2).
The iteration converges for PSD S (the eigenvalues of A lie in [0, 1]), but after n steps it is a different function
from the exact root: 20-50 % off on real covariances with n = 5. It is its own method, not an approximation to rely on.

[Note: Newton-Schulz backward]
Reverse mode over the recursion as computed (hand-derived; no autodiff through the loop). For step k, with adjoints
gY_k, gZ_k of its outputs:
    Y_k = Y_{k-1} T_k:         gY_{k-1} += gY_k T_k^T,     gT_k  = Y_{k-1}^T gY_k
    Z_k = T_k Z_{k-1}:         gZ_{k-1} += T_k^T gZ_k,     gT_k += gZ_k Z_{k-1}^T
    T_k = (3I - Z_{k-1} Y_{k-1}) / 2, with gP = -gT_k / 2:  gZ_{k-1} += gP Y_{k-1}^T,  gY_{k-1} += Z_{k-1}^T gP
then gA = gY_0 (Z_0 = I is constant), and the trace terms: A = S / t gives gS = gA / t - <gA, S> / t^2 I; the
post-compensation adds <gQ, Y_n> / (2 sqrt t) I (sqrt) or -<gQ, Z_n> / (2 t^(3/2)) I (invsqrt), both +-<gQ, Q> / (2t)
for the output Q, and <gA, S> / t^2 = <gA, A> / t: written so, no power of t overflows at any representable scale.
The last step computes only the output that is needed (Y_n for sqrt, Z_n for invsqrt), as iSQRT-COV does.
"""

from __future__ import annotations

from typing import Any

from ._checks import check_matrix, checked
from ._primitive import Primitive, bind
from ._spec import NewtonSchulzSpec, newton_schulz_spec
from ._xp import eye_like

__all__ = ["newton_schulz", "newton_schulz_p", "ns_invsqrtm", "ns_sqrtm"]


def ns_sqrtm(S: Any, *, iterations: int = 5, compute_dtype: str | None = "float64") -> Any:
    """Approximate S^(1/2) by ``iterations`` coupled Newton-Schulz steps with trace pre-normalisation.

    S: (..., d, d) symmetric PSD with positive trace; returns (..., d, d) in S's dtype. Cost: about 3 matrix
    products per step forward and 6 backward; no eigendecomposition.
    """
    spec = newton_schulz_spec("ns_sqrtm", iterations=iterations, compute_dtype=compute_dtype)
    return newton_schulz(S, spec, op="ns_sqrtm")


def ns_invsqrtm(S: Any, *, iterations: int = 5, compute_dtype: str | None = "float64") -> Any:
    """Approximate S^(-1/2) by ``iterations`` coupled Newton-Schulz steps (Z_n / sqrt(tr S)).

    S: (..., d, d) symmetric positive definite; returns (..., d, d) in S's dtype.
    """
    spec = newton_schulz_spec("ns_invsqrtm", iterations=iterations, inverse=True, compute_dtype=compute_dtype)
    return newton_schulz(S, spec, op="ns_invsqrtm")


def newton_schulz(S: Any, spec: NewtonSchulzSpec, *, op: str = "newton_schulz") -> Any:
    """The Newton-Schulz square root (or inverse square root, ``spec.inverse``) for a resolved specification."""
    check_matrix(S, op, "S")
    # Value check: a positive trace and positive semi-definiteness (an indefinite S with a positive trace would make
    # the iteration diverge along its negative eigenvalues: diag(3, -1) gave diag(1.73, -2.85e9)).
    return checked(op, "S", S, lambda: bind(newton_schulz_p, S, spec=spec), psd=True)[0]


def _ns_forward(xp: Any, S: Any, *, spec: NewtonSchulzSpec) -> tuple[tuple, tuple]:
    # The trace is at least the smallest normal number, so S = 0 (a sample whose channels are all dead) gives 0, its
    # square root, instead of 0 / 0 (ns_sqrtm itself refuses a zero trace; layers reach S = 0 from constant features).
    t = xp.maximum(xp.linalg.trace(S), float(xp.finfo(S.dtype).smallest_normal))[..., None, None]
    eye = eye_like(xp, S)
    Y, Z = S / t, eye
    Ys, Zs, Ts = [Y], [Z], []
    for k in range(spec.iterations):
        # Z_0 = I: the first step needs no product with it (two matrix products saved, as iSQRT-COV does).
        T = (3 * eye - (Y if k == 0 else Z @ Y)) / 2
        last = k == spec.iterations - 1
        Y = Y @ T if not (last and spec.inverse) else None
        Z = (T if k == 0 else T @ Z) if not (last and not spec.inverse) else None
        Ts.append(T)
        Ys.append(Y)
        Zs.append(Z)
    out = Zs[-1] / xp.sqrt(t) if spec.inverse else xp.sqrt(t) * Ys[-1]
    return (out,), (S, t, Ys, Zs, Ts)


def _ns_vjp(xp: Any, res: tuple, gQ: Any, *, spec: NewtonSchulzSpec) -> tuple:
    # [Note: Newton-Schulz backward].
    S, t, Ys, Zs, Ts = res
    eye = eye_like(xp, S)
    # The trace terms are written with the normalised A = S / t and the output Q (sqrt(t) Y_n or Z_n / sqrt(t)):
    # <gQ, Y_n> / (2 sqrt t) = <gQ, Q> / (2t) and -<gQ, Z_n> / (2 t^(3/2)) = -<gQ, Q> / (2t), so no power of t beyond
    # the first is formed (t^2 overflows for scales above 1e154 and underflows below 1e-154).
    out = xp.sqrt(t) * Ys[-1] if not spec.inverse else Zs[-1] / xp.sqrt(t)
    if not spec.inverse:
        gY, gZ = xp.sqrt(t) * gQ, None
        g_t = xp.sum(gQ * out, axis=(-2, -1))[..., None, None] / (2 * t)
    else:
        gY, gZ = None, gQ / xp.sqrt(t)
        g_t = -xp.sum(gQ * out, axis=(-2, -1))[..., None, None] / (2 * t)
    for k in range(spec.iterations, 0, -1):
        Yp, Zp, T = Ys[k - 1], Zs[k - 1], Ts[k - 1]
        gT, gYp, gZp = 0, 0, 0
        if gY is not None:
            gYp, gT = gY @ T.mT, Yp.mT @ gY
        if k == 1:
            # Z_0 = I is a constant: no adjoint for it, and its products are the identity.
            gT = gT + gZ if gZ is not None else gT
            gY = gYp - gT / 2
            break
        if gZ is not None:
            gZp, gT = T.mT @ gZ, gT + gZ @ Zp.mT
        gP = gT * -0.5  # = -gT / 2 exactly, in one pass
        gY, gZ = gYp + Zp.mT @ gP, gZp + gP @ Yp.mT
    gA = gY
    g_t = g_t - xp.sum(gA * Ys[0], axis=(-2, -1))[..., None, None] / t  # <gA, S> / t^2 with Ys[0] = S / t
    return (gA / t + g_t * eye,)


newton_schulz_p = Primitive("newton_schulz", _ns_forward, _ns_vjp)
