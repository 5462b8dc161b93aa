"""The Loewner matrix of a reshaped spectrum: the backward shared by the spectral functions and the Gram route.

[Note: Loewner backward]
For F(S) = U diag(g(l)) U^T and upstream G, the exact adjoint is (METHODS.md section 3)

    dL/dS = U ( L o (U^T sym(G) U) ) U^T,   L_ij = g[l_i, l_j] = (g(l_i) - g(l_j)) / (l_i - l_j),  L_ii = g'(l_i),

the first divided differences of g (the Loewner matrix). It never divides by l_i - l_j of close eigenvalues in floating
point: each built-in function has a cancellation-free formula for f[a, b] that is exact at ties a = b (where it equals
f'(a); eigpool._divided), so the gradient is finite and continuous at repeated eigenvalues.

g is f composed with two reshapings of the spectrum, both explicit:
- the eigenvalue floor m = max(l, tau), tau = floor * max|l| per matrix (floor="auto": d * eps of the compute dtype),
  at least the smallest normal number: f'(0) is infinite for sqrt, log and negative powers. Subgradient: 0 below the
  floor (tau is held fixed). Then g[l_i, l_j] = f[m_i, m_j] when both are above the floor, 0 when both are below (g is
  constant there), and f[m_i, m_j] (m_i - m_j) / (l_i - l_j) across it, where l_i != l_j since one is below tau and the
  other is not.
- truncation of the ``truncate`` smallest eigenvalues: g = 0 on them (TopN of METHODS.md, section 2). Between a kept
  l_i and a dropped l_j, g[l_i, l_j] = g(l_i) / (l_i - l_j); at a tie across the cut the function jumps and has no
  derivative: we use 0 there (the cut is held fixed). The eigenvalues below the floor are tied at tau, with an
  arbitrary eigenbasis: that eigenspace is dropped only as a whole, when ``truncate`` >= its dimension (else it
  stays at g(tau)), so a singular covariance gives one result whatever basis LAPACK returns (eigpool.gram).

With an eigenvector kernel (grad="taylor", "pade", "clip", "power_iteration", or "eigh" for the plain exact kernel)
the backward goes through the eigendecomposition's kernel instead ([Note: eigh backward] in eigpool._kernels):
substituting gU = 2 sym(G) U diag(g) gives the same formula with L_ij = K_ij g(l_i) + K_ji g(l_j) off the diagonal
(K_ij (g(l_i) - g(l_j)) for an antisymmetric kernel). These are the SVD-Taylor, SVD-Pade, SVD-Trunc and SVD-PI layers
of the ICCV 2021 paper, one argument away. Pairs with both eigenvalues below the floor contribute 0 in every route:
g is constant there, so F is invariant to rotations inside that eigenspace.

[Note: spectral second order]
The VJP is linear in G: V(S, G) = DF(S)[sym G]. Its own VJP, for a cotangent W of V, is (Daleckii-Krein, second
order; Bhatia, Matrix Analysis, Thm V.3.3), with Gh = U^T sym(G) U and Wh = U^T sym(W) U,

    dG = V(S, W)   (DF(S) is self-adjoint),      dS = U (A + A^T) U^T,   A_ab = sum_c g[l_a, l_b, l_c] Gh_ac Wh_cb,

(for complex Hermitian S: U^H for U^T and A + A^H, the adjoint for Re tr(A^H B)) with
the second divided differences of g, exact at ties (f[a, a, a] = f''(a) / 2; eigpool._divided). Across the floor and
the truncation cut, g agrees near each eigenvalue with a smooth function (f above tau and kept, the constant f(tau)
below it, 0 where dropped), and the second derivative of F depends only on g near the eigenvalues, so for a triple
that leaves the top piece g[x, y, z] on the sorted triple is the recurrence (g[y, z] - g[x, y]) / (z - x) of the
first differences, the Loewner matrix's own entries (z > x there: the pieces are separated; a cut inside a tie has no
derivative). It builds
(..., d, d, d) arrays (memory d^3 per matrix: meant for double backward, gradient penalties and checks).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ._kernels import tie_tolerance
from ._xp import ct, device_of, diag_embed, diagonal, is_complex, sym

__all__ = ["Spectrum", "loewner", "second_order_vjp"]


class Spectrum(NamedTuple):
    """A reshaped spectrum, the residuals of a spectral forward pass: raw ascending eigenvalues ``l``, eigenvectors
    ``U``, floored ``m``, ``g`` = f(m) where kept (0 where truncated), the masks ``above`` (l >= tau; None without a
    floor) and ``keep`` (None without truncation), the floor ``tau`` (..., 1) (None without a floor), the SEB gain
    ``rho`` (None without SEB) and ``trace`` t = tr(S) (..., 1) of a trace-scaled function, whose ``l`` are then the
    normalised eigenvalues l / t (None otherwise)."""

    l: Any
    U: Any
    m: Any
    g: Any
    above: Any
    keep: Any
    tau: Any
    rho: Any
    trace: Any = None


def _floored_dd(xp: Any, dd: Any, li: Any, lj: Any, mi: Any, mj: Any, ai: Any, aj: Any) -> Any:
    """g[l_i, l_j] from f's divided difference ``dd`` = f[m_i, m_j] and the masks a = (l >= tau): dd times the
    ratio (m_i - m_j) / (l_i - l_j), which is 1 above the floor, 0 below it and in (0, 1) across it (where
    l_i != l_j); at l_i == l_j it is 1 above the floor and 0 below. Pairs below the floor are set to 0 explicitly:
    dd = f'(tau) may overflow there (tau = the smallest normal number for a zero spectrum, f = x^(-1/2))."""
    gap = li - lj
    tied = gap == 0
    ratio = xp.where(tied, xp.astype(ai, dd.dtype), (mi - mj) / xp.where(tied, 1.0, gap))
    return xp.where(ai | aj, dd * ratio, 0.0)


def loewner(xp: Any, spec: Any, s: Spectrum) -> Any:
    """The matrix L of [Note: Loewner backward] (..., d, d) for the spectrum ``s`` of a forward pass with ``spec``."""
    fn = spec.fn
    li, lj = s.l[..., :, None], s.l[..., None, :]
    mi, mj = s.m[..., :, None], s.m[..., None, :]
    if spec.kernel is None:
        L = fn.dd(xp, mi, mj)
        if s.above is not None:
            L = _floored_dd(xp, L, li, lj, mi, mj, s.above[..., :, None], s.above[..., None, :])
        if s.keep is None:
            return L
        # Truncation: the jump g(l_i) / (l_i - l_j) between a kept and a dropped eigenvalue (0 at a tie).
        gap = li - lj
        tied = xp.abs(gap) <= tie_tolerance(xp, s.l)
        across = xp.where(tied, 0.0, (s.g[..., :, None] - s.g[..., None, :]) / xp.where(tied, 1.0, gap))
        ki, kj = s.keep[..., :, None], s.keep[..., None, :]
        return xp.where(ki & kj, L, xp.where(ki | kj, across, 0.0))
    # sym(K^T o (2 Gh diag(g))) = (K_ij g_i + K_ji g_j) o Gh.
    K = spec.kernel.matrix(xp, s.m)
    L = K * s.g[..., :, None] + K.mT * s.g[..., None, :]
    slope = fn.df(xp, s.m)
    if s.above is not None:
        # Below the floor g is constant, so F does not change under rotations inside that eigenspace: those pairs
        # contribute 0 for every kernel (power iteration's non-antisymmetric kernel would give g(tau) / tau there).
        L = xp.where(s.above[..., :, None] | s.above[..., None, :], L, 0.0)
        slope = xp.where(s.above, slope, 0.0)
    if s.keep is not None:
        slope = xp.where(s.keep, slope, 0.0)
    # The diagonal is g'(l_i) in every case (the kernels only approximate the off-diagonal terms).
    return L - diag_embed(xp, diagonal(xp, L)) + diag_embed(xp, slope)


def _second_differences(xp: Any, spec: Any, s: Spectrum, L: Any) -> Any:
    """g[l_a, l_b, l_c] (..., d, d, d) ([Note: spectral second order]), given the Loewner matrix L of the spectrum."""
    m = s.m
    f3 = spec.fn.dd2(xp, m[..., :, None, None], m[..., None, :, None], m[..., None, None, :])
    smooth = s.above if s.keep is None else s.keep if s.above is None else s.above & s.keep
    if smooth is None:
        return f3
    # Triples that leave the top piece (f above the floor, kept): the recurrence on the sorted triple, with the
    # first differences g[y, z] of the Loewner matrix itself. The eigenvalues ascend with their index, so sorting the
    # indices sorts the triple; the pieces are ordered (dropped, floored, f), so a triple across pieces has z > x.
    d = m.shape[-1]
    i = xp.arange(d, device=device_of(m))
    a, b, c = i[:, None, None], i[None, :, None], i[None, None, :]
    low, high = xp.minimum(xp.minimum(a, b), c), xp.maximum(xp.maximum(a, b), c)
    mid = a + b + c - low - high
    flat = xp.reshape(L, (*L.shape[:-2], d * d))

    def pairs(u: Any, v: Any) -> Any:
        return xp.reshape(xp.take(flat, xp.reshape(u * d + v, (-1,)), axis=-1), (*L.shape[:-2], d, d, d))

    def values(u: Any) -> Any:
        return xp.reshape(xp.take(s.l, xp.reshape(u, (-1,)), axis=-1), (*L.shape[:-2], d, d, d))

    spread = values(high) - values(low)
    across = (pairs(mid, high) - pairs(low, mid)) / xp.where(spread > 0, spread, 1.0)
    every = smooth[..., :, None, None] & smooth[..., None, :, None] & smooth[..., None, None, :]
    return xp.where(every, f3, across)


def second_order_vjp(xp: Any, spec: Any, s: Spectrum, G: Any, W: Any) -> tuple[Any, Any]:
    """(dS, dG): the VJP, for the cotangent W, of (S, G) -> V(S, G) = U (L o (U^H sym(G) U)) U^H
    ([Note: spectral second order]); exact backward (no eigenvector kernel), no SEB. Batch shapes of S (in ``s``),
    G and W broadcast (``frechet`` of one S in a batch of directions)."""
    U, Uh = s.U, ct(xp, s.U)
    Gh, Wh = Uh @ sym(xp, G) @ U, Uh @ sym(xp, W) @ U
    L = loewner(xp, spec, s)
    dG = U @ (L * Wh) @ Uh
    f3 = _second_differences(xp, spec, s, L)
    # A_ab = sum_c g[a, b, c] Gh_ac Wh_cb: Wh_cb at (b, c) is Wh^T (= Wh for real symmetric W, conj(Wh) for complex).
    Wt = xp.conj(Wh) if is_complex(xp, Wh) else Wh
    A = xp.sum(f3 * Gh[..., :, None, :] * Wt[..., None, :, :], axis=-1)
    return U @ (A + ct(xp, A)) @ Uh, dG
