"""Finite-difference checks of derivatives: VJPs, JVPs, second order, batch independence and symmetry.

The dot-product test. For y = f(x_1, ..., x_k) with Jacobian J, a random cotangent w and random directions e_i,

    <w, J e> = sum_i <pullback(w)_i, e_i>            (VJP check)
    J e      = jvp(e)                                (JVP check, every output entry)

The left sides are measured by Richardson-extrapolated central differences, always in float64
(``eigpool.validation._finite_differences``).

Frameworks. NumPy functions are differentiated with ``eigpool.vjp`` (any composition of eigpool functions) or a
user's ``vjp(fn, *inputs) -> (out, pullback)``; PyTorch functions (any, not only eigpool's) with ``torch.autograd``;
CuPy functions like NumPy functions, on the GPU. The framework is chosen from the type of the first input
(``eigpool.validation._adapters``) and its module is only imported when such an input arrives. Inputs are cast to
float64 for the check.

Every result explains itself (``eigpool.validation._results``): ``str(result)`` lists, per direction, the finite
difference, the analytic value, their difference, the steps tried and the estimate at each; for a failed VJP check on
small inputs it also lists the input entries that contribute most to the mismatch (from a finite difference of the
gradient entry by entry).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ._adapters import Adapter, adapter_for
from ._finite_differences import (
    basis,
    central_difference,
    default_step,
    inner,
    is_symmetric,
    random_direction,
    relative_error,
    richardson,
)
from ._results import (
    DEFAULT_RTOL,
    BatchCheck,
    DirectionCheck,
    EntryMismatch,
    GradCheck,
    GradsCheck,
    JVPCheck,
    SymmetryCheck,
    VJPCheck,
)

__all__ = ["DEFAULT_RTOL", "ENTRY_LIMIT", "check_batch_independence", "check_grads", "check_jvp",
           "check_symmetric_gradient", "check_vjp"]

#: Inputs with at most this many entries get an entry-by-entry explanation when a VJP check fails.
ENTRY_LIMIT = 1024


def check_vjp(fn: Callable[..., Any], *inputs: Any, directions: int = 3, step: float | None = None,
              seed: int = 0, symmetric: Sequence[bool] | None = None, vjp: Callable[..., Any] | None = None,
              rtol: float = DEFAULT_RTOL, atol: float = 0.0, steps: int = 4, entries: bool | None = None) -> VJPCheck:
    """Check the VJP of ``fn`` at ``inputs`` against Richardson-extrapolated central differences (float64).

    fn: maps the inputs (NumPy, CuPy or PyTorch arrays of any shapes) to one array or a tuple of arrays.
    vjp: NumPy/CuPy only, ``vjp(fn, *inputs) -> (out, pullback)`` (default ``eigpool.vjp``); PyTorch inputs use
      ``torch.autograd``. symmetric: per input, whether directions are symmetric (default: the inputs that are
      exactly symmetric), the tangent space of a function defined on symmetric matrices.
    step: the first step h (default 1e-3 times the largest input magnitude); ``steps`` halvings are tried.
    rtol, atol: pass if |fd - vjp| <= rtol * max(|fd|, |vjp|, atol) in every direction.
    entries: explain a failure entry by entry (default: when it fails and the inputs have <= ENTRY_LIMIT entries).
    Returns a ``VJPCheck``: ``.error`` the worst relative error, ``.passed``, and an explanation in ``str()``.
    """
    ad, arrays, sym = _prepare(inputs, vjp, None, symmetric)
    rng = np.random.default_rng(seed)
    outs, pullback = ad.linearize(fn, arrays)
    ws = tuple(rng.standard_normal(y.shape) for y in outs)
    grads = pullback(ws)
    h = step if step is not None else default_step(arrays)
    result = VJPCheck(error=0.0, step=h, mode="vjp", framework=ad.name, rtol=rtol, atol=atol)

    def weighted(xs: list[np.ndarray]) -> float:
        return inner(ws, ad.call(fn, xs))

    for _ in range(directions):
        es = [random_direction(rng, a, s) for a, s in zip(arrays, sym, strict=True)]
        fd, kept, unc, estimates = richardson(central_difference(weighted, arrays, es), h, steps)
        fd, an = float(fd), inner(grads, es)
        diff = abs(fd - an)
        err = relative_error(fd, an, diff, atol)
        result.error = max(result.error, err)
        result.finite_difference.append(fd)
        result.vjp.append(an)
        result.directions.append(DirectionCheck(fd, an, diff, err, kept, tuple(h / 2**k for k in range(steps)),
                                                tuple(float(v) for v in estimates), unc))
    small = sum(a.size for a in arrays) <= ENTRY_LIMIT
    if entries or (entries is None and not result.passed and small):
        result.entries = _entry_mismatches(ad, fn, arrays, sym, ws, grads, h, min(steps, 2))
    return result


def _jacobian_products(outs: tuple, pullback: Callable, tangents: list[list[np.ndarray]]) -> list[tuple]:
    """J e for each tangent list e, built row by row from pullbacks of unit cotangents (one per output entry)."""
    results = [tuple(np.zeros(y.shape) for y in outs) for _ in tangents]
    for k, y in enumerate(outs):
        for index in np.ndindex(*y.shape):
            ws = [np.zeros(z.shape) for z in outs]
            ws[k][index] = 1.0
            row = pullback(ws)
            for r, es in zip(results, tangents, strict=True):
                r[k][index] = inner(row, es)
    return results


def check_jvp(fn: Callable[..., Any], *inputs: Any, directions: int = 3, step: float | None = None, seed: int = 0,
              symmetric: Sequence[bool] | None = None, jvp: Callable[..., Any] | None = None,
              vjp: Callable[..., Any] | None = None, rtol: float = DEFAULT_RTOL, atol: float = 0.0,
              steps: int = 4) -> JVPCheck:
    """Check the Jacobian-vector product J e of ``fn`` against central differences, every output entry.

    jvp: ``jvp(fn, primals, tangents) -> (out, tangent_out)`` for NumPy/CuPy functions. Without it, PyTorch uses
      forward mode (``torch.autograd.forward_ad``) where the function supports it (eigpool's functions do);
      otherwise J e is assembled from one pullback per output entry (the VJP rule, transposed: exact, but as many
      backward passes as output entries).
    error: per direction ||fd - J e|| / max(||fd||, ||J e||, atol) (Frobenius over all outputs); ``entries`` names the
    output entries with the largest mismatch in the worst direction. Other arguments as in ``check_vjp``.
    """
    ad, arrays, sym = _prepare(inputs, vjp, jvp, symmetric)
    rng = np.random.default_rng(seed)
    h = step if step is not None else default_step(arrays)
    tangents = [[random_direction(rng, a, s) for a, s in zip(arrays, sym, strict=True)] for _ in range(directions)]
    analytic = [ad.jvp(fn, arrays, es) for es in tangents]
    note = ""
    if any(t is None for t in analytic):
        outs, pullback = ad.linearize(fn, arrays)
        analytic = _jacobian_products(outs, pullback, tangents)
        note = "J e assembled from pullbacks of unit cotangents (no forward mode for this function)"
    result = JVPCheck(error=0.0, step=h, mode="jvp", framework=ad.name, rtol=rtol, atol=atol, note=note)
    worst_entries: list[EntryMismatch] = []

    def flat(xs: list[np.ndarray]) -> np.ndarray:
        return np.concatenate([y.ravel() for y in ad.call(fn, xs)])

    for es, tan in zip(tangents, analytic, strict=True):
        fd, kept, unc, estimates = richardson(central_difference(flat, arrays, es), h, steps)
        an = np.concatenate([np.ravel(t) for t in tan])
        fd_n, an_n, diff = float(np.linalg.norm(fd)), float(np.linalg.norm(an)), float(np.linalg.norm(fd - an))
        err = relative_error(fd_n, an_n, diff, atol)
        if err >= result.error:
            worst_entries = _output_entries(tan, fd)
        result.error = max(result.error, err)
        result.finite_difference.append(fd_n)
        result.vjp.append(an_n)
        result.directions.append(DirectionCheck(fd_n, an_n, diff, err, kept, tuple(h / 2**k for k in range(steps)),
                                                tuple(float(np.linalg.norm(v)) for v in estimates), unc))
    if not result.passed:
        result.entries = worst_entries
    return result


def _output_entries(tangent: tuple, fd_flat: np.ndarray, top: int = 5) -> list[EntryMismatch]:
    found, offset = [], 0
    for k, t in enumerate(tangent):
        t = np.asarray(t)
        for index in np.ndindex(*t.shape):
            found.append(EntryMismatch(k, tuple(int(i) for i in index), float(fd_flat[offset]), float(t[index])))
            offset += 1
    found.sort(key=lambda m: -m.difference)
    return found[:top]


def check_grads(fn: Callable[..., Any], args: Sequence[Any], order: int = 1, modes: Sequence[str] = ("fwd", "rev"),
                *, directions: int = 3, step: float | None = None, seed: int = 0, rtol: float = DEFAULT_RTOL,
                atol: float = 0.0, symmetric: Sequence[bool] | None = None, vjp: Callable[..., Any] | None = None,
                jvp: Callable[..., Any] | None = None) -> GradsCheck:
    """Check derivatives of ``fn`` at ``args`` up to ``order`` (1 or 2), in forward ("fwd") and reverse ("rev") mode.

    Order 2 works by recursion, as JAX's ``check_grads``: with a fixed random cotangent w, the function
    g(x) = pullback_x(w) (the VJP itself) is checked to first order, so the VJP of the VJP (and with "fwd" its JVP)
    is compared with finite differences of the first derivative. That needs a VJP that is itself differentiable:
    PyTorch functions (any torch function, and eigpool's on tensors) qualify; for NumPy pass a ``vjp`` that is.
    Returns a ``GradsCheck`` (``.passed``, ``.error``, ``str()`` with every check explained).
    """
    if order not in (1, 2):
        raise ValueError(f"check_grads: order must be 1 or 2, got {order!r}")
    unknown = sorted(set(modes) - {"fwd", "rev"})
    if unknown or not modes:
        raise ValueError(f"check_grads: modes must be a non-empty subset of ('fwd', 'rev'), got {tuple(modes)!r}")
    options = dict(directions=directions, step=step, seed=seed, rtol=rtol, atol=atol, symmetric=symmetric, vjp=vjp)
    checks: list[tuple[int, str, GradCheck]] = []
    for mode in modes:
        check = check_vjp(fn, *args, **options) if mode == "rev" else check_jvp(fn, *args, jvp=jvp, **options)
        checks.append((1, mode, check))
    if order == 2:
        ad, arrays, _ = _prepare(args, vjp, jvp, symmetric)
        outs = ad.call(fn, arrays)
        rng = np.random.default_rng(seed + 1)
        g = ad.vjp_function(fn, [rng.standard_normal(y.shape) for y in outs])
        try:
            inner = check_grads(g, args, 1, modes, directions=directions, step=step, seed=seed + 2, rtol=rtol,
                                atol=atol, symmetric=symmetric, vjp=vjp, jvp=jvp)
        except ValueError as exc:
            raise ValueError(f"check_grads(order=2): the VJP of {getattr(fn, '__name__', 'fn')} could not be "
                             f"differentiated ({exc}). Second order needs a differentiable VJP: use PyTorch tensors "
                             "(eigpool.backends.torch) or pass a vjp= that traces its own pullback") from None
        checks += [(2, mode, c) for _, mode, c in inner.checks]
    return GradsCheck(checks)


def check_batch_independence(fn: Callable[..., Any], *inputs: Any, samples: int | None = None, seed: int = 0,
                             rtol: float = 1e-12, vjp: Callable[..., Any] | None = None) -> BatchCheck:
    """Check that each sample of a batch gives the same output and gradient alone as inside the batch.

    inputs: arrays with the batch along axis 0 (B, ...); fn maps them to outputs with the batch along axis 0.
    For each of the first ``samples`` samples (default all), fn on the sample alone (a batch of one) is compared with
    its slice of fn on the whole batch, and so is its gradient for the same random cotangent; ``cross_talk`` is the
    gradient that reaches the other samples when only this sample's output has a cotangent (0 without coupling).
    Differences are relative to the larger max|.| of the two values compared; pass if all are <= rtol.
    """
    ad, arrays, _ = _prepare(inputs, vjp, None, None)
    rng = np.random.default_rng(seed)
    batch = arrays[0].shape[0]
    outs, pullback = ad.linearize(fn, arrays)
    ws = [rng.standard_normal(y.shape) for y in outs]
    worst = {"output": (0.0, 0), "gradient": (0.0, 0), "cross-talk": (0.0, 0)}

    def record(what: str, value: float, i: int) -> None:
        if value > worst[what][0]:
            worst[what] = (value, i)

    for i in range(batch if samples is None else min(samples, batch)):
        alone_outs, alone_pb = ad.linearize(fn, [a[i : i + 1] for a in arrays])
        w_alone = [w[i : i + 1] for w in ws]
        alone_grads = alone_pb(w_alone)
        w_one = [np.where(np.arange(w.shape[0]).reshape((-1,) + (1,) * (w.ndim - 1)) == i, w, 0.0) for w in ws]
        batch_grads = pullback(w_one)
        for y, ya in zip(outs, alone_outs, strict=True):
            record("output", _relative_difference(y[i : i + 1], ya), i)
        for g, ga in zip(batch_grads, alone_grads, strict=True):
            scale = max(float(np.max(np.abs(ga))), np.finfo(np.float64).tiny)
            record("gradient", _relative_difference(g[i : i + 1], ga), i)
            others = np.delete(g, i, axis=0)
            record("cross-talk", float(np.max(np.abs(others), initial=0.0)) / scale, i)
    what = max(worst, key=lambda k: worst[k][0])
    return BatchCheck(worst["output"][0], worst["gradient"][0], worst["cross-talk"][0], rtol, (worst[what][1], what))


def _relative_difference(a: np.ndarray, b: np.ndarray) -> float:
    scale = max(float(np.max(np.abs(a), initial=0.0)), float(np.max(np.abs(b), initial=0.0)),
                np.finfo(np.float64).tiny)
    return float(np.max(np.abs(a - b), initial=0.0)) / scale


def check_symmetric_gradient(fn: Callable[..., Any], *inputs: Any, seed: int = 0, rtol: float = 1e-12,
                             symmetric: Sequence[bool] | None = None, vjp: Callable[..., Any] | None = None,
                             symmetric_cotangent: bool = False) -> SymmetryCheck:
    """Check that the gradient with respect to each symmetric input is symmetric (in its last two axes).

    A function of a symmetric matrix has a symmetric gradient in the tangent space of symmetric matrices; eigpool
    returns that one. symmetric: which inputs to check (default: the exactly symmetric ones). The cotangent is random
    (symmetric in its last two axes if ``symmetric_cotangent``, for functions that only have a symmetric gradient
    for symmetric cotangents, such as torch.linalg.matrix_exp). Returns max|G - G^T| / max|G| per input.
    """
    ad, arrays, sym = _prepare(inputs, vjp, None, symmetric)
    rng = np.random.default_rng(seed)
    outs, pullback = ad.linearize(fn, arrays)
    ws = []
    for y in outs:
        w = rng.standard_normal(y.shape)
        square = y.ndim >= 2 and y.shape[-1] == y.shape[-2]
        ws.append((w + np.swapaxes(w, -1, -2)) / 2 if symmetric_cotangent and square else w)
    grads = pullback(ws)
    asym = {i: _relative_difference(g, np.swapaxes(g, -1, -2)) for i, g in enumerate(grads) if sym[i]}
    return SymmetryCheck(asym, rtol)


def _prepare(inputs: Sequence[Any], vjp: Any, jvp: Any, symmetric: Sequence[bool] | None
             ) -> tuple[Adapter, list[np.ndarray], list[bool]]:
    if not inputs:
        raise TypeError("gradient check: expected at least one input array, got none")
    ad = adapter_for(inputs[0], vjp, jvp)
    arrays = [ad.to_numpy(x) for x in inputs]
    sym = [is_symmetric(a) for a in arrays] if symmetric is None else [bool(s) for s in symmetric]
    if len(sym) != len(arrays):
        raise ValueError(f"gradient check: 'symmetric' needs one flag per input ({len(arrays)}), got {len(sym)}")
    return ad, arrays, sym


def _entry_mismatches(ad: Adapter, fn: Callable, arrays: list[np.ndarray], sym: list[bool], ws: tuple, grads: tuple,
                      h: float, steps: int, top: int = 5) -> list[EntryMismatch]:
    """Finite difference of the gradient of <w, f> entry by entry; the ``top`` entries with the largest mismatch."""
    found = []

    def weighted(xs: list[np.ndarray]) -> float:
        return inner(ws, ad.call(fn, xs))

    for i, a in enumerate(arrays):
        for index, e in basis(a.shape, sym[i]):
            es = [e if k == i else np.zeros_like(b) for k, b in enumerate(arrays)]
            fd = float(richardson(central_difference(weighted, arrays, es), h, steps)[0])
            found.append(EntryMismatch(i, tuple(int(k) for k in index), fd, float(np.sum(grads[i] * e))))
    found.sort(key=lambda m: -m.difference)
    return found[:top]
