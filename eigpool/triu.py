"""Upper-triangular vectorisation: the d(d+1)/2 entries on and above the diagonal, row by row."""

from __future__ import annotations

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


@lru_cache(maxsize=16)
def _maps(d: int) -> tuple[list[int], list[int], list[int]]:
    """Gather maps: triu (flat matrix index of each vector entry); upper (vector index of each matrix entry, n for
    the zero below the diagonal); full (vector index of each matrix entry of the symmetric matrix)."""
    n = d * (d + 1) // 2
    pos = {(i, j): k for k, (i, j) in enumerate((i, j) for i in range(d) for j in range(i, d))}
    triu = [i * d + j for (i, j) in pos]
    upper = [pos.get((i, j), n) for i in range(d) for j in range(d)]
    full = [pos[(min(i, j), max(i, j))] for i in range(d) for j in range(d)]
    return triu, upper, full


def _gather(xp: Any, x: Any, d: int, which: int) -> Any:
    """Gather with map ``which`` of ``_maps(d)`` along the last axis."""
    return xp.take(x, _index(xp, device(x), d, which), axis=-1)


@lru_cache(maxsize=32)
def _index(xp: Any, dev: Any, d: int, which: int) -> Any:
    # Converting a list of d^2 ints costs more than the gather itself: keep one index array per namespace and device.
    return xp.asarray(_maps(d)[which], device=dev)


def _flat(xp: Any, x: Any) -> Any:
    return xp.reshape(x, (*x.shape[:-2], x.shape[-1] * x.shape[-2]))


def _square(xp: Any, x: Any, d: int) -> Any:
    return xp.reshape(x, (*x.shape[:-1], d, d))


def _triu_vec_forward(xp: Any, S: Any) -> tuple[tuple, int]:
    d = S.shape[-1]
    return (_gather(xp, _flat(xp, S), d, 0),), d


def _triu_vec_vjp(xp: Any, d: int, g: Any) -> tuple:
    # Scatter to the upper triangle as a gather from g with one zero appended (the array API has no scatter).
    padded = xp.concat([g, xp.zeros_like(g[..., :1])], axis=-1)
    return (_square(xp, _gather(xp, padded, d, 1), d),)


def _triu_unvec_forward(xp: Any, v: Any, *, d: int) -> tuple[tuple, None]:
    return (_square(xp, _gather(xp, v, d, 2), d),), None


def _triu_unvec_vjp(xp: Any, res: None, G: Any, *, d: int) -> tuple:
    # v_ij (i < j) appears at (i, j) and (j, i); v_ii once.
    both = G + xp.matrix_transpose(G) - G * xp.eye(d, dtype=G.dtype, device=device(G))
    return (_gather(xp, _flat(xp, both), d, 0),)


triu_vec_p = Primitive("triu_vec", _triu_vec_forward, _triu_vec_vjp)
triu_unvec_p = Primitive("triu_unvec", _triu_unvec_forward, _triu_unvec_vjp)
