"""Covariance pooling: S = X Ibar X^T, Ibar = (1/N)(I - 11^T/N) (METHODS.md section 1), without the N x N matrix."""

from __future__ import annotations

from typing import Any

from ._checks import check_array, checked
from ._primitive import Primitive, bind
from ._spec import ComputeSpec, compute_spec

__all__ = ["covariance", "covariance_p"]


def covariance(X: Any, *, compute_dtype: str | None = "float64") -> Any:
    """Biased covariance of the centred features of each sample.

    X: (..., d, N) real floating array, d channels over N >= 1 positions. Returns S: (..., d, d) in X's dtype,
    S = Xc Xc^T / N with Xc = X - mean(X, axis=-1). The N x N centring matrix is never formed: cost O(d^2 N).
    ``compute_dtype``: dtype of the computation (``None``: X's own, half precision promoted to float32).
    """
    spec = compute_spec("covariance", compute_dtype)
    check_features(X, "covariance")
    return checked("covariance", "X", X, lambda: bind(covariance_p, X, spec=spec), symmetric=False,
                   squares=True)[0]


def check_features(X: Any, op: str) -> Any:
    """Check that ``X`` is a real floating (..., d, N) array with N >= 1 positions; return its namespace."""
    xp = check_array(X, op, "X", 2)
    if X.shape[-1] == 0:
        raise ValueError(f"{op}: argument 'X' must have at least one position (N >= 1) in its last axis, got shape "
                         f"{tuple(X.shape)}: the covariance of no samples is undefined")
    return xp


def _covariance_forward(xp: Any, X: Any, *, spec: ComputeSpec) -> tuple[tuple[Any], Any]:
    n = X.shape[-1]
    Xc = X - xp.mean(X, axis=-1, keepdims=True)
    return (Xc @ Xc.mT / n,), Xc


def _covariance_vjp(xp: Any, Xc: Any, G: Any, *, spec: ComputeSpec) -> tuple[Any]:
    # dL/dX = (G + G^T) Xc / N. No term for the mean: the rows of (G + G^T) Xc already sum to zero over positions.
    # Scale the (d, d) factor, not the (d, N) product: one pass over d^2 entries instead of d N.
    return (((G + G.mT) / Xc.shape[-1]) @ Xc,)


covariance_p = Primitive("covariance", _covariance_forward, _covariance_vjp)
