"""pytest-friendly assertions over the gradient checks: they raise ``AssertionError`` with the check's explanation.

Example, in a user's test suite::

    from eigpool.validation.testing import assert_vjp_close

    def test_my_layer_gradient():
        S = spd_matrix(0, 6, "clustered")
        assert_vjp_close(my_function, S, rtol=1e-6)   # NumPy, PyTorch or CuPy inputs
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .checks import (
    DEFAULT_RTOL,
    check_batch_independence,
    check_grads,
    check_jvp,
    check_symmetric_gradient,
    check_vjp,
)

__all__ = ["assert_batch_independent", "assert_grads_close", "assert_jvp_close", "assert_symmetric_gradient",
           "assert_vjp_close"]


def _require(result: Any, what: str) -> Any:
    if not result.passed:
        raise AssertionError(f"{what}:\n{result}")
    return result


def assert_vjp_close(fn: Callable[..., Any], *inputs: Any, rtol: float = DEFAULT_RTOL, atol: float = 0.0,
                     **options: Any) -> Any:
    """Assert that ``check_vjp(fn, *inputs, rtol=rtol, atol=atol, **options)`` passes; return its result.

    On failure the AssertionError carries, per direction, the finite difference, the VJP, their difference and the
    steps tried, and for small inputs the entries of the gradient that differ most.
    """
    return _require(check_vjp(fn, *inputs, rtol=rtol, atol=atol, **options), "VJP does not match finite differences")


def assert_jvp_close(fn: Callable[..., Any], *inputs: Any, rtol: float = DEFAULT_RTOL, atol: float = 0.0,
                     **options: Any) -> Any:
    """Assert that ``check_jvp(fn, *inputs, ...)`` passes (the output entries that differ most on failure)."""
    return _require(check_jvp(fn, *inputs, rtol=rtol, atol=atol, **options), "JVP does not match finite differences")


def assert_grads_close(fn: Callable[..., Any], args: Sequence[Any], order: int = 1,
                       modes: Sequence[str] = ("fwd", "rev"), **options: Any) -> Any:
    """Assert that ``check_grads(fn, args, order, modes, ...)`` passes (every check explained on failure)."""
    return _require(check_grads(fn, args, order, modes, **options), f"derivatives up to order {order} do not match")


def assert_batch_independent(fn: Callable[..., Any], *inputs: Any, rtol: float = 1e-12, **options: Any) -> Any:
    """Assert that each sample's output and gradient are the same alone and inside the batch (axis 0)."""
    return _require(check_batch_independence(fn, *inputs, rtol=rtol, **options), "samples are not independent")


def assert_symmetric_gradient(fn: Callable[..., Any], *inputs: Any, rtol: float = 1e-12, **options: Any) -> Any:
    """Assert that the gradient with respect to each symmetric input is symmetric."""
    return _require(check_symmetric_gradient(fn, *inputs, rtol=rtol, **options), "gradient is not symmetric")
