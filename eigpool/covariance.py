"""Covariance pooling: S = X Ibar X^T, Ibar = (1/N)(I - 11^T/N) (METHODS.md section 1), without the N x N matrix."""

from __future__ import annotations

from typing import Any

from ._checks import check_array
from ._primitive import Primitive, bind

__all__ = ["covariance", "covariance_p"]


def covariance(X: Any, *, compute_dtype: str | None = "float64") -> Any:
    """Biased covariance of the centred features of each sample.

    X: (..., d, N) real floating array, d channels over N positions. Returns S: (..., d, d) in X's dtype,
    S = Xc Xc^T / N with Xc = X - mean(X, axis=-1). The N x N centring matrix is never formed: cost O(d^2 N).
    ``compute_dtype``: dtype of the computation (``None``: X's own, half precision promoted to float32).
    """
    check_array(X, "covariance", "X", 2)
    return bind(covariance_p, X, compute_dtype=compute_dtype)[0]


def _covariance_forward(xp: Any, X: Any) -> tuple[tuple[Any], Any]:
    n = X.shape[-1]
    Xc = X - xp.mean(X, axis=-1, keepdims=True)
    return (Xc @ xp.matrix_transpose(Xc) / n,), Xc


def _covariance_vjp(xp: Any, Xc: Any, G: Any) -> tuple[Any]:
    # dL/dX = (G + G^T) Xc / N. No term for the mean: the rows of (G + G^T) Xc already sum to zero over positions.
    # Scale the (d, d) factor, not the (d, N) product: one pass over d^2 entries instead of d N.
    return (((G + xp.matrix_transpose(G)) / Xc.shape[-1]) @ Xc,)


covariance_p = Primitive("covariance", _covariance_forward, _covariance_vjp)
