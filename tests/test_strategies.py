"""The designed spectra of eigpool.validation.strategies: each kind has the property its name promises."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eigpool.validation.strategies import KINDS, orthogonal, spd_matrices, spd_matrix, spectra, spectrum

try:
    import array_api_strict as strict
except ImportError:
    strict = None

EPS = np.finfo(np.float64).eps
SEEDS = st.integers(0, 2**32 - 1)
FEW = settings(max_examples=15, deadline=None)


def _designed(seed: int, d: int, kind: str, **options) -> np.ndarray:
    """The spectrum ``spd_matrix(seed, d, kind)`` is built from (it draws Q first, then the eigenvalues)."""
    rng = np.random.default_rng(seed)
    orthogonal(rng, d)
    return spectrum(rng, d, kind, **options)


@FEW
@given(SEEDS, st.integers(1, 12), st.sampled_from(KINDS))
def test_matrices_are_symmetric_psd_with_the_designed_spectrum(seed, d, kind):
    S = spd_matrix(seed, d, kind)
    assert S.shape == (d, d) and S.dtype == np.float64
    assert np.array_equal(S, S.T)
    l = np.linalg.eigvalsh(S)
    assert l[0] >= -10 * d * EPS * np.abs(l).max()
    if kind != "singular":
        # The matrix's eigenvalues are the designed spectrum's, up to round-off of Q diag(l) Q^T.
        designed = _designed(seed, d, kind)
        np.testing.assert_allclose(l, designed, rtol=0, atol=10 * d * EPS * designed.max())


@FEW
@given(SEEDS, st.integers(2, 40))
def test_distinct_gaps_are_between_5_and_10_percent(seed, d):
    ratios = np.diff(np.log(spectrum(np.random.default_rng(seed), d, "distinct")))
    assert np.all(ratios >= np.log(1.05) - 1e-12) and np.all(ratios <= np.log(1.10) + 1e-12)


@FEW
@given(SEEDS, st.integers(3, 24), st.sampled_from([1e-2, 1e-5, 1e-8]))
def test_clustered_with_a_fixed_gap(seed, d, gap):
    l = spectrum(np.random.default_rng(seed), d, "clustered", gap=gap)
    rel = (l[1:] - l[:-1]) / l[:-1]
    inside = np.arange(1, d) % 3 != 0
    np.testing.assert_allclose(rel[inside], gap, rtol=1e-6)
    assert np.all(rel[~inside] >= 0.4)  # centres at ratios of at least 1.5, far from the clusters' own gaps


@FEW
@given(SEEDS)
def test_clustered_default_gaps_reach_down_to_min_gap(seed):
    l = spectrum(np.random.default_rng(seed), 30, "clustered", min_gap=1e-8)
    rel = ((l[1:] - l[:-1]) / l[:-1])[np.arange(1, 30) % 3 != 0]
    assert rel.min() >= 1e-8 * (1 - 1e-6) and rel.max() <= 1e-2 * (1 + 1e-6)


def test_clustered_matrix_resolves_a_gap_of_1e_8():
    S = spd_matrix(3, 9, "clustered", gap=1e-8)
    l = np.linalg.eigvalsh(S)
    rel = ((l[1:] - l[:-1]) / l[:-1])[np.arange(1, 9) % 3 != 0]
    np.testing.assert_allclose(rel, 1e-8, rtol=1e-4)


@FEW
@given(SEEDS, st.integers(2, 16), st.integers(2, 4))
def test_repeated_eigenvalues_are_exactly_repeated(seed, d, multiplicity):
    l = _designed(seed, d, "repeated", multiplicity=multiplicity)
    groups = [l[i : i + multiplicity] for i in range(0, d, multiplicity)]
    assert all(np.all(g == g[0]) for g in groups)
    values = np.array([g[0] for g in groups])
    assert np.all(np.diff(values) >= 0.049 * values[:-1])
    S = spd_matrix(seed, d, "repeated", multiplicity=multiplicity)
    computed = np.linalg.eigvalsh(S)
    # Only symmetrisation round-off separates the repeated eigenvalues of the matrix.
    np.testing.assert_allclose(computed, l, rtol=0, atol=10 * d * EPS * l.max())


@FEW
@given(SEEDS, st.integers(4, 16), st.integers(2, 4))
def test_singular_covariance_has_rank_at_most_samples_minus_one(seed, d, samples):
    S = spd_matrix(seed, d, "singular", samples=samples)
    l = np.linalg.eigvalsh(S)
    assert np.sum(l > 1e-10 * l.max()) == samples - 1


@pytest.mark.parametrize("rank", [0, 1, 3, 6])
def test_singular_spectrum_has_exact_zeros(rank):
    l = spectrum(np.random.default_rng(0), 6, "singular", rank=rank)
    assert np.sum(l == 0) == 6 - rank and np.all(l[6 - rank :] > 0)


@FEW
@given(SEEDS, st.integers(2, 20), st.sampled_from([1e2, 1e5, 1e8]))
def test_ill_conditioned_has_the_requested_condition_number(seed, d, condition):
    l = _designed(seed, d, "ill_conditioned", condition=condition)
    np.testing.assert_allclose(l.max() / l.min(), condition, rtol=1e-12)
    S = spd_matrix(seed, d, "ill_conditioned", condition=condition)
    computed = np.linalg.eigvalsh(S)
    # The smallest eigenvalue of the matrix is accurate to about d eps max|l| (absolute).
    assert abs(computed[0] - l[0]) <= 10 * d * EPS * l.max()


@FEW
@given(SEEDS)
def test_ill_conditioned_default_condition_lies_in_1e2_to_max(seed):
    l = spectrum(np.random.default_rng(seed), 8, "ill_conditioned", max_condition=1e8)
    assert 1e2 * (1 - 1e-9) <= l.max() / l.min() <= 1e8 * (1 + 1e-9)


def test_spd_matrix_is_deterministic_in_its_seed():
    np.testing.assert_array_equal(spd_matrix(7, 5, "clustered"), spd_matrix(7, 5, "clustered"))
    assert not np.array_equal(spd_matrix(7, 5, "clustered"), spd_matrix(8, 5, "clustered"))


def test_orthogonal_is_orthogonal():
    q = orthogonal(np.random.default_rng(0), 7)
    np.testing.assert_allclose(q @ q.T, np.eye(7), atol=1e-14)


def test_unknown_kind_is_refused_by_name():
    with pytest.raises(ValueError, match="kind must be one of .*got 'spiky'"):
        spectrum(np.random.default_rng(0), 3, "spiky")
    with pytest.raises(ValueError, match="rank must be in"):
        spectrum(np.random.default_rng(0), 3, "singular", rank=5)


@FEW
@given(spd_matrices(st.integers(2, 5), st.sampled_from(KINDS), batch=(2, 3)))
def test_batched_strategy_draws_independent_matrices(S):
    assert S.shape[:2] == (2, 3) and S.shape[-1] == S.shape[-2]
    assert np.array_equal(S, np.swapaxes(S, -1, -2))
    assert not np.array_equal(S[0, 0], S[0, 1])


@pytest.mark.skipif(strict is None, reason="array_api_strict is not installed")
def test_strategy_converts_to_another_namespace():
    @settings(max_examples=5, deadline=None)
    @given(spd_matrices(3, "distinct", xp=strict, dtype="float32"))
    def check(S):
        assert S.dtype == strict.float32 and S.shape == (3, 3)

    check()


@settings(max_examples=5, deadline=None)
@given(spectra(4, "repeated"))
def test_spectra_strategy(l):
    assert l.shape == (4,) and l[0] == l[1] and l[2] == l[3]


# The README's gradient-check example, run after the main-job install (pip install -e ".[all]", no hypothesis).
README = Path(__file__).resolve().parent.parent / "README.md"
WITHOUT_HYPOTHESIS = """
import sys
sys.modules["hypothesis"] = sys.modules["hypothesis.strategies"] = None  # every import of hypothesis now fails
exec(compile(sys.argv[1], "README gradient-check example", "exec"), {})
from eigpool.validation.strategies import spd_matrices
try:
    spd_matrices(4)
except ImportError as exc:
    print("refused:", exc)
"""


def test_spd_matrix_and_the_readme_example_work_without_hypothesis():
    (example,) = [b for b in re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
                  if "eigpool.validation.strategies import spd_matrix" in b]
    done = subprocess.run([sys.executable, "-c", WITHOUT_HYPOTHESIS, example], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert "refused: eigpool.validation.strategies.spd_matrices needs hypothesis" in done.stdout
    assert "pip install 'eigpool[test]'" in done.stdout
