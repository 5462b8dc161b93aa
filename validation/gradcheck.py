"""Finite-difference checks of derivatives: VJPs, JVPs, second order, batch independence and symmetry.

The dot-product test. For y = f(x_1, ..., x_k) with Jacobian J, a random cotangent w and random directions e_i,

    <w, J e> = sum_i <pullback(w)_i, e_i>            (VJP check)
    J e      = jvp(e)                                (JVP check, every output entry)

The left sides are measured by central differences D(h) = (f(x + h e) - f(x - h e)) / 2h, always in float64, on the
steps h, h/2, h/4, ... and refined by Richardson extrapolation: the tableau R[k][j] = (4^j R[k][j-1] - R[k-1][j-1]) /
(4^j - 1) removes the error terms h^2, h^4, ... one per column. The entry whose change from its neighbours is smallest
is kept, and that change is reported as the finite-difference uncertainty (the idea of Ridders' method).

Frameworks. NumPy functions are differentiated with ``eigpool.vjp`` (any composition of eigpool functions) or a
user's ``vjp(fn, *inputs) -> (out, pullback)``; PyTorch functions (any, not only eigpool's) with ``torch.autograd``;
CuPy functions like NumPy functions, on the GPU. The framework is chosen from the type of the first input and its
module is only imported when such an input arrives. Inputs are cast to float64 for the check.

Every result explains itself: ``str(result)`` lists, per direction, the finite difference, the analytic value, their
difference, the steps tried and the estimate at each; for a failed VJP check on small inputs it also lists the
input entries that contribute most to the mismatch (from a finite difference of the gradient entry by entry).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "BatchCheck", "DirectionCheck", "EntryMismatch", "GradCheck", "GradsCheck", "JVPCheck", "SymmetryCheck",
    "VJPCheck", "check_batch_independence", "check_grads", "check_jvp", "check_symmetric_gradient", "check_vjp",
    "random_direction",
]

#: Default relative tolerance of the checks, for float64 finite differences with Richardson extrapolation.
DEFAULT_RTOL = 1e-6
#: Inputs with at most this many entries get an entry-by-entry explanation when a VJP check fails.
ENTRY_LIMIT = 1024


# ---------------------------------------------------------------------------------------------------------------------
# Result objects.

@dataclass
class DirectionCheck:
    """One random direction of a check: the finite difference ``fd`` (Richardson-extrapolated, float64) and the
    ``analytic`` value (a scalar for a VJP check, the norm of J e for a JVP check), ``difference`` = |fd - analytic|
    (for a JVP check the norm of the difference of the two output tangents), its relative ``error``, the step kept
    (``step``), every step tried (``steps``) with the central difference at each (``estimates``) and the
    extrapolation's own ``uncertainty``."""

    fd: float
    analytic: float
    difference: float
    error: float
    step: float
    steps: tuple[float, ...]
    estimates: tuple[float, ...]
    uncertainty: float


@dataclass
class EntryMismatch:
    """An input entry (VJP check) or output entry (JVP check) whose finite difference and analytic value differ:
    ``argument`` is the input (or output) position, ``index`` the entry; for a symmetric input (i, j) stands for the
    symmetric pair (i, j) and (j, i)."""

    argument: int
    index: tuple[int, ...]
    fd: float
    analytic: float

    @property
    def difference(self) -> float:
        return abs(self.fd - self.analytic)


@dataclass
class GradCheck:
    """Result of ``check_vjp`` or ``check_jvp``.

    error: the worst relative error |fd - analytic| / max(|fd|, |analytic|, atol) over the directions.
    passed: ``error <= rtol`` (also ``bool(result)``). finite_difference, vjp: the per-direction values (kept for
    compatibility; ``directions`` has the full record). entries: the entries that contribute most to a mismatch.
    step: the initial step h. ``str(result)`` explains the check.
    """

    error: float
    finite_difference: list[float] = field(default_factory=list)
    vjp: list[float] = field(default_factory=list)
    step: float = 0.0
    mode: str = "vjp"
    framework: str = "numpy"
    rtol: float = DEFAULT_RTOL
    atol: float = 0.0
    directions: list[DirectionCheck] = field(default_factory=list)
    entries: list[EntryMismatch] = field(default_factory=list)
    note: str = ""

    @property
    def passed(self) -> bool:
        return bool(np.isfinite(self.error) and self.error <= self.rtol)

    def __bool__(self) -> bool:
        return self.passed

    def explain(self) -> str:
        """A multi-line account: verdict, one line per direction, the worst entries, and a hint when fd is noisy."""
        verdict = "passed" if self.passed else "FAILED"
        lines = [f"check_{self.mode} {verdict} ({self.framework}): worst relative error {self.error:.3g} "
                 f"(rtol {self.rtol:.3g}, atol {self.atol:.3g}), initial step {self.step:.3g}"]
        label = "<w, J e>" if self.mode == "vjp" else "|J e|"
        for k, d in enumerate(self.directions):
            tried = ", ".join(f"h={h:.3g}: {v:.10g}" for h, v in zip(d.steps, d.estimates, strict=True))
            lines.append(f"  direction {k}: {label} fd={d.fd:.12g} analytic={d.analytic:.12g} diff={d.difference:.3g} "
                         f"rel={d.error:.3g}; kept step {d.step:.3g}, fd uncertainty {d.uncertainty:.3g}; "
                         f"central differences {tried}")
        if self.entries:
            where = "input" if self.mode == "vjp" else "output"
            lines.append(f"  largest mismatches by entry ({where}, index: fd vs analytic):")
            lines += [f"    {where} {e.argument} {e.index}: fd={e.fd:.10g} analytic={e.analytic:.10g} "
                      f"diff={e.difference:.3g}" for e in self.entries]
        if not self.passed and any(d.uncertainty >= 0.1 * d.difference > 0 for d in self.directions):
            lines.append("  hint: the finite differences are as uncertain as the mismatch; try another step= "
                         "(smaller for a strongly curved function, larger for round-off) before blaming the gradient")
        if self.note:
            lines.append(f"  note: {self.note}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.explain()


class VJPCheck(GradCheck):
    """Result of ``check_vjp`` (see ``GradCheck``)."""


class JVPCheck(GradCheck):
    """Result of ``check_jvp`` (see ``GradCheck``); ``entries`` name output entries."""


@dataclass
class GradsCheck:
    """Result of ``check_grads``: every check run, by order and mode; ``passed`` if all passed."""

    checks: list[tuple[int, str, GradCheck]]

    @property
    def passed(self) -> bool:
        return all(c.passed for _, _, c in self.checks)

    @property
    def error(self) -> float:
        return max(c.error for _, _, c in self.checks)

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        return "\n".join(f"order {order} {mode}: {c.explain()}" for order, mode, c in self.checks)


@dataclass
class BatchCheck:
    """Result of ``check_batch_independence``: the largest difference between a sample computed alone and inside
    the batch, for outputs and for gradients, relative to the sample's own scale, and ``cross_talk``: the largest
    gradient reaching other samples from a cotangent on one sample (relative). ``worst``: (sample, what)."""

    output_difference: float
    gradient_difference: float
    cross_talk: float
    rtol: float
    worst: tuple[int, str] = (0, "")

    @property
    def passed(self) -> bool:
        return max(self.output_difference, self.gradient_difference, self.cross_talk) <= self.rtol

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        return (f"batch independence {verdict}: output alone vs in batch {self.output_difference:.3g}, gradient "
                f"{self.gradient_difference:.3g}, cross-talk {self.cross_talk:.3g} (relative, rtol {self.rtol:.3g}); "
                f"worst: sample {self.worst[0]} {self.worst[1]}")


@dataclass
class SymmetryCheck:
    """Result of ``check_symmetric_gradient``: per checked input, max|G - G^T| / max|G| of its gradient."""

    asymmetry: dict[int, float]
    rtol: float

    @property
    def error(self) -> float:
        return max(self.asymmetry.values(), default=0.0)

    @property
    def passed(self) -> bool:
        return self.error <= self.rtol

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        per = ", ".join(f"input {i}: {a:.3g}" for i, a in self.asymmetry.items())
        return f"gradient symmetry {verdict}: max|G - G^T| / max|G| {per} (rtol {self.rtol:.3g})"


# ---------------------------------------------------------------------------------------------------------------------
# Framework adapters: evaluate a function at float64 NumPy points and differentiate it with the framework's tools.

def _as_tuple(out: Any) -> tuple:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


class _NumpyAdapter:
    """NumPy arrays; gradients from ``vjp`` (default ``eigpool.vjp``)."""

    name = "numpy"

    def __init__(self, like: Any, vjp: Callable[..., Any] | None, jvp: Callable[..., Any] | None) -> None:
        if vjp is None:
            from eigpool import vjp
        self._vjp, self._jvp = vjp, jvp

    def to_framework(self, a: np.ndarray) -> Any:
        return a

    def to_numpy(self, x: Any) -> np.ndarray:
        return np.asarray(x, dtype=np.float64)

    def call(self, fn: Callable[..., Any], arrays: Sequence[np.ndarray]) -> tuple[np.ndarray, ...]:
        out = fn(*[self.to_framework(a) for a in arrays])
        return tuple(self.to_numpy(y) for y in _as_tuple(out))

    def linearize(self, fn: Callable[..., Any], arrays: Sequence[np.ndarray]) -> tuple[tuple, Callable]:
        """(outputs, pullback): pullback takes one float64 cotangent per output, returns one per input."""
        out, pb = self._vjp(fn, *[self.to_framework(a) for a in arrays])
        is_tuple = isinstance(out, (tuple, list))

        def pullback(ws: Sequence[np.ndarray]) -> tuple[np.ndarray, ...]:
            cts = [self.to_framework(w) for w in ws]
            return tuple(self.to_numpy(g) for g in pb(tuple(cts) if is_tuple else cts[0]))

        return tuple(self.to_numpy(y) for y in _as_tuple(out)), pullback

    def jvp(self, fn: Callable[..., Any], arrays: Sequence[np.ndarray],
            tangents: Sequence[np.ndarray]) -> tuple[np.ndarray, ...] | None:
        if self._jvp is None:
            return None
        _, t = self._jvp(fn, [self.to_framework(a) for a in arrays], [self.to_framework(e) for e in tangents])
        return tuple(self.to_numpy(y) for y in _as_tuple(t))

    def vjp_function(self, fn: Callable[..., Any], ws: Sequence[np.ndarray]) -> Callable[..., tuple]:
        """x -> pullback_x(ws), a function of framework arrays (differentiable if the ``vjp`` rule is)."""
        def g(*xs: Any) -> tuple:
            out, pb = self._vjp(fn, *xs)
            cts = [self.to_framework(w) for w in ws]
            return tuple(pb(tuple(cts) if isinstance(out, (tuple, list)) else cts[0]))

        return g


class _CupyAdapter(_NumpyAdapter):
    """CuPy arrays: the NumPy path with the function evaluated on the GPU."""

    name = "cupy"

    def __init__(self, like: Any, vjp: Callable[..., Any] | None, jvp: Callable[..., Any] | None) -> None:
        super().__init__(like, vjp, jvp)
        import cupy
        self._cp = cupy

    def to_framework(self, a: np.ndarray) -> Any:
        return self._cp.asarray(a, dtype=self._cp.float64)

    def to_numpy(self, x: Any) -> np.ndarray:
        return np.asarray(self._cp.asnumpy(x), dtype=np.float64)


class _TorchAdapter:
    """PyTorch tensors, on the device of the first input; gradients from ``torch.autograd`` (any torch function)."""

    name = "torch"

    def __init__(self, like: Any, vjp: Callable[..., Any] | None, jvp: Callable[..., Any] | None) -> None:
        import torch
        self._torch, self._device = torch, like.device

    def to_framework(self, a: np.ndarray) -> Any:
        # np.array keeps 0-d shapes (np.ascontiguousarray would make them 1-d).
        return self._torch.as_tensor(np.array(a, dtype=np.float64, order="C"), device=self._device)

    def to_numpy(self, x: Any) -> np.ndarray:
        return np.asarray(x.detach().cpu().numpy(), dtype=np.float64)

    def call(self, fn: Callable[..., Any], arrays: Sequence[np.ndarray]) -> tuple[np.ndarray, ...]:
        with self._torch.no_grad():
            out = fn(*[self.to_framework(a) for a in arrays])
        return tuple(self.to_numpy(y) for y in _as_tuple(out))

    def _grad(self, outs: tuple, xs: list, ws: Sequence[Any], create_graph: bool) -> tuple:
        torch = self._torch
        pairs = [(y, w) for y, w in zip(outs, ws, strict=True) if y.requires_grad]
        if not pairs:
            return tuple(torch.zeros_like(x) for x in xs)
        grads = torch.autograd.grad([y for y, _ in pairs], xs, [w for _, w in pairs], retain_graph=True,
                                    create_graph=create_graph, allow_unused=True)
        return tuple(torch.zeros_like(x) if g is None else g for x, g in zip(xs, grads, strict=True))

    def linearize(self, fn: Callable[..., Any], arrays: Sequence[np.ndarray]) -> tuple[tuple, Callable]:
        xs = [self.to_framework(a).requires_grad_(True) for a in arrays]
        with self._torch.enable_grad():
            outs = _as_tuple(fn(*xs))

        def pullback(ws: Sequence[np.ndarray]) -> tuple[np.ndarray, ...]:
            grads = self._grad(outs, xs, [self.to_framework(w) for w in ws], create_graph=False)
            return tuple(self.to_numpy(g) for g in grads)

        return tuple(self.to_numpy(y) for y in outs), pullback

    def jvp(self, fn: Callable[..., Any], arrays: Sequence[np.ndarray],
            tangents: Sequence[np.ndarray]) -> tuple[np.ndarray, ...] | None:
        # Forward mode (dual tensors) where the function supports it; otherwise the caller builds J e from pullbacks.
        fw = self._torch.autograd.forward_ad
        try:
            with fw.dual_level():
                outs = _as_tuple(fn(*[fw.make_dual(self.to_framework(a), self.to_framework(e))
                                      for a, e in zip(arrays, tangents, strict=True)]))
                ts = [fw.unpack_dual(y).tangent for y in outs]
        except (RuntimeError, NotImplementedError, TypeError):
            return None
        # An output without a tangent: independent of the inputs, or computed where forward mode does not reach (a
        # detach, autograd.grad inside fn): the pullbacks tell which.
        if any(t is None for t in ts):
            return None
        return tuple(self.to_numpy(t) for t in ts)

    def vjp_function(self, fn: Callable[..., Any], ws: Sequence[np.ndarray]) -> Callable[..., tuple]:
        """x -> pullback_x(ws) with ``create_graph``, so that it can be differentiated again (in reverse mode, or in
        forward mode: a dual x, made by ``jvp``, keeps its tangent, so forward over reverse is what gets checked)."""
        fw = self._torch.autograd.forward_ad

        def g(*xs: Any) -> tuple:
            with self._torch.enable_grad():
                xs = [x if x.requires_grad else x.requires_grad_(True) if fw.unpack_dual(x).tangent is not None
                      else x.detach().requires_grad_(True) for x in xs]
                outs = _as_tuple(fn(*xs))
                return self._grad(outs, xs, [self.to_framework(w) for w in ws], create_graph=True)

        return g


def _adapter(inputs: Sequence[Any], vjp: Callable[..., Any] | None, jvp: Callable[..., Any] | None) -> Any:
    """The adapter for the first input's array type (a framework module is used only if already imported)."""
    top = type(inputs[0]).__module__.split(".", 1)[0]
    if top == "torch" and "torch" in sys.modules:
        return _TorchAdapter(inputs[0], vjp, jvp)
    if top == "cupy" and "cupy" in sys.modules:
        return _CupyAdapter(inputs[0], vjp, jvp)
    return _NumpyAdapter(inputs[0], vjp, jvp)


# ---------------------------------------------------------------------------------------------------------------------
# Finite differences.

def random_direction(rng: np.random.Generator, x: np.ndarray, symmetric: bool) -> np.ndarray:
    """A unit-norm random direction shaped like x; symmetric in the last two axes if ``symmetric``."""
    e = rng.standard_normal(np.shape(x))
    if symmetric:
        e = e + np.swapaxes(e, -1, -2)
    return e / np.linalg.norm(e)


def _is_symmetric(x: np.ndarray) -> bool:
    return x.ndim >= 2 and x.shape[-1] == x.shape[-2] and np.array_equal(x, np.swapaxes(x, -1, -2))


def _richardson(central: Callable[[float], Any], h: float, steps: int) -> tuple[Any, float, float, list]:
    """Extrapolate central differences on h, h/2, ..., h/2^(steps-1).

    ``central(h)`` returns a float or an array. Returns (estimate, kept step, uncertainty, central differences); the
    uncertainty of a tableau entry is the larger change from its two parents, and the entry with the smallest is kept.
    """
    hs = [h / 2**k for k in range(steps)]
    rows: list[list[Any]] = []
    best, best_h, best_err = None, h, np.inf
    for k, hk in enumerate(hs):
        row = [np.asarray(central(hk), dtype=np.float64)]
        for j in range(1, k + 1):
            row.append((4**j * row[j - 1] - rows[k - 1][j - 1]) / (4**j - 1))
            err = max(float(np.max(np.abs(row[j] - row[j - 1]))), float(np.max(np.abs(row[j] - rows[k - 1][j - 1]))))
            if err < best_err:
                best, best_h, best_err = row[j], hk, err
        rows.append(row)
    if best is None:
        best, best_err = rows[0][0], np.inf
    return best, best_h, best_err, [r[0] for r in rows]


def _default_step(arrays: Sequence[np.ndarray]) -> float:
    scale = max((float(np.max(np.abs(a))) for a in arrays if a.size), default=1.0)
    return 1e-3 * (scale if scale > 0 else 1.0)


def _rel(a: float, b: float, diff: float, atol: float) -> float:
    return diff / max(abs(a), abs(b), atol, np.finfo(np.float64).tiny)


def _inner(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> float:
    return float(sum(np.sum(x * y) for x, y in zip(a, b, strict=True)))


def _prepare(inputs: Sequence[Any], vjp: Any, jvp: Any, symmetric: Sequence[bool] | None
             ) -> tuple[Any, list[np.ndarray], list[bool]]:
    if not inputs:
        raise TypeError("gradient check: expected at least one input array, got none")
    ad = _adapter(inputs, vjp, jvp)
    arrays = [ad.to_numpy(x) for x in inputs]
    sym = [_is_symmetric(a) for a in arrays] if symmetric is None else [bool(s) for s in symmetric]
    if len(sym) != len(arrays):
        raise ValueError(f"gradient check: 'symmetric' needs one flag per input ({len(arrays)}), got {len(sym)}")
    return ad, arrays, sym


def _shift(arrays: Sequence[np.ndarray], es: Sequence[np.ndarray], t: float) -> list[np.ndarray]:
    return [a + t * e for a, e in zip(arrays, es, strict=True)]


def _basis(shape: tuple[int, ...], symmetric: bool) -> list[tuple[tuple[int, ...], np.ndarray]]:
    """Unit directions, one per entry (one per unordered pair (i, j), i <= j, for a symmetric input)."""
    out = []
    for index in np.ndindex(*shape):
        if symmetric and index[-2] > index[-1]:
            continue
        e = np.zeros(shape)
        e[index] = 1.0
        if symmetric:
            e[index[:-2] + (index[-1], index[-2])] = 1.0
        out.append((index, e))
    return out


def _entry_mismatches(ad: Any, fn: Callable, arrays: list[np.ndarray], sym: list[bool], ws: tuple, grads: tuple,
                      h: float, steps: int, top: int = 5) -> list[EntryMismatch]:
    """Finite difference of the gradient of <w, f> entry by entry; the ``top`` entries with the largest mismatch."""
    found = []
    for i, a in enumerate(arrays):
        for index, e in _basis(a.shape, sym[i]):
            es = [e if k == i else np.zeros_like(b) for k, b in enumerate(arrays)]

            def central(t: float, es: list = es) -> float:
                return (_inner(ws, ad.call(fn, _shift(arrays, es, t)))
                        - _inner(ws, ad.call(fn, _shift(arrays, es, -t)))) / (2 * t)

            fd = float(_richardson(central, h, steps)[0])
            found.append(EntryMismatch(i, tuple(int(k) for k in index), fd, float(np.sum(grads[i] * e))))
    found.sort(key=lambda m: -m.difference)
    return found[:top]


# ---------------------------------------------------------------------------------------------------------------------
# Public checks.

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
    h = step if step is not None else _default_step(arrays)
    result = VJPCheck(error=0.0, step=h, mode="vjp", framework=ad.name, rtol=rtol, atol=atol)
    for _ in range(directions):
        es = [random_direction(rng, a, s) for a, s in zip(arrays, sym, strict=True)]

        def central(t: float, es: list = es) -> float:
            return (_inner(ws, ad.call(fn, _shift(arrays, es, t)))
                    - _inner(ws, ad.call(fn, _shift(arrays, es, -t)))) / (2 * t)

        fd, kept, unc, estimates = _richardson(central, h, steps)
        fd, an = float(fd), _inner(grads, es)
        diff = abs(fd - an)
        err = _rel(fd, an, diff, atol)
        result.error = max(result.error, err)
        result.finite_difference.append(fd)
        result.vjp.append(an)
        result.directions.append(DirectionCheck(fd, an, diff, err, kept, tuple(h / 2**k for k in range(steps)),
                                                tuple(float(v) for v in estimates), unc))
    small = sum(a.size for a in arrays) <= ENTRY_LIMIT
    if entries or (entries is None and not result.passed and small):
        result.entries = _entry_mismatches(ad, fn, arrays, sym, ws, grads, h, min(steps, 2))
    return result


def _jacobian_products(ad: Any, outs: tuple, pullback: Callable, tangents: list[list[np.ndarray]]) -> list[tuple]:
    """J e for each tangent list e, built row by row from pullbacks of unit cotangents (one per output entry)."""
    results = [tuple(np.zeros(y.shape) for y in outs) for _ in tangents]
    for k, y in enumerate(outs):
        for index in np.ndindex(*y.shape):
            ws = [np.zeros(z.shape) for z in outs]
            ws[k][index] = 1.0
            row = pullback(ws)
            for r, es in zip(results, tangents, strict=True):
                r[k][index] = _inner(row, es)
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
    h = step if step is not None else _default_step(arrays)
    tangents = [[random_direction(rng, a, s) for a, s in zip(arrays, sym, strict=True)] for _ in range(directions)]
    analytic = [ad.jvp(fn, arrays, es) for es in tangents]
    note = ""
    if any(t is None for t in analytic):
        outs, pullback = ad.linearize(fn, arrays)
        analytic = _jacobian_products(ad, outs, pullback, tangents)
        note = "J e assembled from pullbacks of unit cotangents (no forward mode for this function)"
    result = JVPCheck(error=0.0, step=h, mode="jvp", framework=ad.name, rtol=rtol, atol=atol, note=note)
    worst_entries: list[EntryMismatch] = []
    for es, tan in zip(tangents, analytic, strict=True):
        def central(t: float, es: list = es) -> np.ndarray:
            plus, minus = ad.call(fn, _shift(arrays, es, t)), ad.call(fn, _shift(arrays, es, -t))
            return np.concatenate([((p - m) / (2 * t)).ravel() for p, m in zip(plus, minus, strict=True)])

        fd, kept, unc, estimates = _richardson(central, h, steps)
        an = np.concatenate([np.ravel(t) for t in tan])
        fd_n, an_n, diff = float(np.linalg.norm(fd)), float(np.linalg.norm(an)), float(np.linalg.norm(fd - an))
        err = _rel(fd_n, an_n, diff, atol)
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
