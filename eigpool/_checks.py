"""Input checks shared by every public function: one place, one wording.

Each message names the operation, the argument, what was expected and what came in. ``TypeError`` for a wrong kind
of object or dtype, ``ValueError`` for a wrong shape or wrong values.
"""

from __future__ import annotations

import math
from typing import Any

from array_api_compat import array_namespace, is_array_api_obj

__all__ = ["check_array", "check_matrix", "psd_tolerance", "relative_eps", "require_psd"]


def check_array(x: Any, op: str, name: str, min_ndim: int, finite: bool = True) -> Any:
    """Check that ``x`` is a real floating array of rank >= ``min_ndim`` with finite entries; return its namespace.
    ``finite=False`` leaves the entries to the caller (``check_matrix`` folds that test into its own)."""
    if not is_array_api_obj(x):
        raise TypeError(f"{op}: argument '{name}' must be an array, got {type(x).__name__}")
    xp = array_namespace(x)
    if not xp.isdtype(x.dtype, "real floating"):
        raise TypeError(f"{op}: argument '{name}' must have a real floating dtype, got {x.dtype}")
    if x.ndim < min_ndim:
        raise ValueError(f"{op}: argument '{name}' must have rank at least {min_ndim}, got shape {tuple(x.shape)}")
    if finite and not _all_finite(xp, x):
        raise ValueError(f"{op}: argument '{name}' contains NaN or inf")
    return xp


def _all_finite(xp: Any, x: Any) -> bool:
    """Whether every entry of ``x`` is finite, usually in one read-only pass: the sum is finite when every entry is.
    Only a non-finite sum (a NaN or inf entry, or finite entries whose sum overflows) runs the entrywise test."""
    return bool(xp.isfinite(xp.sum(x))) or bool(xp.all(xp.isfinite(x)))


def relative_eps(xp: Any, dtype: Any) -> float:
    """Tolerance for round-off in data of ``dtype``: sqrt(machine epsilon) (1.5e-8 for float64, 3.5e-4 for float32)."""
    return math.sqrt(float(xp.finfo(dtype).eps))


def check_matrix(S: Any, op: str, name: str = "S") -> Any:
    """Check that ``S`` is a batch of real symmetric matrices of shape (..., d, d); return its namespace.

    Symmetry is checked to ``relative_eps(dtype) * max|S|`` per matrix, so round-off from computing ``X @ X.T`` passes
    and a genuinely non-symmetric matrix does not.
    """
    xp = check_array(S, op, name, 2, finite=False)
    if S.shape[-1] != S.shape[-2]:
        raise ValueError(f"{op}: argument '{name}' must be square in its last two axes, got shape {tuple(S.shape)}")
    if S.shape[-1] == 0:
        raise ValueError(f"{op}: argument '{name}' must have d >= 1, got shape {tuple(S.shape)}")
    # Finite first: S - S^T of an inf entry is NaN, which NumPy would report with a warning before the error.
    if not _all_finite(xp, S):
        raise ValueError(f"{op}: argument '{name}' contains NaN or inf")
    # S - S^T is antisymmetric, so its largest entry is its largest magnitude; max|S| from max and min: no abs pass.
    asym = xp.max(S - xp.matrix_transpose(S), axis=(-2, -1))
    if bool(xp.all(asym == 0)):
        return xp  # exactly symmetric (X X^T from BLAS, (A + A^T) / 2)
    scale = xp.maximum(xp.max(S, axis=(-2, -1)), -xp.min(S, axis=(-2, -1)))
    if bool(xp.any(asym > relative_eps(xp, S.dtype) * scale)):
        worst = float(xp.max(asym / xp.where(scale > 0, scale, 1.0)))
        raise ValueError(f"{op}: argument '{name}' must be symmetric; max |S - S^T| / max |S| = {worst:.3g} exceeds "
                         f"the tolerance {relative_eps(xp, S.dtype):.3g} for {S.dtype} (symmetrise it: (S + S^T) / 2)")
    return xp


def psd_tolerance(xp: Any, S: Any) -> float:
    """Relative tolerance for negative eigenvalues from round-off in ``S`` (see ``relative_eps``)."""
    return relative_eps(xp, S.dtype)


def require_psd(xp: Any, l: Any, op: str, tol: float, name: str = "S") -> None:
    """Raise ValueError if any matrix has an eigenvalue below ``-tol * max|l|`` (its own spectrum's scale)."""
    scale = xp.max(xp.abs(l), axis=-1)
    low = l[..., 0]
    if bool(xp.any(low < -tol * scale)):
        worst = float(xp.min(low / xp.where(scale > 0, scale, 1.0)))
        raise ValueError(f"{op}: argument '{name}' must be positive semi-definite; its smallest eigenvalue is "
                         f"{worst:.3g} times its largest magnitude, below the round-off tolerance -{tol:.3g}")
