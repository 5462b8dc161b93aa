"""Bad options raise the documented exception, naming the function, the option and the allowed values (bad *inputs*
are in the table of operations, ops.py, and run on every array namespace: test_ops.py)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import spd

import eigpool

S = spd(0, [1.0, 2.0, 3.0])

BAD_OPTIONS = [
    ("powm(p='a')", lambda: eigpool.powm(S, "a"), TypeError, "powm: argument 'p' must be a finite real number"),
    ("powm(p=nan)", lambda: eigpool.powm(S, float("nan")), TypeError, "finite real number"),
    ("sqrtm(grad='svd')", lambda: eigpool.sqrtm(S, grad="svd"), ValueError, "sqrtm: grad must be one of"),
    ("sqrtm(grad='taylor', delta=1)", lambda: eigpool.sqrtm(S, grad="taylor", delta=1.0), TypeError,
     "unexpected option"),
    ("sqrtm(grad='taylor', degree=0)", lambda: eigpool.sqrtm(S, grad="taylor", degree=0), ValueError,
     "degree must be an integer >= 1"),
    ("sqrtm(grad='pade', delta=-1)", lambda: eigpool.sqrtm(S, grad="pade", delta=-1.0), ValueError,
     "delta must be a positive"),
    ("sqrtm(floor=-1)", lambda: eigpool.sqrtm(S, floor=-1.0), ValueError, "sqrtm: floor must be"),
    # floor=inf used to give NaN, compute_dtype='int32' a square root of S truncated to integers.
    ("sqrtm(floor=inf)", lambda: eigpool.sqrtm(S, floor=float("inf")), ValueError, "finite non-negative"),
    ("sqrtm(floor='big')", lambda: eigpool.sqrtm(S, floor="big"), ValueError, "floor must be None, 'auto'"),
    ("sqrtm(compute_dtype='int32')", lambda: eigpool.sqrtm(S, compute_dtype="int32"), ValueError,
     "sqrtm: compute_dtype must be 'float32', 'float64' or None"),
    ("sqrtm(compute_dtype='float16')", lambda: eigpool.sqrtm(S, compute_dtype="float16"), ValueError,
     "at least 32 bits"),
    ("covariance(compute_dtype='complex128')", lambda: eigpool.covariance(S, compute_dtype="complex128"), ValueError,
     "covariance: compute_dtype"),
    ("sqrtm(truncate=3)", lambda: eigpool.sqrtm(S, truncate=3), ValueError, "truncate must be an integer in"),
    ("sqrtm(truncate=-1)", lambda: eigpool.sqrtm(S, truncate=-1), ValueError, "truncate must be an integer >= 0"),
    ("sqrtm(truncate=1.5)", lambda: eigpool.sqrtm(S, truncate=1.5), ValueError, "truncate must be an integer"),
    ("eigh(grad='nope')", lambda: eigpool.eigh(S, grad="nope"), ValueError, "eigh: grad must be one of"),
    ("ns_sqrtm(iterations=0)", lambda: eigpool.ns_sqrtm(S, iterations=0), ValueError,
     "ns_sqrtm: iterations must be an integer >= 1"),
    ("ns_sqrtm(zero trace)", lambda: eigpool.ns_sqrtm(np.zeros((3, 3))), ValueError, "positive trace"),
    ("seb(seb=1) via spectral_spec", lambda: eigpool.spectral_spec("sqrt", seb=1), ValueError, "seb must be"),
    ("spectral_spec(fn='cbrt')", lambda: eigpool.spectral_spec("cbrt"), ValueError, "fn must be one of"),
    ("spectral_spec('power')", lambda: eigpool.spectral_spec("power"), ValueError, "p is the exponent"),
    ("spectral_spec('log', seb=True)", lambda: eigpool.spectral_spec("log", seb=True), ValueError, "needs fn='sqrt'"),
    ("spectral(f=1)", lambda: eigpool.spectral(S, 1, np.sqrt), TypeError, "f and df must be callables"),
    ("sqrtm(triangle='both')", lambda: eigpool.sqrtm(S, triangle="both"), ValueError,
     "sqrtm: triangle must be None or one of ('lower', 'upper')"),
    ("frechet(fn='cbrt')", lambda: eigpool.frechet("cbrt", S, S), ValueError, "frechet: fn must be one of"),
    ("frechet(E of another size)", lambda: eigpool.frechet("log", S, np.eye(2)), ValueError,
     "frechet: S and E must be matrices of one size"),
]


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize(("call", "error", "message"), [c[1:] for c in BAD_OPTIONS], ids=[c[0] for c in BAD_OPTIONS])
def test_bad_option_raises(call, error, message):
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")):
        call()


def test_float32_round_off_is_not_mistaken_for_asymmetry_or_indefiniteness():
    X = np.random.default_rng(1).standard_normal((64, 16)).astype(np.float32)
    S = X @ X.T / 16  # rank 16: round-off eigenvalues of both signs, BLAS round-off asymmetry
    assert np.all(np.isfinite(eigpool.sqrtm(S)))


def test_specifications_are_frozen_hashable_and_equal_by_value():
    a = eigpool.spectral_spec("power", p=0.5, grad="taylor", degree=50)
    b = eigpool.spectral_spec("power", p=0.5, grad="taylor", degree=50)
    assert a == b and hash(a) == hash(b) and a.kernel.options == (("degree", 50),)
    assert a != eigpool.spectral_spec("power", p=0.5, grad="taylor", degree=51)
    with pytest.raises(AttributeError):
        a.truncate = 3
    np.testing.assert_array_equal(eigpool.matrix_function(S, a), eigpool.powm(S, 0.5, grad="taylor", degree=50))


def test_value_checks_can_be_switched_off_and_are_on_by_default():
    bad = S + np.triu(np.ones((3, 3)), 1)
    with eigpool.value_checks(False):
        eigpool.sqrtm(bad)  # computes (reads the lower triangle), no check
    with pytest.raises(ValueError, match="must be symmetric"):
        eigpool.sqrtm(bad)
