"""Upper-triangular vectorisation: the d(d+1)/2 entries on and above the diagonal, row by row."""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

from array_api_compat import device

from ._checks import check_array
from ._primitive import Primitive, bind

__all__ = ["triu_unvec", "triu_vec", "triu_vec_p", "triu_unvec_p"]


def triu_vec(S: Any) -> Any:
    """(..., d, d) -> (..., d(d+1)/2): the upper triangle of S including the diagonal, row by row (32,896 for d=256).

    Works for any square S (it reads only the upper triangle). The inverse for symmetric S is ``triu_unvec``.
    """
    check_array(S, "triu_vec", "S", 2)
    if S.shape[-1] != S.shape[-2]:
        raise ValueError(f"triu_vec: argument 'S' must be square in its last two axes, got shape {tuple(S.shape)}")
    return bind(triu_vec_p, S, compute_dtype=None)[0]


def triu_unvec(v: Any) -> Any:
    """(..., d(d+1)/2) -> (..., d, d): the symmetric matrix whose upper triangle ``triu_vec`` read."""
    check_array(v, "triu_unvec", "v", 1)
    n = v.shape[-1]
    d = int(((8 * n + 1) ** 0.5 - 1) / 2)
    if d * (d + 1) // 2 != n:
        raise ValueError(f"triu_unvec: argument 'v' must have a last axis of length d(d+1)/2, got {n}")
    return bind(triu_unvec_p, v, compute_dtype=None, d=d)[0]


def row_offset(d: int, i: Any) -> Any:
    """Position of entry (i, i) in the vector of a d x d matrix (i an int or an integer array): row i of the
    triangle starts there."""
    return i * d - i * (i - 1) // 2


# Moving rows of the triangle between a vector and an r x m block (rows a.., columns a.. of the matrix). The rows
# start at offsets quadratic in the row, so no strided view covers several: either one slice copy per row, or one
# gather through an index map of the block. A row copy has a fixed cost (microseconds in PyTorch) and moves its
# entries at memory speed; a gather costs a few nanoseconds per entry and an index map of r x m entries. Rows win
# once a row carries more than about ROW_COPY_MIN entries (batch size x row length; measured in PyTorch on a CPU
# core: the gather is 2.4x faster at batch 8, d = 64, the rows 1.5x faster at batch 32, d = 256).
ROW_COPY_MIN = 2048
#: Largest block (r x m entries) moved by a gather: its cached index maps stay below 25 MB.
GATHER_MAX = 2**20


def _by_rows(batch: tuple[int, ...], r: int, m: int) -> bool:
    return math.prod(batch) * m >= ROW_COPY_MIN or r * m > GATHER_MAX


@lru_cache(maxsize=32)
def _block_maps(xp: Any, dev: Any, r: int, m: int) -> tuple[Any, Any, Any]:
    """Index maps of an r x m block (r <= m) whose row k starts its triangle at column k, and of its segment of the
    vector (rows of lengths m, m - 1, ..., m - r + 1): ``upper``, the flat indices of the block's entries on and
    above its diagonal, in vector order; ``mirror``, for every entry of the block, its position in the segment (an
    entry below the diagonal reads its mirror image); ``padded``, the same with position len(segment) (a zero
    appended) below the diagonal."""
    i = xp.arange(r, device=dev)[:, None]
    c = xp.arange(m, device=dev)[None, :]
    above = c >= i
    here = row_offset(m, i) + c - i
    mirror = xp.where(above, here, row_offset(m, c) + i - c)
    padded = xp.where(above, here, xp.full_like(here, row_offset(m, r)))
    return xp.nonzero(xp.reshape(above, (-1,)))[0], xp.reshape(mirror, (-1,)), xp.reshape(padded, (-1,))


def pack_rows(xp: Any, out: Any, rows: Any, a: int) -> Any:
    """Write into ``out`` (..., d(d+1)/2) the triangle's rows a, ..., a + r - 1 from ``rows`` (..., r, d - a), those
    rows of the d x d matrix restricted to the columns >= a (same dtype as ``out``); returns ``out``."""
    r, m = rows.shape[-2], rows.shape[-1]
    d = a + m
    if not _by_rows(rows.shape[:-2], r, m):
        upper, _, _ = _block_maps(xp, device(rows), r, m)
        flat = xp.reshape(rows, (*rows.shape[:-2], r * m))
        out[..., row_offset(d, a):row_offset(d, a + r)] = xp.take(flat, upper, axis=-1)
        return out
    for k in range(r):
        out[..., row_offset(d, a + k):row_offset(d, a + k + 1)] = rows[..., k, k:]
    return out


def unpack_rows(xp: Any, v: Any, d: int, a: int, b: int, dtype: Any, symmetric: bool = True) -> Any:
    """Rows a, ..., b - 1 of the d x d matrix whose triangle ``v`` (..., d(d+1)/2) holds, restricted to the columns
    >= a: (..., b - a, d - a) in ``dtype`` (``v``'s or wider). Below the diagonal: the mirror image if ``symmetric``,
    else 0."""
    r, m = b - a, d - a
    if not _by_rows(v.shape[:-1], r, m):
        _, mirror, padded = _block_maps(xp, device(v), r, m)
        segment = v[..., row_offset(d, a):row_offset(d, b)]
        if not symmetric:
            segment = xp.concat([segment, xp.zeros_like(segment[..., :1])], axis=-1)
        Q = xp.take(segment, mirror if symmetric else padded, axis=-1)
        return xp.astype(xp.reshape(Q, (*v.shape[:-1], r, m)), dtype, copy=False)
    Q = (xp.empty if symmetric else xp.zeros)((*v.shape[:-1], r, m), dtype=dtype, device=device(v))
    for k in range(r):
        Q[..., k, k:] = v[..., row_offset(d, a + k):row_offset(d, a + k + 1)]
    if symmetric:
        j = xp.arange(r, device=device(v))
        D = Q[..., :, :r]  # below its diagonal: never written, never read (where takes the transpose there)
        Q[..., :, :r] = xp.where(j[:, None] <= j[None, :], D, xp.matrix_transpose(D))
    return Q


def _pack(xp: Any, S: Any) -> Any:
    d = S.shape[-1]
    out = xp.empty((*S.shape[:-2], d * (d + 1) // 2), dtype=S.dtype, device=device(S))
    return pack_rows(xp, out, S, 0)


def _triu_vec_forward(xp: Any, S: Any) -> tuple[tuple, int]:
    return (_pack(xp, S),), S.shape[-1]


def _triu_vec_vjp(xp: Any, d: int, g: Any) -> tuple:
    # The upper triangle receives g, the rest 0.
    return (unpack_rows(xp, g, d, 0, d, g.dtype, symmetric=False),)


def _triu_unvec_forward(xp: Any, v: Any, *, d: int) -> tuple[tuple, None]:
    return (unpack_rows(xp, v, d, 0, d, v.dtype),), None


def _triu_unvec_vjp(xp: Any, res: None, G: Any, *, d: int) -> tuple:
    # v_ij (i < j) appears at (i, j) and (j, i); v_ii once.
    return (_pack(xp, G + xp.matrix_transpose(G) - G * xp.eye(d, dtype=G.dtype, device=device(G))),)


triu_vec_p = Primitive("triu_vec", _triu_vec_forward, _triu_vec_vjp)
triu_unvec_p = Primitive("triu_unvec", _triu_unvec_forward, _triu_unvec_vjp)
