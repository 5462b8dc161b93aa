"""Finite-difference checks of vector-Jacobian products (the dot-product test).

For a function y = f(x1, ..., xk) with VJP pullback, a random cotangent w and random directions e_i,

    <w, J e> = sum_i <pullback(w)_i, e_i>

must hold. The left side is measured by central differences with one step of Richardson extrapolation,
D(h) = (f(x + h e) - f(x - h e)) / 2h,  R = (4 D(h/2) - D(h)) / 3, whose truncation error is O(h^4), in float64.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["VJPCheck", "check_vjp", "random_direction"]


@dataclass
class VJPCheck:
    """Result of ``check_vjp``: the worst relative error over the directions, and each direction's figures."""

    error: float
    finite_difference: list[float] = field(default_factory=list)
    vjp: list[float] = field(default_factory=list)
    step: float = 0.0

    def __bool__(self) -> bool:
        return bool(np.isfinite(self.error))

    def __str__(self) -> str:
        rows = ", ".join(f"fd={a:.6g} vjp={b:.6g}" for a, b in zip(self.finite_difference, self.vjp, strict=True))
        return f"relative error {self.error:.3g} at step {self.step:.3g} ({rows})"


def random_direction(rng: np.random.Generator, x: np.ndarray, symmetric: bool) -> np.ndarray:
    """A unit-norm random direction shaped like x; symmetric in the last two axes if ``symmetric``."""
    e = rng.standard_normal(x.shape)
    if symmetric:
        e = e + np.swapaxes(e, -1, -2)
    return e / np.linalg.norm(e)


def _is_symmetric(x: np.ndarray) -> bool:
    return x.ndim >= 2 and x.shape[-1] == x.shape[-2] and np.array_equal(x, np.swapaxes(x, -1, -2))


def check_vjp(fn: Callable[..., Any], *inputs: np.ndarray, directions: int = 3, step: float | None = None,
              seed: int = 0, symmetric: Sequence[bool] | None = None,
              vjp: Callable[..., Any] | None = None) -> VJPCheck:
    """Check the VJP of ``fn`` at ``inputs`` (float64 NumPy arrays) against Richardson-extrapolated differences.

    fn: maps the inputs to one array. vjp: ``vjp(fn, *inputs) -> (out, pullback)`` (default ``eigpool.vjp``).
    symmetric: per input, whether directions must be symmetric (default: inputs that are exactly symmetric).
    step: h (default 1e-3 times the largest input magnitude). Returns a ``VJPCheck`` whose ``error`` is the worst
    relative error |fd - vjp| / max(|fd|, |vjp|) over ``directions`` random directions.
    """
    if vjp is None:
        from eigpool import vjp
    rng = np.random.default_rng(seed)
    out, pullback = vjp(fn, *inputs)
    w = rng.standard_normal(np.shape(out))
    grads = pullback(w)
    sym = [_is_symmetric(x) for x in inputs] if symmetric is None else list(symmetric)
    h = step if step is not None else 1e-3 * max(float(np.max(np.abs(x))) for x in inputs)

    def along(es: list[np.ndarray], t: float) -> float:
        return float(np.sum(w * np.asarray(fn(*[x + t * e for x, e in zip(inputs, es, strict=True)]))))

    result = VJPCheck(error=0.0, step=h)
    for _ in range(directions):
        es = [random_direction(rng, x, s) for x, s in zip(inputs, sym, strict=True)]
        d1 = (along(es, h) - along(es, -h)) / (2 * h)
        d2 = (along(es, h / 2) - along(es, -h / 2)) / h
        fd = (4 * d2 - d1) / 3
        ad = float(sum(np.sum(np.asarray(g) * e) for g, e in zip(grads, es, strict=True)))
        scale = max(abs(fd), abs(ad), np.finfo(np.float64).tiny)
        result.error = max(result.error, abs(fd - ad) / scale)
        result.finite_difference.append(fd)
        result.vjp.append(ad)
    return result
