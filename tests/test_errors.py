"""Every kind of bad input raises the documented exception, naming the operation, the argument and the problem."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import spd

import eigpool

S = spd(0, [1.0, 2.0, 3.0])
NONSYM = S + np.triu(np.ones((3, 3)), 1)
NAN = S.copy()
NAN[0, 1] = NAN[1, 0] = np.nan
INF = S.copy()
INF[2, 2] = np.inf
NEG = spd(0, [-1.0, 2.0, 3.0])

BAD_CALLS = [
    ("sqrtm(vector)", lambda: eigpool.sqrtm(np.ones(3)), ValueError, "sqrtm: argument 'S' must have rank at least 2"),
    ("sqrtm(non-square)", lambda: eigpool.sqrtm(np.ones((3, 4))), ValueError, "must be square"),
    ("sqrtm(non-symmetric)", lambda: eigpool.sqrtm(NONSYM), ValueError, "must be symmetric"),
    ("sqrtm(NaN)", lambda: eigpool.sqrtm(NAN), ValueError, "contains NaN or inf"),
    ("sqrtm(inf)", lambda: eigpool.sqrtm(INF), ValueError, "contains NaN or inf"),
    ("sqrtm(int)", lambda: eigpool.sqrtm(np.eye(3, dtype=np.int64)), TypeError, "real floating dtype"),
    ("sqrtm(complex)", lambda: eigpool.sqrtm(np.eye(3, dtype=np.complex128)), TypeError, "real floating dtype"),
    ("sqrtm(list)", lambda: eigpool.sqrtm([[1.0, 0.0], [0.0, 1.0]]), TypeError, "must be an array"),
    ("sqrtm(negative definite)", lambda: eigpool.sqrtm(NEG), ValueError, "must be positive semi-definite"),
    ("logm(negative definite)", lambda: eigpool.logm(NEG), ValueError, "logm: argument 'S' must be positive"),
    ("invsqrtm(negative definite)", lambda: eigpool.invsqrtm(NEG), ValueError, "positive semi-definite"),
    ("powm(p='a')", lambda: eigpool.powm(S, "a"), TypeError, "argument 'p' must be a finite real number"),
    ("powm(p=nan)", lambda: eigpool.powm(S, float("nan")), TypeError, "finite real number"),
    ("sqrtm(grad='svd')", lambda: eigpool.sqrtm(S, grad="svd"), ValueError, "grad must be one of"),
    ("sqrtm(grad='taylor', delta=1)", lambda: eigpool.sqrtm(S, grad="taylor", delta=1.0), TypeError,
     "unexpected option"),
    ("sqrtm(grad='taylor', degree=0)", lambda: eigpool.sqrtm(S, grad="taylor", degree=0), ValueError,
     "degree must be an integer >= 1"),
    ("sqrtm(grad='pade', delta=-1)", lambda: eigpool.sqrtm(S, grad="pade", delta=-1.0), ValueError,
     "delta must be a positive"),
    ("sqrtm(floor=-1)", lambda: eigpool.sqrtm(S, floor=-1.0), ValueError, "floor must be"),
    ("sqrtm(truncate=3)", lambda: eigpool.sqrtm(S, truncate=3), ValueError, "truncate must be an integer in"),
    ("eigh(grad='nope')", lambda: eigpool.eigh(S, grad="nope"), ValueError, "eigh: grad must be one of"),
    ("eigh(NaN)", lambda: eigpool.eigh(NAN), ValueError, "eigh: argument 'S' contains NaN"),
    ("covariance(vector)", lambda: eigpool.covariance(np.ones(4)), ValueError, "covariance: argument 'X'"),
    ("covariance(int)", lambda: eigpool.covariance(np.ones((2, 4), dtype=np.int32)), TypeError, "real floating"),
    ("ns_sqrtm(iterations=0)", lambda: eigpool.ns_sqrtm(S, iterations=0), ValueError, "iterations must be"),
    ("ns_sqrtm(zero trace)", lambda: eigpool.ns_sqrtm(np.zeros((3, 3))), ValueError, "positive trace"),
    ("triu_vec(non-square)", lambda: eigpool.triu_vec(np.ones((2, 3))), ValueError, "must be square"),
    ("triu_unvec(length 5)", lambda: eigpool.triu_unvec(np.ones(5)), ValueError, "d(d+1)/2"),
    ("seb(negative definite)", lambda: eigpool.seb(NEG), ValueError, "seb: argument 'S' must be positive"),
]


@pytest.mark.filterwarnings("error")  # the error alone: no warning (e.g. NumPy's on inf - inf) before it
@pytest.mark.parametrize(("call", "error", "message"), [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS])
def test_bad_input_raises(call, error, message):
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")):
        call()


def test_float32_round_off_is_not_mistaken_for_asymmetry_or_indefiniteness():
    X = np.random.default_rng(1).standard_normal((64, 16)).astype(np.float32)
    S = X @ X.T / 16  # rank 16: round-off eigenvalues of both signs, BLAS round-off asymmetry
    assert np.all(np.isfinite(eigpool.sqrtm(S)))
