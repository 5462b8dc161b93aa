"""Gradient verification for matrix functions, in eigpool or in your own code.

Checkers (``eigpool.validation.checks``), for NumPy, PyTorch and CuPy functions:

- ``check_vjp(fn, *inputs)``: the dot-product test <w, J e> = <pullback(w), e> in random directions, against
  central differences with Richardson extrapolation in float64;
- ``check_jvp(fn, *inputs)``: J e against finite differences, every output entry;
- ``check_grads(fn, args, order=1 or 2)``: both modes, second order by recursion (the VJP of the VJP);
- ``check_batch_independence(fn, batch)`` and ``check_symmetric_gradient(fn, S)``.

Each returns a result whose ``str()`` explains a failure (per direction: fd value, analytic value, difference, the
steps tried; which entries differ most). ``eigpool.validation.testing`` turns them into pytest assertions
(``assert_vjp_close(fn, *inputs, rtol=...)``), and ``eigpool.validation.strategies`` draws SPD matrices with
designed spectra (distinct, clustered, repeated, singular, ill-conditioned) for hypothesis.

``python -m eigpool.validation`` (or ``eigpool-validate``) writes the accuracy report of every gradient method
(``eigpool.validation.report``).

Example::

    import torch
    from eigpool.validation import check_vjp, check_grads
    from eigpool.validation.strategies import spd_matrix

    S = torch.tensor(spd_matrix(0, 6, "clustered"))
    print(check_vjp(torch.linalg.matrix_exp, S))                 # passes, with the figures
    assert check_grads(torch.linalg.matrix_exp, [S], order=2)
"""

from ._finite_differences import random_direction
from ._results import (
    BatchCheck,
    DirectionCheck,
    EntryMismatch,
    GradCheck,
    GradsCheck,
    JVPCheck,
    SymmetryCheck,
    VJPCheck,
)
from .checks import (
    check_batch_independence,
    check_grads,
    check_jvp,
    check_symmetric_gradient,
    check_vjp,
)
from .testing import (
    assert_batch_independent,
    assert_grads_close,
    assert_jvp_close,
    assert_symmetric_gradient,
    assert_vjp_close,
)

__all__ = [
    "BatchCheck", "DirectionCheck", "EntryMismatch", "GradCheck", "GradsCheck", "JVPCheck", "SymmetryCheck",
    "VJPCheck", "assert_batch_independent", "assert_grads_close", "assert_jvp_close", "assert_symmetric_gradient",
    "assert_vjp_close", "check_batch_independence", "check_grads", "check_jvp", "check_symmetric_gradient",
    "check_vjp", "random_direction",
]
