"""Result types of the gradient checks: each records its figures and explains itself in ``str()``.

``GradCheck`` (``VJPCheck``, ``JVPCheck``) holds one ``DirectionCheck`` per random direction and, on failure, the
``EntryMismatch`` entries that differ most; ``GradsCheck`` collects the checks of ``check_grads``; ``BatchCheck`` and
``SymmetryCheck`` are the results of the batch-independence and gradient-symmetry checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["DEFAULT_RTOL", "BatchCheck", "DirectionCheck", "EntryMismatch", "GradCheck", "GradsCheck", "JVPCheck",
           "SymmetryCheck", "VJPCheck"]

#: Default relative tolerance of the checks, for float64 finite differences with Richardson extrapolation.
DEFAULT_RTOL = 1e-6


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
        """|fd - analytic|."""
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
        """The worst relative error is finite and at most rtol."""
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
        """Every check passed."""
        return all(c.passed for _, _, c in self.checks)

    @property
    def error(self) -> float:
        """The worst relative error over the checks."""
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
        """Outputs, gradients and cross-talk are all within rtol."""
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
        """The largest asymmetry over the checked inputs (0 if none was checked)."""
        return max(self.asymmetry.values(), default=0.0)

    @property
    def passed(self) -> bool:
        """The largest asymmetry is at most rtol."""
        return self.error <= self.rtol

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        per = ", ".join(f"input {i}: {a:.3g}" for i, a in self.asymmetry.items())
        return f"gradient symmetry {verdict}: max|G - G^T| / max|G| {per} (rtol {self.rtol:.3g})"
