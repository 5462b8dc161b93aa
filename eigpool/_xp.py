"""Small array-API helpers that every module needs: device-aware constants, diagonals and empty-safe reductions."""

from __future__ import annotations

from typing import Any

__all__ = ["arange_like", "cast", "ct", "device_of", "diag_embed", "diagonal", "eye_like", "is_complex", "max_abs",
           "real_part", "span", "sym"]


def device_of(x: Any) -> Any:
    """The device of ``x``, the array API attribute ``x.device`` (read as an attribute, so that tracing compilers see
    no library type tests), or None (the default device) for an array without one: a JAX tracer inside ``jit``, whose
    constants are placed with the computation, and NumPy 1.x."""
    try:
        return x.device
    except AttributeError:
        return None


def eye_like(xp: Any, x: Any, d: int | None = None) -> Any:
    """Identity (d, d) with x's dtype and device (d defaults to x's last axis)."""
    return xp.eye(x.shape[-1] if d is None else d, dtype=x.dtype, device=device_of(x))


def arange_like(xp: Any, x: Any, n: int) -> Any:
    """0, 1, ..., n - 1 on x's device."""
    return xp.arange(n, device=device_of(x))


def diag_embed(xp: Any, v: Any) -> Any:
    """(..., d) -> (..., d, d) with v on the diagonal."""
    return v[..., None, :] * eye_like(xp, v)


def diagonal(xp: Any, A: Any) -> Any:
    """(..., d, d) -> (..., d), the main diagonal."""
    return xp.linalg.diagonal(A)


def is_complex(xp: Any, x: Any) -> bool:
    """Whether ``x`` has a complex floating dtype (a branch on the dtype: trace-safe)."""
    return xp.isdtype(x.dtype, "complex floating")


def ct(xp: Any, A: Any) -> Any:
    """A^H, the conjugate transpose over the last two axes (A^T for real dtypes, with no conjugation pass)."""
    return xp.conj(A.mT) if is_complex(xp, A) else A.mT


def real_part(xp: Any, x: Any) -> Any:
    """Re x (x itself for real dtypes)."""
    return xp.real(x) if is_complex(xp, x) else x


def sym(xp: Any, A: Any) -> Any:
    """(A + A^H) / 2 over the last two axes: the symmetric part, the Hermitian part for complex dtypes."""
    return (A + ct(xp, A)) / 2


def max_abs(xp: Any, l: Any) -> Any:
    """max |l| over the last axis, shape (..., 1); 0 for an empty last axis (the spectrum of a 0 x 0 matrix), where
    the array API's max has no value. The branch is on the shape, never on values: trace-safe."""
    if l.shape[-1] == 0:
        return xp.zeros((*l.shape[:-1], 1), dtype=l.dtype, device=device_of(l))
    return xp.max(xp.abs(l), axis=-1, keepdims=True)


def cast(xp: Any, x: Any, dtype: Any) -> Any:
    """``x`` in ``dtype``: ``x`` itself if it has that dtype already (no copy, no alias op) or is None, else a cast
    copy."""
    return x if x is None or x.dtype == dtype else xp.astype(x, dtype)


def span(x: Any, start: int, stop: int | None, axis: int) -> Any:
    """``x[start:stop]`` along ``axis`` (a negative axis), or ``x`` itself when that is all of it: a full slice is an
    alias op, which PyTorch's legacy vmap (``gradcheck(check_batched_grad=True)``) cannot batch."""
    n = x.shape[axis]
    stop = n if stop is None else stop
    if (start, stop) == (0, n):
        return x
    return x[(..., slice(start, stop)) + (slice(None),) * (-1 - axis)]
