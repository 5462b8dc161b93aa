"""Input checks shared by every public function: one place, one wording.

Each message names the operation, the argument, what was expected and what came in. ``TypeError`` for a wrong kind
of object or dtype, ``ValueError`` for a wrong shape or wrong values.

Two kinds of check:
- structural checks (type, dtype, rank, square shape) read only shapes and dtypes: they always run, under tracing too;
- value checks (finite entries, symmetry, positive semi-definiteness, a positive trace) read the values, so they run
  only on concrete arrays: they are skipped under tracing (meta and fake tensors, ``torch.func`` transforms,
  ``torch.compile``, ``jax.jit``; each backend says what is concrete), and can be switched off with
  ``eigpool.value_checks(False)`` or the environment variable ``EIGPOOL_VALUE_CHECKS=0``. They run once per call,
  *after* the computation, as fused reductions: one host read for features, two for matrices (finiteness, then
  symmetry and positive semi-definiteness together). The positive semi-definiteness test uses the eigenvalues the
  computation produced, so no eigendecomposition is repeated. Only when that fused test fails (or the
  computation raised) is the input examined in detail, for the message.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from ._primitive import backend_of, namespace_of
from ._xp import max_abs

__all__ = ["check_array", "check_matrix", "check_truncate", "checked", "relative_eps", "value_checks"]

_VALUE_CHECKS: ContextVar[bool] = ContextVar("eigpool_value_checks",
                                             default=os.environ.get("EIGPOOL_VALUE_CHECKS", "1") != "0")


@contextmanager
def value_checks(enabled: bool) -> Iterator[None]:
    """Turn the value checks of eigpool's functions on or off inside a ``with`` block (thread- and task-local).

    ``with eigpool.value_checks(False): ...`` skips the tests for NaN/inf, symmetry and positive semi-definiteness
    (one fused reduction and one host-device synchronisation per call): use it on a hot path whose inputs are known
    to be valid. Structural checks (types, shapes, options) always run. Default: on, unless the environment variable
    ``EIGPOOL_VALUE_CHECKS`` is "0".
    """
    token = _VALUE_CHECKS.set(bool(enabled))
    try:
        yield
    finally:
        _VALUE_CHECKS.reset(token)


def check_array(x: Any, op: str, name: str, min_ndim: int) -> Any:
    """Check that ``x`` is a real floating array of rank >= ``min_ndim``; return its namespace (structural only)."""
    xp = namespace_of(x)
    if xp is None:
        raise TypeError(f"{op}: argument '{name}' must be an array, got {type(x).__name__}")
    if not xp.isdtype(x.dtype, "real floating"):
        raise TypeError(f"{op}: argument '{name}' must have a real floating dtype, got {x.dtype}")
    if x.ndim < min_ndim:
        raise ValueError(f"{op}: argument '{name}' must have rank at least {min_ndim}, got shape {tuple(x.shape)}")
    return xp


def check_matrix(S: Any, op: str, name: str = "S") -> Any:
    """Check that ``S`` is a real floating batch of square matrices (..., d, d), d >= 0; return its namespace."""
    xp = check_array(S, op, name, 2)
    if S.shape[-1] != S.shape[-2]:
        raise ValueError(f"{op}: argument '{name}' must be square in its last two axes, got shape {tuple(S.shape)}")
    return xp


def check_truncate(op: str, k: int, d: int) -> None:
    """``truncate`` must leave at least one eigenvalue of a d x d matrix (0 is always allowed)."""
    if k and not k < d:
        raise ValueError(f"{op}: truncate must be an integer in [0, d) = [0, {d}), got {k!r}")


def relative_eps(xp: Any, dtype: Any) -> float:
    """Tolerance for round-off in data of ``dtype``: sqrt(machine epsilon) (1.5e-8 for float64, 3.5e-4 for float32)."""
    return math.sqrt(float(xp.finfo(dtype).eps))


def _active(x: Any) -> bool:
    return _VALUE_CHECKS.get() and math.prod(x.shape) > 0 and backend_of(x).concrete(x)


def checked(op: str, name: str, x: Any, compute: Callable[[], tuple], *, symmetric: bool = True,
            eigenvalues: int | None = None, positive_trace: bool = False) -> tuple:
    """``compute()`` (a tuple of outputs), then the value checks of the input ``x`` named ``name``: finite entries,
    and if ``symmetric`` (x is a batch of matrices) symmetry to round-off, positive semi-definiteness from the
    ascending eigenvalues at ``compute()[eigenvalues]`` (if given), and a positive trace (if ``positive_trace``).

    The checks are one fused reduction read once; when it fails, or when ``compute`` raised, the input is examined
    in detail and the first problem found is raised as a ValueError naming ``op`` and ``name``.
    """
    if not _active(x):
        return compute()
    try:
        outputs = compute()
    except Exception:
        _diagnose(op, name, x, symmetric, None, positive_trace)
        raise
    l = None if eigenvalues is None else outputs[eigenvalues]
    if not _passes(x, symmetric, l, positive_trace):
        _diagnose(op, name, x, symmetric, l, positive_trace)
    return outputs


def _passes(x: Any, symmetric: bool, l: Any, positive_trace: bool) -> bool:
    """The fused test: True if every check passes (False may be a false alarm, e.g. a sum that overflows).

    Matrices are read twice: finiteness first (from their max and min, through which NaN propagates), so that the
    symmetry test never subtracts infinities (which NumPy would report with a warning before the error)."""
    xp = namespace_of(x)
    if not symmetric:
        return bool(xp.isfinite(xp.sum(x)))
    high, low = xp.max(x, axis=(-2, -1)), xp.min(x, axis=(-2, -1))
    if not bool(xp.all(xp.isfinite(high)) & xp.all(xp.isfinite(low))):
        return False
    tol = relative_eps(xp, x.dtype)
    ok = xp.all(xp.max(x - x.mT, axis=(-2, -1)) <= tol * xp.maximum(high, -low))
    if l is not None:
        ok = ok & xp.all(l[..., 0] >= -tol * max_abs(xp, l)[..., 0])
    if positive_trace:
        ok = ok & xp.all(xp.linalg.trace(x) > 0)
    return bool(ok)


def _diagnose(op: str, name: str, x: Any, symmetric: bool, l: Any, positive_trace: bool) -> None:
    """Raise the ValueError for the first problem of ``x``; return if there is none."""
    xp = namespace_of(x)
    if not bool(xp.all(xp.isfinite(x))):
        raise ValueError(f"{op}: argument '{name}' contains NaN or inf")
    if not symmetric:
        return
    tol = relative_eps(xp, x.dtype)
    asym = xp.max(x - x.mT, axis=(-2, -1))
    scale = xp.maximum(xp.max(x, axis=(-2, -1)), -xp.min(x, axis=(-2, -1)))
    if bool(xp.any(asym > tol * scale)):
        worst = float(xp.max(asym / xp.where(scale > 0, scale, xp.ones_like(scale))))
        raise ValueError(f"{op}: argument '{name}' must be symmetric; max |S - S^T| / max |S| = {worst:.3g} exceeds "
                         f"the tolerance {tol:.3g} for {x.dtype} (symmetrise it: (S + S^T) / 2)")
    if l is not None:
        scale_l = max_abs(xp, l)[..., 0]
        if bool(xp.any(l[..., 0] < -tol * scale_l)):
            worst = float(xp.min(l[..., 0] / xp.where(scale_l > 0, scale_l, xp.ones_like(scale_l))))
            raise ValueError(f"{op}: argument '{name}' must be positive semi-definite; its smallest eigenvalue is "
                             f"{worst:.3g} times its largest magnitude, below the round-off tolerance -{tol:.3g}")
    if positive_trace and not bool(xp.all(xp.linalg.trace(x) > 0)):
        raise ValueError(f"{op}: argument '{name}' must be positive semi-definite with a positive trace; "
                         "found a matrix with trace <= 0")
