"""What the accuracy report measures: spectrum families, run sizes, gradient methods and precisions, and the samples.

Everything here is a plain table: add a ``Method`` to ``METHODS`` or a family to ``families`` and every section, plot
and table of the report picks it up.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

import eigpool

from ..strategies import spd_matrix

__all__ = ["DEFAULT_F32", "FD_FAMILIES", "METHODS", "PRECISIONS", "QUICK", "REFERENCES", "Config", "Family", "Method",
           "families", "sample", "short_label"]


@dataclass(frozen=True)
class Family:
    """A spectrum family: ``key`` (JSON), ``label`` (tables), the ``kind`` and options of ``spd_matrix``, and the
    swept parameter (gap or condition number) for the plots."""

    key: str
    label: str
    kind: str
    options: dict = field(default_factory=dict)
    sweep: tuple[str, float] | None = None


def families(gaps: tuple[float, ...], conditions: tuple[float, ...], d: int) -> list[Family]:
    """Distinct, clustered at each gap, exactly repeated, singular covariance, and ill-conditioned at each condition."""
    out = [Family("distinct", "distinct", "distinct")]
    out += [Family(f"clustered_{g:.0e}", f"clustered, gap {g:.0e}", "clustered", {"gap": g}, ("gap", g))
            for g in gaps]
    out.append(Family("repeated", "exactly repeated (x2)", "repeated"))
    n = max(2, d // 4)
    out.append(Family("singular", f"singular covariance (N={n}, rank {n - 1})", "singular", {"samples": n}))
    out += [Family(f"ill_conditioned_{c:.0e}", f"condition {c:.0e}", "ill_conditioned", {"condition": c},
                   ("condition", c)) for c in conditions]
    return out


def short_label(f: Family) -> str:
    """The column heading of a family in the method tables."""
    if f.sweep is None:
        return {"distinct": "distinct", "repeated": "repeated", "singular": "singular"}[f.kind]
    return f"gap {f.sweep[1]:.0e}" if f.sweep[0] == "gap" else f"cond {f.sweep[1]:.0e}"


#: The families of the finite-difference checks (section 5).
FD_FAMILIES = [Family("distinct", "distinct", "distinct"),
               Family("clustered_1e-08", "clustered, gap 1e-08", "clustered", {"gap": 1e-8}),
               Family("repeated", "exactly repeated", "repeated"),
               Family("ill_conditioned_1e+04", "condition 1e+04", "ill_conditioned", {"condition": 1e4})]


@dataclass(frozen=True)
class Config:
    """Sizes of a run: matrix size d and samples per family; the mpmath cross-check's samples, size and digits; the
    size of the finite-difference checks; the gap and condition sweeps."""

    d: int = 32
    samples: int = 10
    mp_samples: int = 3
    mp_d: int = 12
    mp_dps: int = 40
    fd_d: int = 8
    gaps: tuple[float, ...] = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8)
    conditions: tuple[float, ...] = (1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8)


QUICK = Config(d=6, samples=2, mp_samples=1, mp_d=6, mp_dps=30, fd_d=4, gaps=(1e-2, 1e-8), conditions=(1e2, 1e8))


@dataclass(frozen=True)
class Method:
    """A gradient method: ``fn(S, compute_dtype) -> F`` and the reference function it is compared with."""

    name: str
    fn: Callable[..., Any]
    reference: str = "sqrt"
    note: str = ""


def _sqrt(S: Any, cd: str | None, **kw: Any) -> Any:
    return eigpool.sqrtm(S, compute_dtype=cd, **kw)


def _ns(S: Any, cd: str | None, iterations: int) -> Any:
    return eigpool.ns_sqrtm(S, iterations=iterations, compute_dtype=cd)


def _seb(S: Any, cd: str | None, **kw: Any) -> Any:
    return eigpool.seb(S, compute_dtype=cd, **kw)


METHODS = [
    Method("exact", _sqrt, note="Loewner (Daleckii-Krein) backward"),
    Method("taylor K=10", partial(_sqrt, grad="taylor", degree=10)),
    Method("taylor K=100", partial(_sqrt, grad="taylor", degree=100), note="SVD-Taylor of ICCV 2021"),
    Method("pade", partial(_sqrt, grad="pade"), note="eigpool's rational kernel, order 2, delta 1e-3"),
    Method("clip", partial(_sqrt, grad="clip"), note="SVD-Trunc, |K| <= 1e10"),
    Method("power_iteration", partial(_sqrt, grad="power_iteration"), note="SVD-PI, 19 iterations"),
    Method("Newton-Schulz T=3", partial(_ns, iterations=3)),
    Method("Newton-Schulz T=5", partial(_ns, iterations=5), note="iSQRT-COV training setting"),
    Method("Newton-Schulz T=10", partial(_ns, iterations=10)),
    Method("SEB", _seb, reference="seb", note="(1 + ||R||_F) S^(1/2), exact kernel"),
    Method("SEB pade", partial(_seb, grad="pade"), reference="seb"),
]

#: Precision variants: (input dtype, compute_dtype). "float32" computes in float32 throughout; "float32 in, f64"
#: is eigpool's default for float32 input (computed in float64, rounded on the way in and out).
PRECISIONS = {"float64": (np.float64, "float64"), "float32": (np.float32, None)}
DEFAULT_F32 = ("float32 in, float64 compute", (np.float32, "float64"))

#: The variants that are the references of the others (0 by definition; measured against mpmath in section 1).
REFERENCES = ("exact (float64)", "SEB (float64)")


def sample(family: Family, seed: int, index: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    """Matrix and symmetric cotangent of sample ``index`` of ``family`` (deterministic)."""
    s = spd_matrix(seed * 100_003 + index * 101 + _family_hash(family.key), d, family.kind, **family.options)
    g = np.random.default_rng([seed, index, _family_hash(family.key)]).standard_normal((d, d))
    return s, (g + g.T) / 2


def _family_hash(text: str) -> int:
    """A stable small hash of a family key (Python's hash() is salted per process)."""
    return zlib.crc32(text.encode()) % 1_000_003
