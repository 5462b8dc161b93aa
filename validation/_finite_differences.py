"""Central differences with Richardson extrapolation, in float64 NumPy, and the directions they are taken along.

D(h) = (f(x + h e) - f(x - h e)) / 2h is taken on the steps h, h/2, h/4, ... and refined by Richardson
extrapolation: the tableau R[k][j] = (4^j R[k][j-1] - R[k-1][j-1]) / (4^j - 1) removes the error terms h^2, h^4, ...
one per column. The entry whose change from its neighbours is smallest is kept, and that change is reported as the
finite-difference uncertainty (the idea of Ridders' method).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["basis", "central_difference", "default_step", "inner", "is_symmetric", "random_direction",
           "relative_error", "richardson"]


def random_direction(rng: np.random.Generator, x: np.ndarray, symmetric: bool) -> np.ndarray:
    """A unit-norm random direction shaped like x; symmetric in the last two axes if ``symmetric``."""
    e = rng.standard_normal(np.shape(x))
    if symmetric:
        e = e + np.swapaxes(e, -1, -2)
    return e / np.linalg.norm(e)


def basis(shape: tuple[int, ...], symmetric: bool) -> list[tuple[tuple[int, ...], np.ndarray]]:
    """Unit directions, one per entry (one per unordered pair (i, j), i <= j, for a symmetric input)."""
    out = []
    for index in np.ndindex(*shape):
        if symmetric and index[-2] > index[-1]:
            continue
        e = np.zeros(shape)
        e[index] = 1.0
        if symmetric:
            e[index[:-2] + (index[-1], index[-2])] = 1.0
        out.append((index, e))
    return out


def is_symmetric(x: np.ndarray) -> bool:
    """Whether x is a (batch of) square matrices exactly equal to its transpose."""
    return x.ndim >= 2 and x.shape[-1] == x.shape[-2] and np.array_equal(x, np.swapaxes(x, -1, -2))


def central_difference(f: Callable[[list[np.ndarray]], Any], arrays: Sequence[np.ndarray],
                       es: Sequence[np.ndarray]) -> Callable[[float], Any]:
    """t -> (f(x + t e) - f(x - t e)) / 2t for the points ``arrays`` and directions ``es`` (one per input)."""
    def shifted(t: float) -> list[np.ndarray]:
        return [a + t * e for a, e in zip(arrays, es, strict=True)]

    return lambda t: (f(shifted(t)) - f(shifted(-t))) / (2 * t)


def richardson(central: Callable[[float], Any], h: float, steps: int) -> tuple[Any, float, float, list]:
    """Extrapolate central differences on h, h/2, ..., h/2^(steps-1).

    ``central(h)`` returns a float or an array. Returns (estimate, kept step, uncertainty, central differences); the
    uncertainty of a tableau entry is the larger change from its two parents, and the entry with the smallest is kept.
    """
    hs = [h / 2**k for k in range(steps)]
    rows: list[list[Any]] = []
    best, best_h, best_err = None, h, np.inf
    for k, hk in enumerate(hs):
        row = [np.asarray(central(hk), dtype=np.float64)]
        for j in range(1, k + 1):
            row.append((4**j * row[j - 1] - rows[k - 1][j - 1]) / (4**j - 1))
            err = max(float(np.max(np.abs(row[j] - row[j - 1]))), float(np.max(np.abs(row[j] - rows[k - 1][j - 1]))))
            if err < best_err:
                best, best_h, best_err = row[j], hk, err
        rows.append(row)
    if best is None:
        best, best_err = rows[0][0], np.inf
    return best, best_h, best_err, [r[0] for r in rows]


def default_step(arrays: Sequence[np.ndarray]) -> float:
    """The first step: 1e-3 times the largest input magnitude (1e-3 for all-zero inputs)."""
    scale = max((float(np.max(np.abs(a))) for a in arrays if a.size), default=1.0)
    return 1e-3 * (scale if scale > 0 else 1.0)


def relative_error(a: float, b: float, diff: float, atol: float) -> float:
    """diff / max(|a|, |b|, atol), guarded against 0 / 0."""
    return diff / max(abs(a), abs(b), atol, np.finfo(np.float64).tiny)


def inner(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> float:
    """sum_k <a_k, b_k> over lists of arrays."""
    return float(sum(np.sum(x * y) for x, y in zip(a, b, strict=True)))
