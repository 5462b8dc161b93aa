"""Upper-triangular vectorisation: the d(d+1)/2 entries on and above the diagonal, row by row.

The layout has one home, here: row i of the triangle starts at ``row_offset(d, i)``. Rows are moved between a vector
and a block of rows without writing into any array (JAX arrays are immutable, and a traced function must not write
into its inputs): a block's triangle is the concatenation of its row slices, and a block is rebuilt from the vector by
concatenating each row's slice after the zeros left of the diagonal, in one pass each way.
"""

from __future__ import annotations

import math
from typing import Any

from ._checks import check_array, check_matrix, checked
from ._primitive import Primitive, bind
from ._spec import ComputeSpec
from ._xp import cast, device_of, span

__all__ = ["pack_rows", "row_offset", "triu_unvec", "triu_unvec_p", "triu_vec", "triu_vec_p", "unpack_rows"]

_SPEC = ComputeSpec(None)


def triu_vec(S: Any) -> Any:
    """(..., d, d) -> (..., d(d+1)/2): the upper triangle of S including the diagonal, row by row (32,896 for d=256).

    Works for any square S (it reads only the upper triangle). The inverse for symmetric S is ``triu_unvec``.
    """
    check_matrix(S, "triu_vec", "S")
    return checked("triu_vec", "S", S, lambda: bind(triu_vec_p, S, spec=_SPEC), symmetric=False)[0]


def triu_unvec(v: Any) -> Any:
    """(..., d(d+1)/2) -> (..., d, d): the symmetric matrix whose upper triangle ``triu_vec`` read."""
    check_array(v, "triu_unvec", "v", 1)
    n = v.shape[-1]
    if _size(n) * (_size(n) + 1) // 2 != n:
        raise ValueError(f"triu_unvec: argument 'v' must have a last axis of length d(d+1)/2, got {n}")
    return checked("triu_unvec", "v", v, lambda: bind(triu_unvec_p, v, spec=_SPEC), symmetric=False)[0]


def _size(n: int) -> int:
    """d with d(d+1)/2 = n (exact integer square root)."""
    return (math.isqrt(8 * n + 1) - 1) // 2


def row_offset(d: int, i: Any) -> Any:
    """Position of entry (i, i) in the vector of a d x d matrix (i an int or an integer array): row i of the
    triangle starts there."""
    return i * d - i * (i - 1) // 2


def pack_rows(xp: Any, rows: Any, diagonal: Any = None) -> list[Any]:
    """The pieces of the triangle's segment for a block ``rows`` (..., r, m) whose row k starts its triangle at column
    k (rows a.., columns a.. of a matrix): row k's slice from column k, in order. With ``diagonal`` (..., r), row k's
    first entry is ``diagonal[..., k]`` instead. Concatenate the pieces (of one block or several) along the last axis
    to get the vector."""
    if diagonal is None:
        return [rows[..., k, k:] for k in range(rows.shape[-2])]
    return [piece for k in range(rows.shape[-2]) for piece in (diagonal[..., k:k + 1], rows[..., k, k + 1:])]


def concat_pieces(xp: Any, pieces: list[Any], like: Any, dtype: Any) -> Any:
    """The concatenation of ``pieces`` along the last axis; an empty (..., 0) array of ``like``'s batch shape if
    there are none (a 0 x 0 matrix)."""
    if not pieces:
        return xp.zeros((*like.shape[:-2], 0), dtype=dtype, device=device_of(like))
    return xp.concat(pieces, axis=-1)


def unpack_rows(xp: Any, v: Any, d: int, a: int, b: int, dtype: Any, symmetric: bool = True,
                add_diagonal: Any = None) -> Any:
    """Rows a, ..., b - 1 of the d x d matrix whose triangle ``v`` (..., d(d+1)/2) holds, restricted to the columns
    >= a: (..., b - a, d - a) in ``dtype`` (``v``'s or wider). Below the diagonal: the mirror image if ``symmetric``,
    else 0. ``add_diagonal`` (..., b - a), optional, is added to the diagonal entries."""
    r, m = b - a, d - a
    batch = v.shape[:-1]
    if r == 0:
        return xp.zeros((*batch, 0, m), dtype=dtype, device=device_of(v))
    start = row_offset(d, a)
    segment = cast(xp, span(v, start, row_offset(d, b), -1), dtype)
    # Row k of the block is k zeros, then its segment slice; the slice's first entry is the diagonal.
    offsets = [row_offset(d, a + k) - start for k in range(r + 1)]
    zeros = xp.zeros((*batch, r), dtype=dtype, device=device_of(v))
    if add_diagonal is None:
        pieces = [p for k in range(r) for p in (zeros[..., :k], span(segment, offsets[k], offsets[k + 1], -1))]
    else:
        k_ = xp.arange(r, device=device_of(v))
        diag = xp.take(segment, k_ * (2 * m + 1 - k_) // 2, axis=-1) + add_diagonal
        pieces = [p for k in range(r) for p in (zeros[..., :k], diag[..., k:k + 1],
                                                segment[..., offsets[k] + 1:offsets[k + 1]])]
    Q = xp.reshape(xp.concat(pieces, axis=-1), (*batch, r, m))
    if not symmetric:
        return Q
    j = xp.arange(r, device=device_of(v))
    square = span(Q, 0, r, -1)
    mirrored = xp.where(j[:, None] <= j[None, :], square, square.mT)
    return mirrored if r == m else xp.concat([mirrored, Q[..., :, r:]], axis=-1)


def _triu_vec_forward(xp: Any, S: Any, *, spec: ComputeSpec) -> tuple[tuple, int]:
    return (concat_pieces(xp, pack_rows(xp, S), S, S.dtype),), S.shape[-1]


def _triu_vec_vjp(xp: Any, d: int, g: Any, *, spec: ComputeSpec) -> tuple:
    # The upper triangle receives g, the rest 0.
    return (unpack_rows(xp, g, d, 0, d, g.dtype, symmetric=False),)


def _triu_unvec_forward(xp: Any, v: Any, *, spec: ComputeSpec) -> tuple[tuple, None]:
    d = _size(v.shape[-1])
    return (unpack_rows(xp, v, d, 0, d, v.dtype),), None


def _triu_unvec_vjp(xp: Any, res: None, G: Any, *, spec: ComputeSpec) -> tuple:
    # v_ij (i < j) appears at (i, j) and (j, i); v_ii once: the triangle of G + G^T with the diagonal of G.
    upper = G + G.mT
    return (concat_pieces(xp, pack_rows(xp, upper, xp.linalg.diagonal(G)), G, G.dtype),)


triu_vec_p = Primitive("triu_vec", _triu_vec_forward, _triu_vec_vjp)
triu_unvec_p = Primitive("triu_unvec", _triu_unvec_forward, _triu_unvec_vjp)
