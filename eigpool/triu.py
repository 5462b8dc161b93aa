"""Upper-triangular vectorisation: the d(d+1)/2 entries on and above the diagonal, row by row.

The layout has one home, here: row i of the triangle starts at ``row_offset(d, i)``. Rows move between a vector and a
block of rows (rows a..b - 1 of the matrix, columns a.. ; the whole matrix is the block a = 0, b = d) by one gather
each way, through index maps that depend on (d, a, b) only: built once with NumPy on the host and cached, they enter a
traced computation as constants. No array is written into (JAX arrays are immutable, a traced function must not write
into its inputs), and a block costs one pass however many rows it has (slicing row by row costs a fixed overhead per
row: 2048 rows per matrix at d = 2048).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from ._checks import check_array, check_matrix, checked
from ._primitive import Primitive, bind
from ._spec import ComputeSpec
from ._xp import cast, device_of

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


class _Maps(NamedTuple):
    """Index maps of the block of rows a..b - 1, columns a..d - 1 (r x m, r = b - a, m = d - a): ``upper``, the flat
    positions of its entries on and above the block's diagonal in vector order; ``mirror``, for each entry its position
    in the block's segment of the vector (an entry below the diagonal reads its mirror image, which lies in the same
    rows); ``below``, the mask of the entries below the diagonal; ``diagonal``, the positions of the diagonal entries in
    the segment."""

    upper: np.ndarray
    mirror: np.ndarray
    below: np.ndarray
    diagonal: np.ndarray


_MAPS: dict[tuple[int, int, int], _Maps] = {}


def _maps(d: int, a: int, b: int) -> _Maps:
    """The maps of block (d, a, b), cached (a plain dictionary: a tracing compiler reads the cached arrays as
    constants). They are built with fixed-shape operations only (no nonzero), so that building them inside a trace
    gives no data-dependent shapes either."""
    key = (d, a, b)
    if key not in _MAPS:
        r, m = b - a, d - a
        k, c = np.arange(r)[:, None], np.arange(m)[None, :]
        above = c >= k
        mirror = np.where(above, row_offset(m, k) + c - k, row_offset(m, c) + k - c).reshape(-1)
        p = np.arange(row_offset(m, r))
        row = _row_of(m, p)
        dtype = np.int32 if r * m < 2**31 else np.int64
        _MAPS[key] = _Maps((row * m + row + p - row_offset(m, row)).astype(dtype), mirror.astype(dtype), ~above,
                           row_offset(m, np.arange(r)).astype(dtype))
    return _MAPS[key]


def _row_of(m: int, p: np.ndarray) -> np.ndarray:
    """The row k of each position p of a triangle with rows of lengths m, m - 1, ...: the largest k with
    row_offset(m, k) <= p, from the quadratic formula, corrected by one where floating point rounds across."""
    k = np.floor(((2 * m + 1) - np.sqrt((2.0 * m + 1) ** 2 - 8.0 * p)) / 2).astype(np.int64)
    k = np.where(row_offset(m, k) > p, k - 1, k)
    return np.where(row_offset(m, k + 1) <= p, k + 1, k)


def _constant(xp: Any, like: Any, a: np.ndarray) -> Any:
    return xp.asarray(a, device=device_of(like))


def pack_rows(xp: Any, rows: Any, a: int) -> Any:
    """The segment of the vector holding rows a.. of the triangle, from ``rows`` (..., r, d - a): those rows of the
    d x d matrix restricted to the columns >= a (entries below the diagonal are not read)."""
    r, m = rows.shape[-2], rows.shape[-1]
    flat = xp.reshape(rows, (*rows.shape[:-2], r * m))
    return xp.take(flat, _constant(xp, rows, _maps(a + m, a, a + r).upper), axis=-1)


def diagonal_positions(xp: Any, like: Any, d: int) -> Any:
    """The positions of the d diagonal entries in the vector of a d x d matrix, as an index array on like's device."""
    return _constant(xp, like, _maps(d, 0, d).diagonal)


_MASKS: dict[int, np.ndarray] = {}


def _diagonal_mask(d: int) -> np.ndarray:
    if d not in _MASKS:
        p = np.arange(row_offset(d, d))
        _MASKS[d] = (row_offset(d, _row_of(d, p)) == p).astype(np.float64)
    return _MASKS[d]


def diagonal_mask(xp: Any, like: Any, d: int) -> Any:
    """(d(d+1)/2,): 1 at the positions of the diagonal entries in the vector of a d x d matrix, 0 elsewhere, in like's
    dtype and on its device."""
    return xp.asarray(_diagonal_mask(d), dtype=like.dtype, device=device_of(like))


def unpack_rows(xp: Any, v: Any, d: int, a: int, b: int, dtype: Any, symmetric: bool = True) -> Any:
    """Rows a, ..., b - 1 of the d x d matrix whose triangle ``v`` (..., d(d+1)/2) holds, restricted to the columns
    >= a: (..., b - a, d - a) in ``dtype`` (``v``'s or wider). Below the diagonal: the mirror image if ``symmetric``,
    else 0."""
    r, m = b - a, d - a
    maps = _maps(d, a, b)
    start, stop = row_offset(d, a), row_offset(d, b)
    segment = v if (a, b) == (0, d) else v[..., start:stop]  # a full slice is an alias op (legacy vmap)
    Q = xp.reshape(xp.take(cast(xp, segment, dtype), _constant(xp, v, maps.mirror), axis=-1), (*v.shape[:-1], r, m))
    return Q if symmetric else xp.where(_constant(xp, v, maps.below), 0.0, Q)


def _triu_vec_forward(xp: Any, S: Any, *, spec: ComputeSpec) -> tuple[tuple, int]:
    return (pack_rows(xp, S, 0),), S.shape[-1]


def _triu_vec_vjp(xp: Any, d: int, g: Any, *, spec: ComputeSpec) -> tuple:
    # The upper triangle receives g, the rest 0.
    return (unpack_rows(xp, g, d, 0, d, g.dtype, symmetric=False),)


def _triu_unvec_forward(xp: Any, v: Any, *, spec: ComputeSpec) -> tuple[tuple, None]:
    d = _size(v.shape[-1])
    return (unpack_rows(xp, v, d, 0, d, v.dtype),), None


def _triu_unvec_vjp(xp: Any, res: None, G: Any, *, spec: ComputeSpec) -> tuple:
    # v_ij (i < j) appears at (i, j) and (j, i), v_ii once: the triangle of G + G^T, less G_ii on the diagonal.
    d = G.shape[-1]
    return (pack_rows(xp, G + G.mT, 0) - pack_rows(xp, G, 0) * diagonal_mask(xp, G, d),)


triu_vec_p = Primitive("triu_vec", _triu_vec_forward, _triu_vec_vjp)
triu_unvec_p = Primitive("triu_unvec", _triu_unvec_forward, _triu_unvec_vjp)
