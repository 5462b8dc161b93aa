"""Rank-aware covariance pooling: F(cov(X)) through the N x N Gram matrix when channels outnumber positions.

[Note: Gram route]
X (..., d, N): d channels over N positions, Xc = X - mean over positions, S = Xc Xc^T / N (d x d, rank r <= N - 1).
The Gram matrix H = Xc^T Xc / N (N x N) has the same nonzero spectrum: H = V diag(mu) V^T gives the eigenpairs of S

    S u_k = mu_k u_k,   u_k = y_k / sqrt(N mu_k),   y_k = Xc v_k  (Y = Xc V, d x N),

for every mu_k > 0, and the other d - r eigenvalues of S are zero. With the eigenvalue floor of eigpool.spectral
(tau = floor * max mu, at least the smallest normal number) every eigenvalue of S below tau becomes tau, so the floored
spectrum of S is {max(mu_k, tau)} plus d - N copies of tau. Let a = {k : mu_k >= tau} (above the floor), b = the rest
of the Gram eigenpairs, and g0 = g(tau), the value shared by every floored eigenvalue (0 if truncation drops them).
Since sum_{k in a} u_k u_k^T + (projector on the floored eigenspace) = I,

    F(S) = g0 I + sum_{k in a} (g(m_k) - g0) u_k u_k^T = g0 I + Y diag(e / N) Y^T,   e_k = c_k / mu_k on a, 0 on b,

c_k = g(m_k) - g0 (as g[m_k, tau] (m_k - tau), cancellation-free). No d x d eigendecomposition and no u_k for the
floored eigenvalues, whose eigenvectors are an arbitrary basis of a tied eigenspace: cost O(d^2 N + N^3).

Backward. The dense path's adjoint is dL/dS = U (L o (U^T Gs U)) U^T (Gs = sym(G), L the Loewner matrix of
[Note: Loewner backward] in eigpool._loewner) and dL/dX = 2 (dL/dS) Xc / N = 2 Z V^T / N with Z = (dL/dS) Y, because
Xc = Y V^T. Only columns y_k of the range matter (U^T y_k = sqrt(N mu_k) e_k). Take W = Y^T Gs Y (N x N).
- k in a, i in a: u_i L_ik u_i^T Gs y_k = y_i L_ik W_ik / (N mu_i).
- k in a, i floored (b or the d - N exact zeros, l_i = mu_i or 0): L_ik = c_k / (l_k - l_i) for every such i (the
  divided difference across the floor, the same common g0). Split 1/(l_k - l_i) = 1/l_k + l_i / (l_k (l_k - l_i)):
  the first part sums to (c_k / l_k) P Gs y_k over the whole floored eigenspace, P = I - sum_{i in a} y_i y_i^T/(N mu_i)
  (the projector term g0 (I - U_a U_a^T) acts through U_a only); the second part vanishes on the exact zeros and is
  sum_{i in b} y_i W_ik L_ik / (N l_k) on b, using l_i u_i u_i^T = y_i y_i^T / N (bounded as mu_i -> 0).
- k in b: only i in a contributes (both below the floor: L = 0), y_i L_ik W_ik / (N mu_i).
Together: Z = Gs Y diag(e) + Y (M o W) with
    M_ik = (L_ik - e_k) / (N mu_i)  for i in a,    M_ik = L_ik / (N mu_k)  for i in b, k in a,    0 otherwise.
L over the N Gram eigenpairs is built by eigpool._loewner's Loewner routine, so the divided differences, the floor
subgradient (0 below the floor) and the truncation rule are those of the dense path, not a copy.
SEB: out = (1 + rho) F0 with rho^2 = sum_{k in a} m_k exp(-2 m_k) + (d - |a|) tau exp(-2 tau); the rho term adds
sum_{k in a} t_k u_k u_k^T to dL/dS, t_k = <Gs, F0> drho/dl_k, i.e. t_k y_k to column k of Z, with
<Gs, F0> = g0 tr(Gs) + sum_k e_k W_kk / N.
The GCP vector (triu=True) is fused: the forward computes only the upper triangle, in row blocks, and the backward
takes sym(G) from the vector's cotangent without a d x d scatter (the comment above ``_row_blocks``).

Truncation ("the k smallest eigenvalues" when many are tied at the floor): eigenvalues are counted with multiplicity in
the d eigenvalues of S, ascending, floored ones first; the floored eigenvalues form one tied eigenspace, dropped only as
a whole: if k < (number of floored eigenvalues, d - |a|) they all stay at g(tau) and nothing else is dropped; otherwise
they are dropped (g0 = 0) with the k - (d - |a|) smallest eigenvalues above the floor. eigpool.spectral's truncation
follows the same rule, so both paths compute the same function (any other choice depends on the arbitrary basis
LAPACK returns for the tied eigenspace).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ._checks import check_truncate, checked
from ._divided import SpectralFunction
from ._loewner import Spectrum, loewner
from ._primitive import Primitive, bind, compute_dtype_of, namespace_of
from ._spec import ComputeSpec, GramSpec, NewtonSchulzSpec, SpectralSpec, resolve_spectral
from ._xp import arange_like, cast, diagonal, eye_like, max_abs, span
from .covariance import check_features, covariance_p
from .newton_schulz import newton_schulz_p
from .spectral import seb_gain_slope, spectral_p
from .triu import diagonal_mask, diagonal_positions, pack_rows, triu_vec_p, unpack_rows
from .triu import prepare as prepare_triangle

__all__ = ["PATHS", "gram_spectral_p", "pooled", "pooled_spec", "prepare", "resolve_path"]

#: Values of ``path=``: "auto" (the Gram route when N < d), "dense" (d x d eigendecomposition), "gram".
PATHS = ("auto", "dense", "gram")

#: Rows per block of the fused vector route (triu=True): products of 256 rows stay efficient, and with b blocks only
#: (b + 1) / 2b of the d x d entries are computed and gathered (56 % at d = 2048).
BLOCK_ROWS = 256


def pooled(X: Any, fn: str | SpectralFunction = "sqrt", *, p: float | None = None, floor: float | str | None = "auto",
           truncate: int = 0, seb: bool = False, grad: str = "exact", path: str = "auto", triu: bool = False,
           compute_dtype: str | None = "float64", **kernel_options: Any) -> Any:
    """Covariance pooling followed by a spectral function: F(S), S = Xc Xc^T / N, for features X.

    X: (..., d, N) real floating, d channels over N >= 1 positions; returns (..., d, d) in X's dtype, equal (to
    round-off) to ``eigpool.sqrtm(eigpool.covariance(X))`` (or the function chosen) with the same floor, truncation
    and gradients.

    fn: "sqrt", "invsqrt", "log", "power" (with exponent ``p``), or a ``SpectralFunction`` with ``positive=True``.
    floor: eigenvalue floor relative to the largest eigenvalue ("auto": d * eps of the compute dtype, as ``sqrtm``;
      a float; None: the smallest normal number only). Eigenvalues below it, including the d - N + 1 zeros of a
      covariance with fewer positions than channels, are clamped to it; their subgradient is 0.
    truncate: drop the ``truncate`` smallest eigenvalues (g = 0 on them), counted among the d eigenvalues of S; the
      eigenvalues at the floor are tied and are dropped only all together (module docstring).
    seb: the scaling eigen branch (fn "sqrt" only): (1 + rho) S^(1/2), rho = sqrt(sum_i m_i exp(-2 m_i)) over all d
      floored eigenvalues m_i.
    grad: "exact" (Loewner). The approximate kernels ("taylor", "pade", ...) need the eigenvectors of S and run on the
      dense path only.
    path: "auto" (the Gram route [Note: Gram route] when N < d and grad="exact", else dense), "dense" (covariance,
      then a d x d eigendecomposition) or "gram" (any shape; O(d^2 N + N^3) instead of O(d^3)).
    triu: return ``eigpool.triu_vec`` of the result, (..., d(d+1)/2), the GCP vector. On the Gram route this is fused:
      the backward builds the symmetric cotangent from the vector directly and needs one d x d x N product, not two.
    compute_dtype: dtype of the computation (default float64; None: X's own, half precision promoted to float32).
    """
    spec = pooled_spec("pooled", fn, p=p, floor=floor, truncate=truncate, seb=seb, grad=grad,
                       compute_dtype=compute_dtype, kernel_options=kernel_options)
    return pooled_from_spec(X, spec, path=path, triu=triu)


def pooled_spec(op: str, fn: str | SpectralFunction = "sqrt", **options: Any) -> SpectralSpec:
    """The ``SpectralSpec`` of ``pooled``'s options: a function defined on positive eigenvalues (the floor applies)."""
    spec = resolve_spectral(op, fn, **options)
    if not spec.fn.positive:
        raise ValueError(f"{op}: fn must be a SpectralFunction with positive=True (the eigenvalue floor applies), "
                         f"got {spec.fn.name!r} with positive=False")
    return spec


def pooled_from_spec(X: Any, spec: SpectralSpec | NewtonSchulzSpec, *, path: str = "auto", triu: bool = False,
                     op: str = "pooled") -> Any:
    """``pooled`` for a resolved specification: a spectral function's (``SpectralSpec``, either path) or the
    Newton-Schulz iteration's (``NewtonSchulzSpec``, dense path). The features are value-checked once (finite); the
    matrices built from them are symmetric and PSD by construction and are not checked again. Layers keep the
    specification and call this."""
    check_features(X, op)
    if isinstance(spec, SpectralSpec):
        check_truncate(op, spec.truncate, X.shape[-2])
        if path == "gram" and (spec.trace_scale or not spec.fn.positive):
            raise ValueError(f"{op}: path='gram' takes a function with positive=True and no trace scaling, got "
                             f"fn={spec.fn.name!r}, trace_scale={spec.trace_scale}: use path='dense' (or 'auto')")
        dense_only = spec.trace_scale or not spec.fn.positive
        if not dense_only and resolve_path(op, path, X.shape[-2], X.shape[-1], spec.grad) == "gram":
            gram = GramSpec(spec, bool(triu), X.dtype)
            return checked(op, "X", X, lambda: bind(gram_spectral_p, X, spec=gram), symmetric=False,
                           squares=True)[0]
    elif path == "gram":
        raise ValueError(f"{op}: path='gram' is an exact eigen route; the Newton-Schulz iteration runs on S (dense)")
    return checked(op, "X", X, lambda: (_dense(X, spec, triu),), symmetric=False, squares=True)[0]


def _dense(X: Any, spec: SpectralSpec | NewtonSchulzSpec, triu: bool) -> Any:
    """covariance -> F (-> triu_vec) as primitives, all in the compute dtype; the result is cast to X's dtype once
    (a cast of S between the steps would round it to X's dtype, which changes the small eigenvalues)."""
    xp = namespace_of(X)
    own = ComputeSpec(None)
    S = bind(covariance_p, cast(xp, X, compute_dtype_of(xp, X.dtype, spec.compute_dtype)), spec=own)[0]
    F = bind(spectral_p if isinstance(spec, SpectralSpec) else newton_schulz_p, S, spec=spec)[0]
    out = bind(triu_vec_p, F, spec=own)[0] if triu else F
    return cast(xp, out, X.dtype)


def resolve_path(op: str, path: str, d: int, n: int, grad: str = "exact") -> str:
    """"dense" or "gram" for ``path`` and features of d channels over n positions.

    "auto" takes the Gram route when n < d (rank-deficient covariance: an n x n eigendecomposition instead of d x d)
    and the gradient is exact; "gram" with an approximate ``grad`` (a resolved name, ``SpectralSpec.grad``) raises
    ValueError.
    """
    if path not in PATHS:
        raise ValueError(f"{op}: path must be one of {PATHS}, got {path!r}")
    if path == "gram" and grad != "exact":
        raise ValueError(f"{op}: path='gram' computes the exact gradient only; grad={grad!r} needs the eigenvectors of "
                         "S: use path='dense' (or 'auto')")
    if path == "auto":
        return "gram" if n < d and grad == "exact" else "dense"
    return path


# ---------------------------------------------------------------------------------------------------------------------
# The primitive.

class _GramResiduals(NamedTuple):
    """Residuals: the Gram spectrum (l = mu, U = V, floored m, g, masks, SEB gain), Y = Xc V, e and g0."""

    spectrum: Spectrum
    Y: Any
    e: Any
    g0: Any


def _gram_forward(xp: Any, X: Any, *, spec: GramSpec) -> tuple[tuple, _GramResiduals]:
    fn, d, n = spec.spectral.fn, X.shape[-2], X.shape[-1]
    Xc = X - xp.mean(X, axis=-1, keepdims=True)
    mu, V = xp.linalg.eigh(Xc.mT @ Xc / n)
    Y = Xc @ V
    # The floor is that of S (d x d, compute dtype): its spectrum's scale is the Gram matrix's.
    rel = spec.spectral.floor.relative(d, float(xp.finfo(mu.dtype).eps))
    tau = xp.maximum(rel * max_abs(xp, mu), float(xp.finfo(mu.dtype).smallest_normal))
    above = mu >= tau
    m = xp.maximum(mu, tau)
    n_floored = d - xp.sum(xp.astype(above, mu.dtype), axis=-1, keepdims=True)
    # Truncation rule (module docstring): the floored eigenspace is dropped only as a whole. Above the floor, Gram
    # eigenvalue k is eigenvalue k + d - N of S in ascending order (the floored ones come first).
    truncate = spec.spectral.truncate
    floor_kept = n_floored > truncate
    keep = xp.where(above, arange_like(xp, mu, n) + (d - n) >= truncate, floor_kept)
    zero = xp.zeros_like(m)
    g = xp.where(keep, fn.f(xp, m), zero)
    g0 = xp.where(floor_kept, fn.f(xp, tau), xp.zeros_like(tau))
    # c_k = g(m_k) - g0 without cancellation: the table's divided difference g[m_k, tau] (shaped as matrices, which
    # user functions expect) times m_k - tau; when the floored eigenspace is dropped, g0 = 0 and c_k = g(m_k).
    across = fn.dd(xp, m[..., :, None], tau[..., None])[..., 0] * (m - tau)
    c = xp.where(above, xp.where(floor_kept, across, g), zero)
    e = c / xp.where(above, mu, xp.ones_like(mu))
    rho, scale = None, xp.ones_like(tau)
    if spec.spectral.seb:
        rho = xp.sqrt(xp.sum(xp.where(above, m * xp.exp(-2 * m), zero), axis=-1)
                      + (n_floored * tau * xp.exp(-2 * tau))[..., 0])
        scale = (1 + rho)[..., None]
    # The gain goes into the N weights and g0, not over the d x d result: d x d passes cost as much as the product.
    w, diag = scale * e / n, scale * g0
    Yw = Y * w[..., None, :]
    if spec.triu:
        out = _triu_of_sum(xp, Yw, Y, diag, spec.out_dtype)
    else:
        out = cast(xp, Yw @ Y.mT + diag[..., None] * eye_like(xp, Y, d), spec.out_dtype)
    # The mask is kept even without truncation: when N > d the Gram matrix's N - d extra zero eigenvalues are not
    # eigenvalues of S (floor_kept is False for them), and g = 0 there.
    spectrum = Spectrum(mu, V, m, g, above, keep, tau, rho)
    return (out,), _GramResiduals(spectrum, Y, e, g0)


# The fused vector route. Row block [a, b) of a symmetric d x d matrix, restricted to the columns >= a, is an r x m
# array (r = b - a, m = d - a) whose upper triangle is the contiguous segment [row_offset(a), row_offset(b)) of the
# triu_vec vector; the columns < a of those rows mirror earlier blocks. Only these (b + 1) / 2b of the entries are
# computed (forward) or read (backward), with eigpool.triu's row packing.

def _row_blocks(d: int) -> list[tuple[int, int]]:
    return [(a, min(a + BLOCK_ROWS, d)) for a in range(0, d, BLOCK_ROWS)]


def prepare(d: int) -> None:
    """Build now the triangle's index maps that GCP on d channels uses (the whole matrix, the Gram route's row blocks,
    the diagonal): a layer calls this when it is built, so that the first call under ``torch.compile`` reads cached
    constants instead of filling the cache while traced (which makes Dynamo compile a second time)."""
    prepare_triangle(d, [(0, d), *_row_blocks(d)])


def _triu_of_sum(xp: Any, A: Any, B: Any, c: Any, dtype: Any) -> Any:
    """triu_vec(A B^T + c I) in ``dtype`` for A, B (..., d, N) with A B^T symmetric, c (..., 1), block by block.

    Each block is cast to ``dtype`` once and gathered into its segment; c is added on the diagonal positions of the
    vector at the end (a whole-vector cast would cost a fresh copy)."""
    d = A.shape[-2]
    segments = [pack_rows(xp, cast(xp, span(A, a, b, -2) @ span(B, a, None, -2).mT, dtype), a)
                for a, b in _row_blocks(d)]
    v = segments[0] if len(segments) == 1 else xp.concat(segments, axis=-1)
    return v + cast(xp, c, dtype) * diagonal_mask(xp, v, d)


def _symmetric_times(xp: Any, v: Any, c: Any, Y: Any) -> Any:
    """(Ws + diag(c)) Y for the symmetric Ws with v_ij at (i, j) and (j, i) (v: (..., d(d+1)/2) in triu_vec order,
    any real dtype), c (..., d) and Y (..., d, N) of the compute dtype; in Y's dtype.

    Block k (rows [a, b), Q_k = Ws[a:b, a:]) gives Q_k Y[a:] to its own rows and, by symmetry, Q_k[:, b - a:]^T Y[a:b]
    to the rows below it: 2b - 1 products, the same work as one d x d x N product. diag(c) Y is one pass over Y."""
    d = Y.shape[-2]
    rows, below = [], None
    for a, b in _row_blocks(d):
        Q = unpack_rows(xp, v, d, a, b, Y.dtype)
        row = Q @ span(Y, a, None, -2)
        rows.append(row if below is None else row + below[..., : b - a, :])
        if b < d:
            # Contributions to rows b.. from this block's columns; rows of the earlier blocks are done.
            new = Q[..., :, b - a:].mT @ Y[..., a:b, :]
            below = new if below is None else below[..., b - a:, :] + new
    return (rows[0] if len(rows) == 1 else xp.concat(rows, axis=-2)) + c[..., :, None] * Y


def _gram_vjp(xp: Any, res: _GramResiduals, G: Any, *, spec: GramSpec) -> tuple:
    # [Note: Gram route]: dL/dX = 2 Z V^T / N, Z = Gs Y diag(e) + Y (M o W), W = Y^T Gs Y. With T = 2 Gs Y and
    # W2 = Y^T T = 2 W: dL/dX = T A + Y B, A = diag(e) V^T / N and B = (M o W2) V^T / N. The scalars, SEB and the
    # centring go into the N x N factors A and B: the d x N arrays pass through two products and one sum only.
    s, Y, e = res.spectrum, res.Y, res.e
    d, n = Y.shape[-2], Y.shape[-1]
    if spec.triu:
        # G is the cotangent of the vector: 2 Gs = Ws + diag(G_ii), Ws the symmetric matrix holding G_ij at (i, j) and
        # (j, i), built from the vector block by block in Y's dtype (cast_cotangents=False: no whole-vector cast).
        g_diag = cast(xp, xp.take(G, diagonal_positions(xp, G, d), axis=-1), Y.dtype)
        T = _symmetric_times(xp, G, g_diag, Y)
    else:
        # G Y + G^T Y: a transposed operand costs nothing in a product, a d x d transpose-add costs more.
        G = cast(xp, G, Y.dtype)
        g_diag = diagonal(xp, G)
        T = G @ Y + G.mT @ Y
    W2 = Y.mT @ T
    L = loewner(xp, spec.spectral, s)
    mu_safe = xp.where(s.above, s.l, xp.ones_like(s.l))
    a_i, a_k = s.above[..., :, None], s.above[..., None, :]
    M = xp.where(a_i, (L - e[..., None, :]) / (n * mu_safe[..., :, None]),
                 xp.where(a_k, L / (n * mu_safe[..., None, :]), xp.zeros_like(L)))
    Vt = s.U.mT / n
    A, B = e[..., :, None] * Vt, (M * W2) @ Vt
    if spec.spectral.seb:
        # out = (1 + rho) F0: the F0 term scales by (1 + rho); the rho term adds t_k y_k to column k of Z (module
        # docstring), t_k = <Gs, F0> drho/dl_k, <Gs, F0> = g0 tr(Gs) + sum_k e_k W_kk / N.
        g_dot_f = res.g0[..., 0] * xp.sum(g_diag, axis=-1) + xp.sum(e * diagonal(xp, W2), axis=-1) / (2 * n)
        gain = (1 + s.rho)[..., None, None]
        A, B = gain * A, gain * B + (2 * g_dot_f[..., None] * seb_gain_slope(xp, s))[..., :, None] * Vt
    # The exact gradient is centred over positions (F depends on X - mean only): right-multiplying by I - 11^T/N,
    # i.e. centring the rows of A and B, removes the round-off in the mean.
    A, B = A - xp.mean(A, axis=-1, keepdims=True), B - xp.mean(B, axis=-1, keepdims=True)
    return (T @ A + Y @ B,)


gram_spectral_p = Primitive("gram_spectral", _gram_forward, _gram_vjp, cast_cotangents=False)
