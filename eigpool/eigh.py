"""Symmetric eigendecomposition with the gradient kernels of the GCP literature ([Note: eigh backward] and
[Note: kernel approximations] in eigpool._kernels)."""

from __future__ import annotations

from typing import Any, NamedTuple

from ._checks import check_matrix, checked
from ._kernels import KERNELS, kernel_matrix, tie_tolerance
from ._primitive import Primitive, bind
from ._spec import EighSpec, eigh_spec
from ._xp import diag_embed, max_abs, sym

__all__ = ["KERNELS", "EighResult", "eigh", "eigh_p", "kernel_matrix", "tie_tolerance"]


class EighResult(NamedTuple):
    """Eigenvalues (..., d) in ascending order and eigenvectors (..., d, d), one per column."""

    eigenvalues: Any
    eigenvectors: Any


def eigh(S: Any, *, grad: str = "exact", floor: float | str | None = None, compute_dtype: str | None = "float64",
         **kernel_options: Any) -> EighResult:
    """Eigendecomposition of a batch of symmetric matrices, S = U diag(l) U^T.

    S: (..., d, d) real symmetric. Returns ``EighResult(eigenvalues (..., d) ascending, eigenvectors (..., d, d))`` in
    S's dtype; column k of the eigenvectors belongs to eigenvalue k.

    grad: the gradient kernel (eigpool._kernels), one of ``KERNELS``: "exact", "taylor" (``degree=100``), "pade"
      (``order=2, delta=1e-3``), "clip" (``threshold=1e10``), "power_iteration" (``iterations=19``).
    floor: None (raw eigenvalues), "auto" or a float: eigenvalues are returned as max(l, floor * max|l|) ("auto":
      d * eps of the compute dtype); the derivative of an eigenvalue below the floor is 0 (subgradient of the clamp).
    compute_dtype: dtype of the computation (default float64; None: S's own).
    Gradients with respect to S are symmetric (the derivative of the function of (S + S^T) / 2).
    """
    spec = eigh_spec("eigh", grad=grad, floor=floor, compute_dtype=compute_dtype, kernel_options=kernel_options)
    check_matrix(S, "eigh", "S")
    return EighResult(*checked("eigh", "S", S, lambda: bind(eigh_p, S, spec=spec)))


def _eigh_forward(xp: Any, S: Any, *, spec: EighSpec) -> tuple[tuple, Any]:
    l, U = xp.linalg.eigh(S)
    if spec.floor is None:
        return (l, U), (l, U, None)
    tau = spec.floor.relative(l.shape[-1], float(xp.finfo(l.dtype).eps)) * max_abs(xp, l)
    return (xp.maximum(l, tau), U), (l, U, l >= tau)


def _eigh_vjp(xp: Any, res: tuple, gl: Any, gU: Any, *, spec: EighSpec) -> tuple:
    # [Note: eigh backward]: dS = sym(U [K^T o (U^T gU) + diag(gl)] U^T).
    l, U, above = res
    if above is not None:
        # The clamp max(l, tau) passes no gradient to eigenvalues below the floor.
        gl = xp.where(above, gl, xp.zeros_like(gl))
    Ut = U.mT
    inner = spec.kernel.matrix(xp, l).mT * (Ut @ gU)
    return (sym(xp, U @ (inner + diag_embed(xp, gl)) @ Ut),)


eigh_p = Primitive("eigh", _eigh_forward, _eigh_vjp, n_outputs=2)
